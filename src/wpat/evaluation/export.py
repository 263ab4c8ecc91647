"""Exporting a trained model for others: the RobustBench model-zoo convention.

RobustBench (https://github.com/RobustBench/robustbench) loads a model zoo entry by building its
architecture, then ``torch.load`` of ``<name>.pt``, taking ``ckpt["state_dict"]`` if present
(else the file itself), removing ``module.`` and ``model.`` from the keys, and
``load_state_dict(strict=True)``; the model is used in eval mode on inputs in [0, 1], so any
normalization is inside the model. Its leaderboard entry is ``model_info/<dataset>/<threat
model>/<name>.json``. :func:`export_robustbench` writes both for a wpat run:

- ``OUT/<name>.pt``: the plain ``state_dict`` (tensors only, on the CPU) of the run's best (or
  last) checkpoint, as ``torch.save`` writes it. A wpat model normalizes inside
  (``normalize.mean``/``normalize.std`` are part of the state_dict), so the file fits
  :func:`wpat.training.experiment.model_from_config` of the run's config as is;
- ``OUT/<name>.json``: a ``model_info``-style record filled from the run's config and its
  ``eval.json`` (clean and AutoAttack accuracy in %, as RobustBench writes them, strings with two
  decimals); the fields only a person can fill (paper link, title, authors, venue, the reported
  number, the leaderboard key) say ``"TO FILL: ..."``, and a number that is unknown (no
  ``eval.json``, no AA column, another checkpoint evaluated) is null with a note in ``notes``;
  ``wpat.measurements`` says how each number was measured (its settings in ``eval.json``).

OUT is by default ``robustbench/`` inside the run directory (:func:`default_export_dir`).
"""

from __future__ import annotations

import json
import math
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wpat import __version__
from wpat.checkpoints.files import save_atomic, weights_digest
from wpat.configuration.config import Config, component_options
from wpat.helpers.errors import WpatError
from wpat.evaluation.report import describe_settings
from wpat.evaluation.results import read_report
from wpat.training.experiment import model_from_config
from wpat.helpers.fs import writable_dir, write_text_atomic
from wpat.training.loading import model_from_checkpoint
from wpat.models import MODELS
from wpat.checkpoints.run_dir import find_checkpoint

THREAT_MODELS = {"linf": "Linf", "l2": "L2"}  # as RobustBench spells them (ThreatModel enum)
TO_FILL = "TO FILL: "
# Substrings RobustBench's loader cuts out of a key (it drops the first len(s) characters of any
# key that contains one), so an exported key must contain neither.
_RB_STRIPPED = ("module.", "model.")
# Names of data options that would say the run used data beyond the dataset's training set.
_EXTRA_DATA = re.compile(r"^(extra|additional|aux)|unlabel|pseudo", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def robustbench_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """``model``'s state_dict as RobustBench loads it: CPU, contiguous tensors, no key that its
    loader would rewrite."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k in state if any(s in k for s in _RB_STRIPPED)]
    if bad:
        raise WpatError(f"cannot export for RobustBench: key {bad[0]!r} contains 'module.' or 'model.', "
                        f"which RobustBench's loader would cut out")
    return state


def architecture_name(cfg: Config) -> str:
    """A human name of the config's network, as RobustBench's ``architecture`` field writes
    it (``WideResNet-34-10``, ``PreActResNet-18``)."""
    name = cfg.model.name
    defaults = MODELS.defaults(name) if name in MODELS else {}
    options = {**defaults, **component_options(cfg.model)}
    fixed = {"wrn34_10": "WideResNet-34-10", "wrn28_10": "WideResNet-28-10",
             "preact_resnet18": "PreActResNet-18", "vgg19": "VGG-19"}
    if name in fixed:
        return fixed[name]
    if name == "wide_resnet":
        return f"WideResNet-{options.get('depth')}-{options.get('widen')}"
    if name == "small_cnn":
        return f"SmallCNN (width {options.get('width')})"
    return name


def eps_text(eps: float) -> str:
    """ε as RobustBench writes it: ``"8/255"`` when it is a multiple of 1/255, else the number."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        fraction = Fraction(int(round(k)), 255)
        return f"{fraction.numerator}/{fraction.denominator}" if fraction.denominator != 1 else str(fraction.numerator)
    return f"{eps:g}"


def additional_data(cfg: Config) -> tuple[bool, str | None]:
    """Whether the config says the run used data beyond the dataset's training set, and the key
    that says so: a ``data`` option named like extra/additional/unlabeled/pseudo data whose value
    names files (a non-empty string or list) or is ``true``. Numbers (a mixing fraction, a
    count) alone do not count: they mean nothing without files. wpat otherwise trains on the
    dataset's training split only."""
    data = cfg.to_dict().get("data", {})
    for key, value in data.items():
        if not _EXTRA_DATA.search(str(key)):
            continue
        if value is True or (isinstance(value, str) and value.strip().lower() not in ("", "none", "null", "false")) \
                or (isinstance(value, (list, tuple)) and len(value) > 0):
            return True, f"data.{key}"
    return False, None


def _percent(x: Any) -> str | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return f"{100 * x:.2f}"


def find_evaluation(ckpt_path: Path, kind: str, epoch: Any,
                    weights: str | None = None) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
    """The ``eval.json`` entry of this checkpoint: the run directory's ``eval.json`` (``wpat eval
    RUN_DIR``) or ``eval-<kind>/eval.json`` (``wpat eval RUN_DIR/<kind>.pt``), either layout
    (:func:`wpat.evaluation.read_report`). An entry of other weights (``weights``, the
    checkpoint's :func:`wpat.checkpoints.files.weights_digest`; a file of the first layout: another
    epoch) is not used. Returns (entry, its file, notes about what was found and not used)."""
    notes: list[str] = []
    for candidate in (ckpt_path.parent / "eval.json", ckpt_path.parent / f"eval-{ckpt_path.stem}" / "eval.json"):
        if not candidate.is_file():
            continue
        try:
            report = read_report(candidate)
        except WpatError:
            notes.append(f"{candidate} is not a readable wpat eval.json; ignored")
            continue
        entries = {k: e for k, e in report["checkpoints"].items() if not e.get("superseded")}
        entry = entries.get(kind)
        if entry is None:
            entry = next((e for e in entries.values() if e.get("path")
                          and Path(e["path"]).resolve() == ckpt_path.resolve()), None)
        if entry is None:
            notes.append(f"{candidate} has no entry for {ckpt_path.name}")
            continue
        if weights is not None and entry.get("weights") not in (None, weights):
            notes.append(f"{candidate} evaluated other weights than {ckpt_path.name} holds now "
                         f"(re-run `wpat eval`); ignored")
            continue
        if epoch is not None and entry.get("epoch") not in (None, epoch):
            notes.append(f"{candidate} evaluated epoch {entry.get('epoch')} but {ckpt_path.name} is "
                         f"epoch {epoch} (re-run `wpat eval`); ignored")
            continue
        return entry, candidate, notes
    return None, None, notes


def measurement(entry: dict[str, Any], attack: str) -> dict[str, Any] | None:
    """How ``entry``'s ``attack`` accuracy was measured: its settings, where and when, in words
    too (None when the entry holds no such accuracy)."""
    if _percent((entry.get("accuracy") or {}).get(attack)) is None:
        return None
    settings = (entry.get("settings") or {}).get(attack)
    measured = (entry.get("measured") or {}).get(attack) or {}
    where = " ".join(text for key, text in (("date", f"on {str(measured.get('date'))[:10]}"),
                                            ("device", f"on {measured.get('device')}"),
                                            ("wpat_version", f"with wpat {measured.get('wpat_version')}"))
                     if measured.get(key))
    words = describe_settings(settings) if settings else "settings not recorded"
    return {"column": attack, "settings": settings, "measured": measured or None,
            "in_words": words + (f" (measured {where})" if where else "")}


def _n_test_examples(entry: dict[str, Any] | None) -> tuple[int | None, str | None]:
    """The number of test examples the AutoAttack (else the clean) accuracy was measured on,
    and the note that says so: a subset is not RobustBench's full test set."""
    if entry is None:
        return None, "unknown: no eval.json of this checkpoint"
    settings = entry.get("settings") or {}
    counts = {k: (settings.get(a) or {}).get("n_examples") for k, a in (("AutoAttack", "aa"), ("clean", "natural"))
              if isinstance((settings.get(a) or {}).get("n_examples"), int)}
    n_examples = next(iter(counts.values()), None)
    if not counts:
        return None, None
    measured = (f"accuracies measured on the first {n_examples}" if len(set(counts.values())) == 1 else
                " and ".join(f"{k} accuracy measured on the first {n}" for k, n in counts.items()))
    return n_examples, (f"{measured} test examples; RobustBench reports the full "
                        f"test set (10,000 images for CIFAR-10/100)")


def model_info(cfg: Config, entry: dict[str, Any] | None, eval_path: Path | None,
               notes: list[str], source: dict[str, Any], eval_command: str | None = None) -> dict[str, Any]:
    """The ``model_info`` JSON record (RobustBench's fields first, then wpat's). The threat model
    and the number of test examples are those of the AutoAttack result (else of the other
    results); ``wpat.measurements`` says how each accuracy was measured."""
    accuracy = (entry or {}).get("accuracy") or {}
    settings = (entry or {}).get("settings") or {}
    clean, aa = _percent(accuracy.get("natural")), _percent(accuracy.get("aa"))
    measurements = {key: m for key, m in (("clean_acc", measurement(entry or {}, "natural")),
                                          ("autoattack_acc", measurement(entry or {}, "aa"))) if m}
    threat = next((s for s in (settings.get("aa"), *settings.values()) if s and "eps" in s), {})
    norm = str(threat.get("norm") or cfg.attack.norm)
    eps = threat.get("eps") if isinstance(threat.get("eps"), (int, float)) else cfg.attack.eps
    extra, extra_key = additional_data(cfg)
    field_notes: dict[str, str] = {}
    how = f"run `{eval_command or 'wpat eval ' + str(source['checkpoint'])} --attacks natural,aa` on the full test set"
    if entry is None:
        reason = "no eval.json of this checkpoint" + (f" ({'; '.join(notes)})" if notes else "")
        field_notes["clean_acc"] = field_notes["autoattack_acc"] = f"unknown: {reason}; {how}"
    else:
        if clean is None:
            field_notes["clean_acc"] = f"unknown: {eval_path} has no natural column; {how}"
        if aa is None:
            field_notes["autoattack_acc"] = f"unknown: {eval_path} has no AA (AutoAttack) column; {how}"
    n_examples, count_note = _n_test_examples(entry)
    if count_note:
        field_notes["n_test_examples"] = count_note
    if abs(eps - cfg.attack.eps) > 1e-12:
        field_notes["eps"] = (f"eval.json's threat model has eps {eps:g}, the run trained with "
                              f"{cfg.attack.eps:g}; eps is the evaluated one")
    field_notes["additional_data"] = (f"true because of {extra_key}" if extra else
                                      "false: the config uses only the dataset's training set")
    return {
        "link": TO_FILL + "URL of the paper (e.g. https://arxiv.org/abs/...)",
        "name": TO_FILL + "title of the paper",
        "authors": TO_FILL + "authors, comma-separated",
        "additional_data": extra,
        "number_forward_passes": 1,
        "dataset": cfg.data.name,
        "venue": TO_FILL + "venue and year, e.g. NeurIPS 2020 (empty if unpublished)",
        "architecture": architecture_name(cfg),
        "eps": eps_text(float(eps)),
        "clean_acc": clean,
        "reported": TO_FILL + "AutoAttack accuracy (%) reported in the paper",
        "autoattack_acc": aa,
        "footnote": None,
        "leaderboard_key": TO_FILL + "model id in RobustBench's model zoo, e.g. Author2024Title "
                                     "(the file names <name>.pt/.json must match it)",
        "threat_model": THREAT_MODELS.get(norm, norm),
        "n_test_examples": n_examples if isinstance(n_examples, int) else None,
        "notes": field_notes,
        "wpat": {"version": __version__, **source, "model": cfg.model.name,
                 "model_options": component_options(cfg.model),
                 "normalization": "inside the model (normalize.mean / normalize.std); inputs in [0, 1]",
                 "eval_json": str(eval_path) if eval_path is not None else None,
                 "measurements": measurements,
                 "config": cfg.to_dict()},
    }


def default_export_dir(target: str | os.PathLike) -> Path:
    """Where ``wpat export`` writes by default: ``robustbench/`` inside the run directory, or in
    the folder of a checkpoint file; inside the run, so the export sits with what it came from
    (and is ignored by git where the runs are)."""
    target = Path(target)
    return (target if target.is_dir() else target.parent) / "robustbench"


def export_robustbench(target: str | os.PathLike, out_dir: str | os.PathLike, *, checkpoint: str = "best",
                       name: str | None = None, config: str | Config | None = None,
                       force: bool = False) -> dict[str, Any]:
    """Write ``out_dir/<name>.pt`` and ``out_dir/<name>.json`` for a run directory's
    ``checkpoint`` (``best`` or ``last``) or one checkpoint file (``config`` as for
    :func:`wpat.training.loading.model_from_checkpoint`).

    ``name`` defaults to the run directory's name (the file's stem for a checkpoint file).
    Existing files are kept unless ``force``. The state_dict written is read back with
    ``torch.load(weights_only=True)`` and loaded strictly into a fresh model of the config before
    this returns. Returns ``{"pt", "json", "info", "tensors", "bytes"}``.
    """
    if checkpoint not in ("best", "last"):
        raise WpatError(f"--checkpoint: {checkpoint!r} is invalid; expected best or last")
    target = Path(target)
    path = find_checkpoint(target, checkpoint)
    name = name or (target.resolve().name if target.is_dir() else path.stem)
    if not _NAME.match(name):
        raise WpatError(f"--name: {name!r} is invalid; expected letters, digits and _ . + - "
                        f"(RobustBench's model id, e.g. Author2024Title)")
    model, cfg, info = model_from_checkpoint(path, config)
    model.eval()
    state = robustbench_state_dict(model)
    entry, eval_path, notes = find_evaluation(path, path.stem, info.get("epoch"), weights_digest(model))
    source = {"checkpoint": str(path), "kind": info.get("kind"), "epoch": info.get("epoch")}
    command = f"wpat eval {path}" + (f" --config {config}" if isinstance(config, (str, os.PathLike)) else "")
    record = model_info(cfg, entry, eval_path, notes, source, command)

    out = Path(out_dir)
    pt, js = out / f"{name}.pt", out / f"{name}.json"
    existing = [str(p) for p in (pt, js) if p.exists()]
    if existing and not force:
        raise WpatError(f"{' and '.join(existing)} already exist; choose another --name or "
                        f"--robustbench directory, or pass --force to replace them")
    writable_dir(out, "--robustbench")
    try:
        save_atomic(state, pt)
        write_text_atomic(js, json.dumps(record, indent=2) + "\n")
    except OSError as err:
        raise WpatError(f"{out}: cannot write the export there ({err.strerror or err})") from None
    check = model_from_config(cfg)
    check.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True), strict=True)
    return {"pt": pt, "json": js, "info": record, "tensors": len(state), "bytes": pt.stat().st_size}
