"""``eval.json``: the results of every evaluation of a target, accumulated.

``eval.json`` accumulates: each ``wpat eval`` adds its results to the file's, per checkpoint
and attack, and an attack measured again replaces only its own entry. Every result is stored
with the settings that define it (the examples, the threat model, the seed, the batch size,
AutoAttack's version; :func:`wpat.evaluation.columns.column_settings`) and where it was measured
(device, wpat version, date), and the table shows each number with its settings. A checkpoint
file that now holds other weights than the ones evaluated before keeps its earlier results
under ``<name>@<fingerprint>``, marked ``superseded``.

The layout (``"format": "wpat-eval-v2"``), per checkpoint name: ``path``, ``kind``, ``epoch``,
``model``, ``dataset``, ``weights`` (:func:`wpat.checkpoints.files.weights_digest`), and per attack
name ``accuracy``, ``seconds``, ``settings`` and ``measured``; ``checks`` (the model's masking
checks, with their own ``settings`` and ``measured``) and ``ordering_warnings`` (the ordering
check over every result measured on the same examples). A file written before this layout
(no ``format``: one seed and one set of examples for the whole file) is read and upgraded by

- :func:`merge_reports`, :func:`read_report` (with :func:`upgrade_v1`): accumulating ``eval.json``;
- :func:`with_ordering`: the ordering check over the results measured on the same examples;
- :func:`default_out_dir`, :func:`prepare_out_dir`: where it goes, checked before any attack runs.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping

from wpat.evaluation.columns import COLUMNS, TABLE_ORDER
from wpat.evaluation.masking import ordering_warnings
from wpat.helpers.errors import WpatError
from wpat.helpers.fs import writable_dir

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
