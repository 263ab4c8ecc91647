"""Runs read from their directories and grouped: one group per setting, its seeds averaged.

    runs = [run_result(p) for p in find_runs(["runs/gamma-sweep"])]
    groups = group_runs([r for r in runs if r.finished], run_methods(r.path for r in runs))

A run counts with its **best** checkpoint (the epoch of highest test PGD accuracy, or validation
accuracy with ``run.select=val``, as training picks ``best.pt``) and its **last** evaluated
epoch; robust accuracy is the per-epoch test PGD accuracy (``eval.steps``), natural the clean
test accuracy, both of ``metrics.jsonl``; ``best − last`` is their difference per run (robust
overfitting's cost). Runs are grouped only when their resolved configs are
equal but for the seed and the settings that do not change what a run computes
(marked in the config, ``wpat.sweep.IGNORED_KEYS``); the options of components a run does not use (``perturb.rwp.*`` of an
AWP run) are not part of its setting either, since they never reach it. Each group is labelled by
its method and the settings in which groups of that method differ: the name of the sweep's
method (``wpat sweep --methods``: ``trades-awp``) where its manifest gives one, else objective and
perturbation (``AT``, ``AT-AWP``, ``TRADES-RWP``), and placed in a column by dataset and threat
model. The tables over the groups are :mod:`wpat.analysis.report` and
:mod:`wpat.analysis.leaderboard`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from wpat.checkpoints.run_dir import RunDir
from wpat.configuration.config import run_over
from wpat.helpers.errors import WpatError
from wpat.sweep import MANIFEST, method_of, read_manifest, setting_of, short_labels

METHOD_KEYS = ("objective.name", "perturb.name")
COLUMN_KEYS = ("data.name", "attack.norm", "attack.eps")
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN",
                 "fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); NaN for a missing std or no values."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class RunResult:
    """One run's best and last test accuracies (fractions) and its setting."""

    path: Path
    seed: int
    setting: dict[str, Any]  # flattened resolved config, see setting_of()
    best_epoch: int
    last_epoch: int
    epochs: int  # schedule.epochs
    finished: bool  # at its last epoch, or stopped early (run.patience)
    best_robust: float
    last_robust: float
    best_natural: float
    last_natural: float
    # the run's weight average (run.ema, run.average=swa) measured beside it, if it has one: its
    # best epoch by the same metric, its last; model "average" (the run's own model: "raw")
    average: RunResult | None = None
    model: str = "raw"

    @property
    def robust_drop(self) -> float:
        """Best minus last robust accuracy: how much robust overfitting cost this run."""
        return self.best_robust - self.last_robust


@dataclass
class Group:
    """Runs that differ only in their seeds, and their place in the table."""

    setting: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    repeats: list[RunResult] = field(default_factory=list)  # a seed already in runs: not counted
    method: str | None = None  # the sweep's name of the method (wpat sweep --methods), if any
    label: str = ""  # the row: method and distinguishing settings
    column: str = ""  # dataset and threat model

    def stats(self, metric: str) -> tuple[float, float]:
        """Mean and sample standard deviation (n − 1; NaN for one run) of a metric."""
        return mean_std([getattr(r, metric) for r in self.runs])


# ---------------------------------------------------------------------- reading


def _runs_in(path: Path) -> list[Path]:
    """A sweep directory's runs (its manifest), a run directory itself, or neither: []."""
    if (path / MANIFEST).is_file():
        return [path / r["dir"] for r in read_manifest(path)["runs"]]
    return [path] if RunDir(path).config_path.is_file() else []


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories from run directories, sweep directories (the runs of their
    ``sweep.json``) and directories of either; runs without a finished epoch are left out."""
    found: list[Path] = []
    for path in (RunDir.at(p).path for p in paths):
        candidates = _runs_in(path) or [p for child in sorted(path.iterdir()) if child.is_dir()
                                        for p in _runs_in(child)]
        if not candidates:
            raise WpatError(f"{path}: neither a run directory, a sweep directory nor a directory of them")
        found += [p for p in candidates if RunDir(p).metrics_path.is_file() and p not in found]
    if not found:
        raise WpatError("no run with a finished epoch (metrics.jsonl) in " + ", ".join(map(str, paths)))
    return found


def run_methods(paths: Iterable[str | Path]) -> dict[Path, str]:
    """The method name (``wpat sweep --methods``) of each run that a sweep manifest beside it
    gives one, by resolved path."""
    manifests: dict[Path, dict[str, str]] = {}
    found = {}
    for path in map(Path, paths):
        sweep = path.parent
        if sweep not in manifests:
            runs = read_manifest(sweep)["runs"] if (sweep / MANIFEST).is_file() else []
            manifests[sweep] = {r["dir"]: method_of(r.get("settings", [])) for r in runs}
        method = manifests[sweep].get(path.name)
        if method is not None:
            found[path.resolve()] = method
    return found


def run_result(path: str | Path) -> RunResult:
    """Best and last accuracies of the run in ``path`` from its ``config.yaml`` and ``metrics.jsonl``."""
    run = RunDir.at(path)
    cfg = run.config()
    evaluated = [r for r in run.history() if "test_pgd_acc" in r]
    if not evaluated:
        raise WpatError(f"{path}: no evaluated epoch in metrics.jsonl")
    key = "val_pgd_acc" if cfg.run.select == "val" else "test_pgd_acc"
    setting = setting_of(cfg.to_dict())

    def result(prefix: str, records: list[dict[str, Any]], average: RunResult | None = None) -> RunResult:
        best = max((r for r in records if prefix + key in r), key=lambda r: r[prefix + key], default=records[-1])  # first max
        last = records[-1]
        return RunResult(Path(path), cfg.run.seed, setting, best["epoch"], last["epoch"], cfg.schedule.epochs,
                         run_over(cfg, evaluated[-1]["epoch"], best["epoch"]), best[prefix + "test_pgd_acc"],
                         last[prefix + "test_pgd_acc"], best[prefix + "test_nat_acc"], last[prefix + "test_nat_acc"],
                         average, "average" if prefix else "raw")

    averaged = [r for r in evaluated if "ema_test_pgd_acc" in r]
    return result("", evaluated, result("ema_", averaged) if averaged else None)


# ---------------------------------------------------------------------- grouping and labels


def _number(value: Any) -> str:
    """0.0313725... -> '8/255' (pixel units as the papers write them), 0.005 -> '0.005'."""
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    text, pixels = f"{value:g}", round(value * 255)
    return f"{pixels}/255" if len(text) > 6 and 0 < pixels and abs(pixels / 255 - value) < 1e-9 else text


def _column(setting: dict[str, Any]) -> str:
    norm = {"linf": "L∞", "l2": "L2"}.get(str(setting["attack.norm"]), str(setting["attack.norm"]))
    dataset = DATASET_NAMES.get(setting["data.name"], setting["data.name"])
    return f"{dataset} {norm} ε={_number(setting['attack.eps'])}"


def _method(setting: dict[str, Any]) -> str:
    objective, perturb = str(setting["objective.name"]).upper(), str(setting["perturb.name"]).upper()
    return objective if perturb == "NONE" else f"{objective}-{perturb}"


def varying_keys(groups: Sequence[Group], with_absent: bool = False) -> list[str]:
    """Setting keys with two or more values among the groups that have them (``with_absent``:
    or that some groups lack), in config order."""
    keys = list(dict.fromkeys(k for g in groups for k in g.setting))
    missing = object()

    def values(key: str) -> set[str]:
        return {repr(g.setting.get(key, missing)) for g in groups if with_absent or key in g.setting}

    return [k for k in keys if len(values(k)) > 1]


def group_labels(groups: Sequence[Group], keys: Sequence[str], with_absent: bool = False) -> list[str]:
    """``METHOD (key=value, ...)`` per group with the given varying keys; a key a group lacks
    is shown as ``key=-`` only if another group of the same method has it. A group of a named
    method (``wpat sweep --methods``) shows only the keys in which its method's groups differ:
    the rest is what the name stands for."""
    shown = [k for k in keys if k not in METHOD_KEYS + COLUMN_KEYS]
    names = short_labels(shown)
    labels = []
    for g in groups:
        if g.method is not None:
            peers = [o for o in groups if o.method == g.method]
            own = set(varying_keys(peers, with_absent))
            parts = [f"{names[k]}={_number(g.setting[k]) if k in g.setting else '-'}" for k in shown if k in own]
            labels.append(g.method + (f" ({', '.join(parts)})" if parts else ""))
            continue
        peers = [o for o in groups if o.method is None and _method(o.setting) == _method(g.setting)]
        parts = [f"{names[k]}={_number(g.setting[k]) if k in g.setting else '-'}" for k in shown
                 if any(k in o.setting for o in peers)]
        labels.append(_method(g.setting) + (f" ({', '.join(parts)})" if parts else ""))
    return labels


def group_runs(results: Iterable[RunResult], methods: Mapping[Path, str] | None = None) -> list[Group]:
    """Runs with equal settings in one group each, labelled and placed in a column. A run
    whose seed is already in its group computes the same thing again: it goes to ``repeats``.
    ``methods`` (:func:`run_methods`) names the method of runs of a sweep with methods."""
    methods = methods or {}
    groups: dict[str, Group] = {}
    for r in results:
        group = groups.setdefault(repr(sorted(r.setting.items())), Group(r.setting))
        (group.repeats if r.seed in {o.seed for o in group.runs} else group.runs).append(r)
        if group.method is None:
            group.method = methods.get(Path(r.path).resolve())
    ordered = list(groups.values())
    for with_absent in (False, True):  # absent options only where labels would collide otherwise
        labels = group_labels(ordered, varying_keys(ordered, with_absent), with_absent)
        if len({(lab, _column(g.setting)) for lab, g in zip(labels, ordered)}) == len(ordered):
            break
    for g, label in zip(ordered, labels):
        g.label, g.column = label, _column(g.setting)
    return ordered
