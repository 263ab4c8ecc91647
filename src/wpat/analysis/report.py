"""Results of many runs as the papers tabulate them: mean ± sample std over seeds.

    runs = [run_result(p) for p in find_runs(["runs/gamma-sweep"])]
    groups = group_runs([r for r in runs if r.finished])
    print(markdown_report(groups))            # RWP Table 1 / AWP Table 4 layout
    write_csv(report_rows(groups), "report.csv")     # wpat.tables.write_csv
    plot_group_curves([row for g in groups for row in group_curves(g)], "curves.png")
    key = "perturb.awp.gamma"                 # one of ablation_keys(groups)
    plot_ablation(ablation_rows(groups, key), key, "ablation.png")   # both in plots.py, CSV beside

A run counts with its **best** checkpoint (the epoch of highest test PGD accuracy, or validation
accuracy with ``run.select=val``, as training picks ``best.pt``) and its **last** evaluated
epoch; robust accuracy is the per-epoch test PGD accuracy (``eval.steps``), natural the clean
test accuracy, both of ``metrics.jsonl``; ``best − last`` is their difference per run (robust
overfitting's cost), averaged like the others. Runs are averaged only when their resolved configs are
equal but for the seed and the settings that do not change what a run computes
(marked in the config, ``wpat.sweep.IGNORED_KEYS``); the options of components a run does not use (``perturb.rwp.*`` of an
AWP run) are not part of its setting either, since they never reach it. Each group is labelled by
its method (``AT``, ``AT-AWP``, ``TRADES-RWP``) and the settings in which groups differ; columns
are grouped by dataset and threat model. Accuracies are fractions in [0, 1] in the CSV and
percent in the tables and plots; the std of a single run is NaN (shown as no ``±``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from wpat.config import run_over
from wpat.errors import WpatError, is_number
from wpat.run_dir import RunDir
from wpat.sweep import COMPONENT_SECTIONS, MANIFEST, read_manifest, setting_of, short_labels
from wpat.tables import markdown_table

METHOD_KEYS = ("objective.name", "perturb.name")
COLUMN_KEYS = ("data.name", "attack.norm", "attack.eps")
METRICS = ("best_robust", "last_robust", "robust_drop", "best_natural", "last_natural")
METRIC_NAMES = ("robust best", "robust last", "best − last", "natural best", "natural last")
# Per-epoch series averaged over a group's seeds (fractions): the learning curves and the share
# of training adversarial examples with loss below c_min (logged every epoch, also without RWP).
CURVE_SERIES = ("test_pgd_acc", "train_pgd_acc", "test_nat_acc", "train_nat_acc", "lsc_frac_below")
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN",
                 "fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
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
    label: str = ""  # the row: method and distinguishing settings
    column: str = ""  # dataset and threat model

    def stats(self, metric: str) -> tuple[float, float]:
        """Mean and sample standard deviation (n − 1; NaN for one run) of a metric."""
        return _mean_std([getattr(r, metric) for r in self.runs])


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


def run_result(path: str | Path) -> RunResult:
    """Best and last accuracies of the run in ``path`` from its ``config.yaml`` and ``metrics.jsonl``."""
    run = RunDir.at(path)
    cfg = run.config()
    evaluated = [r for r in run.history() if "test_pgd_acc" in r]
    if not evaluated:
        raise WpatError(f"{path}: no evaluated epoch in metrics.jsonl")
    key = "val_pgd_acc" if cfg.run.select == "val" else "test_pgd_acc"
    best = max((r for r in evaluated if key in r), key=lambda r: r[key], default=evaluated[-1])  # first max
    last = evaluated[-1]
    finished = run_over(cfg, last["epoch"], best["epoch"])
    return RunResult(Path(path), cfg.run.seed, setting_of(cfg.to_dict()), best["epoch"], last["epoch"],
                     cfg.schedule.epochs, finished, best["test_pgd_acc"], last["test_pgd_acc"],
                     best["test_nat_acc"], last["test_nat_acc"])


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


def _labels(groups: Sequence[Group], keys: Sequence[str]) -> list[str]:
    """``METHOD (key=value, ...)`` per group with the given varying keys; a key a group lacks
    is shown as ``key=-`` only if another group of the same method has it."""
    shown = [k for k in keys if k not in METHOD_KEYS + COLUMN_KEYS]
    names = short_labels(shown)
    labels = []
    for g in groups:
        peers = [o for o in groups if _method(o.setting) == _method(g.setting)]
        parts = [f"{names[k]}={_number(g.setting[k]) if k in g.setting else '-'}" for k in shown
                 if any(k in o.setting for o in peers)]
        labels.append(_method(g.setting) + (f" ({', '.join(parts)})" if parts else ""))
    return labels


def group_runs(results: Iterable[RunResult]) -> list[Group]:
    """Runs with equal settings in one group each, labelled and placed in a column. A run
    whose seed is already in its group computes the same thing again: it goes to ``repeats``."""
    groups: dict[str, Group] = {}
    for r in results:
        group = groups.setdefault(repr(sorted(r.setting.items())), Group(r.setting))
        (group.repeats if r.seed in {o.seed for o in group.runs} else group.runs).append(r)
    ordered = list(groups.values())
    for with_absent in (False, True):  # absent options only where labels would collide otherwise
        labels = _labels(ordered, varying_keys(ordered, with_absent))
        if len({(lab, _column(g.setting)) for lab, g in zip(labels, ordered)}) == len(ordered):
            break
    for g, label in zip(ordered, labels):
        g.label, g.column = label, _column(g.setting)
    return ordered


# ---------------------------------------------------------------------- tables


def _cell(group: Group | None, metric: str) -> str:
    if group is None:
        return "-"
    mean, std = group.stats(metric)
    return f"{100 * mean:.2f}" + ("" if math.isnan(std) else f" ± {100 * std:.2f}")


def markdown_report(groups: Sequence[Group]) -> str:
    """The table: one row per method setting, per dataset and threat model the robust (test
    PGD) and natural accuracy of the best and last checkpoints, mean ± sample std in percent."""
    columns = list(dict.fromkeys(g.column for g in groups))
    rows = list(dict.fromkeys(g.label for g in groups))
    cell = {(g.label, g.column): g for g in groups}
    headers = ["method", *(n if len(columns) == 1 else f"{c} {n}" for c in columns for n in METRIC_NAMES)]
    body = [[row, *(_cell(cell.get((row, c)), m) for c in columns for m in METRICS)] for row in rows]
    counts = sorted({len(g.runs) for g in groups})
    steps = sorted({g.setting.get("eval.steps") for g in groups})
    caption = (f"Test accuracy (%), mean ± sample std over {'/'.join(map(str, counts))} seed(s); "
               f"robust = PGD-{'/'.join(map(str, steps))}"
               + (f"; {columns[0]}" if len(columns) == 1 else ""))
    sizes = ["; ".join(f"{g.label} [{g.column}]: n={len(g.runs)}" for g in groups)] if len(counts) > 1 else []
    return "\n".join([caption, "", markdown_table(headers, body), *sizes])


def report_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One CSV row per group: label, column, n, seeds, each metric's mean and std (fractions),
    the varying settings and the run directories."""
    keys = varying_keys(groups)
    rows = []
    for g in groups:
        row = {"method": g.label, "column": g.column, "n": len(g.runs),
               "seeds": " ".join(str(r.seed) for r in g.runs)}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = g.stats(metric)
        row.update({k: g.setting.get(k, "") for k in keys})
        row["runs"] = " ".join(str(r.path) for r in g.runs)
        rows.append(row)
    return rows


def paired_differences(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """For each two rows of one column that share two or more seeds: per metric, the mean and
    sample std over those seeds of the per-seed difference (first row minus second, fractions).

    Seeds pair runs that started alike (same data order, same initial weights where the model
    is the same), so a difference is judged against its own spread across seeds, which is
    usually smaller than the rows' stds combined."""
    rows = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            if a.column != b.column:
                continue
            mine = {r.seed: r for r in a.runs}
            pairs = [(mine[r.seed], r) for r in b.runs if r.seed in mine]
            if len(pairs) < 2:
                continue
            row: dict[str, Any] = {"difference": f"{a.label} − {b.label}", "column": a.column,
                                   "n": len(pairs), "seeds": " ".join(str(x.seed) for x, _ in pairs)}
            for metric in METRICS:
                row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(
                    [getattr(x, metric) - getattr(y, metric) for x, y in pairs])
            rows.append(row)
    return rows


def markdown_differences(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`paired_differences` as a table in percentage points (mean ± sample std)."""
    columns = {r["column"] for r in rows}
    headers = ["difference", *([] if len(columns) == 1 else ["column"]), "seeds", *METRIC_NAMES]
    body = [[r["difference"], *([] if len(columns) == 1 else [r["column"]]), str(r["n"]),
             *(f"{100 * r[f'{m}_mean']:+.2f} ± {100 * r[f'{m}_std']:.2f}" for m in METRICS)]
            for r in rows]
    return ("Paired differences over shared seeds (percentage points, mean ± sample std of the "
            "per-seed difference)\n\n" + markdown_table(headers, body))


# ---------------------------------------------------------------------- learning curves


def group_curves(group: Group) -> list[dict[str, Any]]:
    """Per epoch that every run of ``group`` reached: the mean and sample std over its runs of
    each of ``CURVE_SERIES`` (NaN where some run did not log it that epoch, e.g. between
    evaluations)."""
    histories = [{r["epoch"]: r for r in RunDir.at(run.path).history()} for run in group.runs]
    epochs = sorted(set.intersection(*(set(h) for h in histories)))
    rows = []
    for epoch in epochs:
        row: dict[str, Any] = {"method": group.label, "column": group.column, "epoch": epoch,
                               "n": len(histories)}
        for key in CURVE_SERIES:
            values = [h[epoch][key] for h in histories if key in h[epoch]]
            complete = len(values) == len(histories)
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values if complete else [])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- ablations


def ablation_keys(groups: Sequence[Group]) -> list[str]:
    """The ablation axes: every numeric option of a selected component that varies among the
    groups (``perturb.awp.gamma``, ``perturb.rwp.c_min``, ``perturb.rwp.steps``, an option of
    any method registered later), each to plot robust accuracy against. A setting holds only the
    options of the components it selects (:func:`wpat.sweep.setting_of`); a non-numeric option
    (a norm's name) has no axis to plot on."""
    sections = set(COMPONENT_SECTIONS)
    return [k for k in varying_keys(groups) if k.count(".") == 2 and k.split(".")[0] in sections
            and all(is_number(g.setting[k]) for g in groups if k in g.setting)]


def ablation_rows(groups: Sequence[Group], key: str) -> list[dict[str, Any]]:
    """Per series (the groups equal but for ``key``) and value of ``key``: n and the mean and
    std of best and last robust accuracy (fractions), ordered by series, then value."""
    members: dict[str, list[Group]] = {}
    heads: dict[str, Group] = {}  # the series' common setting, for its label
    for g in (g for g in groups if key in g.setting):
        rest = {k: v for k, v in g.setting.items() if k != key}
        heads.setdefault(repr(sorted(rest.items())), Group(rest))
        members.setdefault(repr(sorted(rest.items())), []).append(g)
    names = _labels(list(heads.values()), varying_keys(list(heads.values())))
    rows = []
    for name, series in zip(names, members.values()):
        for g in sorted(series, key=lambda g: g.setting[key]):
            (best, best_std), (last, last_std) = g.stats("best_robust"), g.stats("last_robust")
            rows.append({"series": f"{name} [{g.column}]", key: g.setting[key], "n": len(g.runs),
                         "best_robust_mean": best, "best_robust_std": best_std,
                         "last_robust_mean": last, "last_robust_std": last_std})
    return rows
