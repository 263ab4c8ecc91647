"""The evaluation report: Table 2 in markdown, the warnings, ``eval.json`` and ``eval.md``.

- :func:`results_table`: a row per checkpoint, a column per attack, accuracy in %.
- :func:`report_warnings`: the gradient-masking warnings of every checkpoint.
- :func:`markdown_report`: ``eval.md``, the table with its settings and the checks.
- :func:`write_report`: writes ``eval.json`` (everything) and ``eval.md`` atomically.
- :func:`default_out_dir`, :func:`prepare_out_dir`: where they go, checked before any attack runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from wpat.errors import WpatError
from wpat.fs import writable_dir, write_text_atomic
from wpat.tables import markdown_table, percent


def default_out_dir(path: str | os.PathLike) -> Path:
    """A run directory itself; ``eval-<name>/`` beside a single checkpoint file."""
    path = Path(path)
    return path if path.is_dir() else path.parent / f"eval-{path.stem}"


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` and check that it is writable, before hours of attacks are spent."""
    return writable_dir(out_dir, "--out")


def results_table(report: Mapping[str, Any]) -> str:
    """Table 2's layout: a row per checkpoint, a column per attack, accuracy in %."""
    names, headers = report["attacks"], report["labels"]
    rows = [[name, "-" if r.get("epoch") is None else r["epoch"],
             *(percent(r["accuracy"].get(n)) for n in names)]
            for name, r in report["checkpoints"].items()]
    return markdown_table(["Checkpoint", "Epoch", *(headers[n] for n in names)], rows)


def report_warnings(report: Mapping[str, Any]) -> list[str]:
    """Every checkpoint's gradient-masking warnings, each prefixed with the checkpoint's name."""
    return [f"{name}: {w}" for name, r in report["checkpoints"].items()
            for w in r.get("checks", {}).get("warnings", [])]


def markdown_report(report: Mapping[str, Any]) -> str:
    """``eval.md``: the table, the settings it was measured under, the masking checks."""
    first = next(iter(report["checkpoints"].values()))
    t = first["threat_model"]
    checks = [f"- {name}: PGD-20 at eps={r['checks']['large_eps']['eps']:.3g} leaves "
              f"{percent(r['checks']['large_eps']['accuracy'])}%; zero input gradients on "
              f"{percent(r['checks']['zero_gradient_fraction'])}% of the examples"
              for name, r in report["checkpoints"].items() if "checks" in r]
    warnings = [f"- warning: {w}" for w in report_warnings(report)] or ["- no warnings"]
    return "\n".join([
        f"# Robustness of {report['target']}", "",
        f"Test accuracy (%) on the first {first['n_examples']} test examples of {first['dataset']}, "
        f"{t['norm']} threat model, eps = {t['eps']:.4g}, PGD step {t['alpha']:.4g}; "
        f"seed {report['seed']}, {report['device']}, fp32, eval mode.", "",
        results_table(report), "",
        *(["## Gradient-masking checks", "", *checks, *warnings, ""] if checks else []),
    ])


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``eval.json`` (everything) and ``eval.md`` (the table, settings, warnings)."""
    out = prepare_out_dir(out_dir)
    json_path, md_path = out / "eval.json", out / "eval.md"
    try:
        write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
        write_text_atomic(md_path, markdown_report(report))
    except OSError as err:
        raise WpatError(f"{out}: cannot write the evaluation there ({err.strerror})") from None
    return json_path, md_path
