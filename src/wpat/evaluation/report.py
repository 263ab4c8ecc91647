"""The evaluation report: Table 2 in markdown, the warnings, ``eval.json`` and ``eval.md``.

``eval.json`` accumulates: each ``wpat eval`` adds its results to the file's, per checkpoint
and attack, and an attack measured again replaces only its own entry. Every result is stored
with the settings that define it (the examples, the threat model, the seed, the batch size,
AutoAttack's version; :func:`wpat.evaluation.columns.column_settings`) and where it was measured
(device, wpat version, date), and the table shows each number with its settings. A checkpoint
file that now holds other weights than the ones evaluated before keeps its earlier results
under ``<name>@<fingerprint>``, marked ``superseded``.

The layout (``"format": "wpat-eval-v2"``), per checkpoint name: ``path``, ``kind``, ``epoch``,
``model``, ``dataset``, ``weights`` (:func:`wpat.checkpoint.weights_digest`), and per attack
name ``accuracy``, ``seconds``, ``settings`` and ``measured``; ``checks`` (the model's masking
checks, with their own ``settings`` and ``measured``) and ``ordering_warnings`` (the ordering
check over every result measured on the same examples). A file written before this layout
(no ``format``: one seed and one set of examples for the whole file) is read and upgraded by
:func:`read_report`; what it did not record (the batch size, the date) reads "not recorded".

- :func:`results_table`: a row per checkpoint, a column per attack, accuracy in %, a letter on
  a number whose settings differ from the others';
- :func:`settings_lines`: the settings every number shares, and those of each letter;
- :func:`report_warnings`: the gradient-masking warnings of every checkpoint;
- :func:`markdown_report`: ``eval.md``, the table with its settings and the checks;
- :func:`merge_reports`, :func:`read_report`, :func:`write_report`: accumulating ``eval.json``;
- :func:`default_out_dir`, :func:`prepare_out_dir`: where they go, checked before any attack runs.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping

from wpat.errors import WpatError
from wpat.evaluation.columns import COLUMNS, TABLE_ORDER
from wpat.evaluation.masking import ordering_warnings
from wpat.fs import locked, writable_dir, write_text_atomic
from wpat.tables import markdown_table, percent

FORMAT = "wpat-eval-v2"
# The settings that name the examples a result was measured on; results that share them (and
# the threat model) are compared by the ordering check.
EXAMPLE_KEYS = ("dataset", "n_examples", "classes")
NOT_RECORDED = None  # a setting a file of the first layout did not record
# The column settings the first layout did not write down but had: its AA column was always
# AutoAttack's standard version; which pyautoattack ran it is not known.
V1_DEFINES = {"aa": {"autoattack": "standard", "pyautoattack": NOT_RECORDED}}


def default_out_dir(path: str | os.PathLike) -> Path:
    """A run directory itself; ``eval-<name>/`` beside a single checkpoint file."""
    path = Path(path)
    return path if path.is_dir() else path.parent / f"eval-{path.stem}"


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` and check that it is writable and that an ``eval.json`` already there
    can be added to, before hours of attacks are spent."""
    out = writable_dir(out_dir, "--out")
    read_report(out / "eval.json")
    return out


# ---------------------------------------------------------------------- reading and merging


def read_report(path: str | os.PathLike) -> dict[str, Any] | None:
    """The report in ``path`` in the current layout (a file of the first layout upgraded), None
    if there is no file; one WpatError if it is not a wpat ``eval.json``."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        if not isinstance(report, dict) or not isinstance(report.get("checkpoints"), dict) \
                or not all(isinstance(e, dict) for e in report["checkpoints"].values()):
            raise TypeError("no checkpoints")
        return report if report.get("format") == FORMAT else upgrade_v1(report)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, AttributeError) as err:
        raise WpatError(f"{path}: not a readable wpat eval.json ({err}); wpat eval adds its results "
                        f"to it, so move it away or pass --out DIR") from None


def upgrade_v1(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report of the first layout (one seed, device and set of examples for the whole file,
    ordering warnings mixed into the checks) in the current one."""
    measured = {"device": report.get("device"), "wpat_version": report.get("wpat_version"), "date": NOT_RECORDED}
    labels = report.get("labels") or {}
    checkpoints = {}
    for name, old in report["checkpoints"].items():
        accuracy = dict(old.get("accuracy") or {})
        threat = old.get("threat_model") or {}
        examples = {"dataset": old.get("dataset"), "n_examples": old.get("n_examples")}
        attacked = {"norm": threat.get("norm"), "eps": threat.get("eps"), "step": threat.get("alpha"),
                    "seed": report.get("seed"), "batch_size": NOT_RECORDED}
        entry = {k: v for k, v in old.items()
                 if k not in ("accuracy", "seconds", "checks", "n_examples", "threat_model")}
        entry["accuracy"] = accuracy
        entry["seconds"] = dict(old.get("seconds") or {})
        entry["settings"] = {a: {**examples, **(attacked if _attacked(a) else {}), **V1_DEFINES.get(a, {})}
                             for a in accuracy}
        entry["measured"] = {a: dict(measured) for a in accuracy}
        if isinstance(old.get("checks"), dict):
            # The first layout put the ordering warnings of its accuracies among the checks';
            # they are recomputed over all results now, so they are taken out here.
            ordering = set(ordering_warnings(accuracy, old.get("n_examples") or 1, labels))
            checks = dict(old["checks"])
            checks["warnings"] = [w for w in checks.get("warnings", []) if w not in ordering]
            checks["settings"] = {**examples, "norm": threat.get("norm"), "seed": report.get("seed"),
                                  "batch_size": NOT_RECORDED}
            checks["measured"] = dict(measured)
            entry["checks"] = checks
        checkpoints[name] = with_ordering(entry, labels)
    return {"format": FORMAT, "target": report.get("target"), "wpat_version": report.get("wpat_version"),
            "attacks": _column_order(a for e in checkpoints.values() for a in e["accuracy"]),
            "labels": dict(labels), "checkpoints": checkpoints, "seconds": report.get("seconds")}


def merge_reports(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """``new``'s results added to ``old``'s: per checkpoint and attack, a result of ``new``
    replaces ``old``'s of the same attack (whatever its settings) and every other result is
    kept. A checkpoint whose weights changed since ``old`` was measured keeps ``old``'s results
    under ``<name>@<fingerprint>``, marked ``superseded``."""
    if old is None:
        return copy.deepcopy(dict(new))
    labels = {**old.get("labels", {}), **new.get("labels", {})}
    current = {k: copy.deepcopy(e) for k, e in old["checkpoints"].items() if not e.get("superseded")}
    superseded = {k: copy.deepcopy(e) for k, e in old["checkpoints"].items() if e.get("superseded")}
    for name, entry in new["checkpoints"].items():
        before = current.pop(name, None)
        if before is not None and not same_checkpoint(before, entry):
            superseded[_superseded_name(name, before, superseded)] = {**before, "superseded": True}
            before = None
        current[name] = with_ordering(_merge_entry(before, entry), labels)
    checkpoints = {**current, **superseded}
    return {"format": FORMAT, "target": new.get("target"), "wpat_version": new.get("wpat_version"),
            "attacks": _column_order(a for e in checkpoints.values() for a in e["accuracy"]),
            "labels": labels, "checkpoints": checkpoints, "seconds": new.get("seconds")}


def same_checkpoint(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two entries are of the same weights: by fingerprint where both have one, else (a
    file of the first layout) by kind, epoch, model and dataset."""
    if a.get("weights") and b.get("weights"):
        return a["weights"] == b["weights"]
    return all(a.get(k) == b.get(k) for k in ("kind", "epoch", "model", "dataset"))


def _merge_entry(before: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(entry))
    if before is None:
        return merged
    for key in ("accuracy", "seconds", "settings", "measured"):
        merged[key] = {**before.get(key, {}), **entry.get(key, {})}
    if "checks" not in entry and "checks" in before:
        merged["checks"] = copy.deepcopy(before["checks"])
        if "checks" in before.get("seconds", {}):
            merged["seconds"]["checks"] = before["seconds"]["checks"]
    return merged


def _superseded_name(name: str, entry: Mapping[str, Any], taken: Mapping[str, Any]) -> str:
    weights = entry.get("weights")
    base = f"{name}@{weights.split(':')[-1][:8]}" if weights else f"{name}@epoch-{entry.get('epoch')}"
    key, i = base, 2
    while key in taken:
        key, i = f"{base}-{i}", i + 1
    return key


def with_ordering(entry: dict[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """``entry`` with its ``ordering_warnings``: the ordering check (AA ≤ PGD-100 ≤ PGD-20 ≤
    FGSM ≤ natural up to sampling noise) over each group of its results measured on the same
    examples in the same threat model; the clean accuracy joins every group on its examples."""
    settings = entry.get("settings", {})
    accuracy = entry.get("accuracy", {})
    groups: dict[tuple, dict[str, float]] = {}
    for name, acc in accuracy.items():
        s = settings.get(name, {})
        if _attacked(name):
            key = (_examples(s), s.get("norm"), s.get("eps"))
            groups.setdefault(key, {})[name] = acc
    for name, acc in accuracy.items():
        if not _attacked(name):
            for key, group in groups.items():
                if key[0] == _examples(settings.get(name, {})):
                    group[name] = acc
    found: list[str] = []
    for key, group in groups.items():
        n = json.loads(dict(key[0])["n_examples"]) or 1
        found += ordering_warnings(group, n, labels)
    return {**entry, "ordering_warnings": list(dict.fromkeys(found))}


def _examples(settings: Mapping[str, Any]) -> tuple:
    return tuple((k, json.dumps(settings.get(k))) for k in EXAMPLE_KEYS)


def _attacked(name: str) -> bool:
    try:
        return COLUMNS.info(name).get("attacked", True)
    except WpatError:  # a column of another wpat version
        return True


def _column_order(names) -> list[str]:
    present = list(dict.fromkeys(names))
    known = [n for n in TABLE_ORDER if n in present]
    return known + [n for n in present if n not in known]


# ---------------------------------------------------------------------- showing


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
    if "autoattack" in s or "pyautoattack" in s:
        version, package = s.pop("autoattack", None), s.pop("pyautoattack", None)
        parts.append(f"AutoAttack {version or 'version not recorded'} "
                     f"(pyautoattack {package or 'version not recorded'})")
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
