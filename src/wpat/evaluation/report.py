"""The evaluation report: Table 2 in markdown, the warnings, ``eval.md``, and writing both it
and ``eval.json`` (whose layout and merging are :mod:`wpat.evaluation.results`).

- :func:`results_table`: a row per checkpoint, a column per attack, accuracy in %, a letter on
  a number whose settings differ from the others';
- :func:`settings_lines`: the settings every number shares, and those of each letter;
- :func:`report_warnings`: the gradient-masking warnings of every checkpoint;
- :func:`markdown_report`: ``eval.md``, the table with its settings and the checks;
- :func:`write_report`: ``eval.json`` with this evaluation's results added, and ``eval.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from wpat.evaluation.results import merge_reports, read_report
from wpat.helpers.errors import WpatError
from wpat.helpers.fs import locked, writable_dir, write_text_atomic
from wpat.helpers.tables import markdown_table, percent


def describe_settings(settings: Mapping[str, Any]) -> str:
    """Settings in words: "first 1000 test examples of cifar10, linf eps 0.03137, PGD step
    0.007843, seed 0, batches of 500, AutoAttack standard (pyautoattack 0.2.0)"; a setting that
    was not recorded says so."""
    s = dict(settings)
    parts = []
    n, dataset, classes = s.pop("n_examples", None), s.pop("dataset", None), s.pop("classes", None)
    if n is not None or dataset is not None:
        text = f"first {n} test examples" if n is not None else "test examples"
        text += f" of {dataset}" if dataset is not None else ""
        parts.append(text + (f" (classes {', '.join(map(str, classes))})" if classes else ""))
    norm, eps, step = s.pop("norm", None), s.pop("eps", None), s.pop("step", None)
    ball = " ".join(p for p in (norm, f"eps {eps:.4g}" if eps is not None else None) if p)
    if step is not None:
        ball += (", " if ball else "") + f"PGD step {step:.4g}"
    if ball:
        parts.append(ball)
    if "seed" in s:
        seed = s.pop("seed")
        parts.append(f"seed {seed}" if seed is not None else "seed not recorded")
    if "batch_size" in s:
        batch = s.pop("batch_size")
        parts.append(f"batches of {batch}" if batch is not None else "batch size not recorded")
    # the two may be apart: the version differs between columns while the package is shared
    version = f"AutoAttack {s.pop('autoattack') or 'version not recorded'}" if "autoattack" in s else ""
    package = f"pyautoattack {s.pop('pyautoattack') or 'version not recorded'}" if "pyautoattack" in s else ""
    if version and package:
        parts.append(f"{version} ({package})")
    elif version or package:
        parts.append(version or package)
    parts += [f"{k} {v}" for k, v in s.items()]
    return ", ".join(parts)


def _cells(report: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(row, name, entry.get("settings", {}).get(name, {}))
            for row, entry in report["checkpoints"].items() for name in entry.get("accuracy", {})]


def _markers(report: Mapping[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, str], str], dict[str, dict]]:
    """The settings all numbers share; a letter per (row, attack) whose settings differ from
    other numbers'; the differing settings of each letter."""
    cells = _cells(report)
    values: dict[str, set[str]] = {}
    for _, _, s in cells:
        for key, value in s.items():
            values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    common = {k: json.loads(next(iter(v))) for k, v in values.items() if len(v) == 1}
    differing = [k for k, v in values.items() if len(v) > 1]
    letters: dict[str, str] = {}
    legend: dict[str, dict[str, Any]] = {}
    marks = {}
    for row, name, s in cells:
        own = {k: s[k] for k in differing if k in s}
        if not own:
            continue
        key = json.dumps(own, sort_keys=True)
        if key not in letters:
            letters[key] = chr(ord("a") + len(letters)) if len(letters) < 26 else str(len(letters) + 1)
            legend[letters[key]] = own
        marks[row, name] = letters[key]
    return common, marks, legend


def results_table(report: Mapping[str, Any]) -> str:
    """Table 2's layout: a row per checkpoint, a column per attack, accuracy in %; a number whose
    settings differ from the others' carries the letter :func:`settings_lines` explains."""
    names, headers = report["attacks"], report["labels"]
    _, marks, _ = _markers(report)
    rows = [[name, "-" if r.get("epoch") is None else r["epoch"],
             *(percent(r["accuracy"].get(n)) + (f" ({marks[name, n]})" if (name, n) in marks else "")
               for n in names)]
            for name, r in report["checkpoints"].items()]
    return markdown_table(["Checkpoint", "Epoch", *(headers.get(n, n) for n in names)], rows)


def settings_lines(report: Mapping[str, Any]) -> list[str]:
    """What the numbers of :func:`results_table` were measured under: the settings they share,
    then one line per letter, then superseded rows and where the numbers were measured."""
    common, _, legend = _markers(report)
    lines = [f"Settings (of every number they apply to): {describe_settings(common) or 'none recorded'}; "
             f"fp32, eval mode."]
    lines += [f"({letter}) {describe_settings(own)}" for letter, own in legend.items()]
    old = [name for name, e in report["checkpoints"].items() if e.get("superseded")]
    if old:
        lines.append(f"{', '.join(old)}: earlier results of a checkpoint file that now holds other "
                     f"weights (epoch in the row)")
    measured = [m for e in report["checkpoints"].values() for m in e.get("measured", {}).values()]
    devices = sorted({str(m.get("device")) for m in measured if m.get("device")})
    versions = sorted({str(m.get("wpat_version")) for m in measured if m.get("wpat_version")})
    dates = sorted(str(m["date"])[:10] for m in measured if m.get("date"))
    when = (f" on {dates[0]}" if dates and dates[0] == dates[-1] else
            f" between {dates[0]} and {dates[-1]}" if dates else "")
    if devices or versions or dates:
        lines.append(f"Measured with wpat {', '.join(versions) or '(version not recorded)'} on "
                     f"{', '.join(devices) or '(device not recorded)'}{when}.")
    return lines


def report_warnings(report: Mapping[str, Any]) -> list[str]:
    """Every checkpoint's gradient-masking warnings (the ordering of its accuracies, then the
    checks of the model), each prefixed with the checkpoint's name."""
    return [f"{name}: {w}" for name, r in report["checkpoints"].items() if not r.get("superseded")
            for w in [*r.get("ordering_warnings", []), *r.get("checks", {}).get("warnings", [])]]


def markdown_report(report: Mapping[str, Any]) -> str:
    """``eval.md``: the table, the settings it was measured under, the masking checks."""
    checks = [f"- {name}: PGD-20 at eps={r['checks']['large_eps']['eps']:.3g} leaves "
              f"{percent(r['checks']['large_eps']['accuracy'])}%; zero input gradients on "
              f"{percent(r['checks']['zero_gradient_fraction'])}% of the examples"
              + (f" ({describe_settings(r['checks']['settings'])})" if r["checks"].get("settings") else "")
              for name, r in report["checkpoints"].items() if "checks" in r and not r.get("superseded")]
    warnings = [f"- warning: {w}" for w in report_warnings(report)]
    masking = [*checks, *(warnings or ["- no warnings"])] if checks or warnings else []
    return "\n".join([
        f"# Robustness of {report['target']}", "",
        "Test accuracy (%).", "",
        results_table(report), "",
        *settings_lines(report), "",
        *(["## Gradient-masking checks", "", *masking, ""] if masking else []),
    ])


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[dict[str, Any], Path, Path]:
    """Add ``report``'s results to ``out_dir/eval.json`` (:func:`merge_reports`; the file is
    locked while it is read and replaced, so evaluations running side by side add up) and write
    ``eval.md`` for the whole. Returns the merged report and the two paths."""
    out = writable_dir(out_dir, "--out")
    json_path, md_path = out / "eval.json", out / "eval.md"
    try:
        with locked(out / ".eval.lock"):
            merged = merge_reports(read_report(json_path), report)
            write_text_atomic(json_path, json.dumps(merged, indent=2) + "\n")
            write_text_atomic(md_path, markdown_report(merged))
    except OSError as err:
        raise WpatError(f"{out}: cannot write the evaluation there ({err.strerror})") from None
    return merged, json_path, md_path
