"""Results of many runs as the papers tabulate them: mean ± sample std over seeds.

    runs = [run_result(p) for p in find_runs(["runs/gamma-sweep"])]
    groups = group_runs([r for r in runs if r.finished])
    print(markdown_report(groups))            # RWP Table 1 / AWP Table 4 layout
    write_csv(report_rows(groups), "report.csv")
    key = "perturb.awp.gamma"                 # one of ablation_keys(groups)
    plot_ablation(ablation_rows(groups, key), key, "ablation.png")   # + ablation.csv

A run counts with its **best** checkpoint (the epoch of highest test PGD accuracy, or validation
accuracy with ``run.select=val``, as training picks ``best.pt``) and its **last** evaluated
epoch; robust accuracy is the per-epoch test PGD accuracy (``eval.steps``), natural the clean
test accuracy, both of ``metrics.jsonl``. Runs are averaged only when their resolved configs are
equal but for the seed and the settings that do not change what a run computes
(``wpat.sweep.IGNORED_KEYS``); the options of components a run does not use (``perturb.rwp.*`` of an
AWP run) are not part of its setting either, since they never reach it. Each group is labelled by
its method (``AT``, ``AT-AWP``, ``TRADES-RWP``) and the settings in which groups differ; columns
are grouped by dataset and threat model. Accuracies are fractions in [0, 1] in the CSV and
percent in the tables and plots; the std of a single run is NaN (shown as no ``±``).
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from wpat.analysis.runs import read_history, run_config, run_dir
from wpat.config import run_over
from wpat.errors import WpatError
from wpat.sweep import MANIFEST, read_manifest, setting_of, short_labels
from wpat.tables import markdown_table

METHOD_KEYS = ("objective.name", "perturb.name")
COLUMN_KEYS = ("data.name", "attack.norm", "attack.eps")
ABLATION_KEY = re.compile(r"perturb\.[^.]+\.(gamma|steps)|perturb\.rwp\.c_min")  # γ, K2, c_min
METRICS = ("best_robust", "last_robust", "best_natural", "last_natural")
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN",
                 "fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


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
        values = [getattr(r, metric) for r in self.runs]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


# ---------------------------------------------------------------------- reading


def _runs_in(path: Path) -> list[Path]:
    """A sweep directory's runs (its manifest), a run directory itself, or neither: []."""
    if (path / MANIFEST).is_file():
        return [path / r["dir"] for r in read_manifest(path)["runs"]]
    return [path] if (path / "config.yaml").is_file() else []


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories from run directories, sweep directories (the runs of their
    ``sweep.json``) and directories of either; runs without a finished epoch are left out."""
    found: list[Path] = []
    for path in map(run_dir, paths):
        candidates = _runs_in(path) or [p for child in sorted(path.iterdir()) if child.is_dir()
                                        for p in _runs_in(child)]
        if not candidates:
            raise WpatError(f"{path}: neither a run directory, a sweep directory nor a directory of them")
        found += [p for p in candidates if (p / "metrics.jsonl").is_file() and p not in found]
    if not found:
        raise WpatError("no run with a finished epoch (metrics.jsonl) in " + ", ".join(map(str, paths)))
    return found


def run_result(path: str | Path) -> RunResult:
    """Best and last accuracies of the run in ``path`` from its ``config.yaml`` and ``metrics.jsonl``."""
    cfg = run_config(path)
    evaluated = [r for r in read_history(path) if "test_pgd_acc" in r]
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
    names = ["robust best", "robust last", "natural best", "natural last"]
    headers = ["method", *(n if len(columns) == 1 else f"{c} {n}" for c in columns for n in names)]
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


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Rows to CSV (columns: the union of the rows' keys, in order of appearance)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------- ablations


def ablation_keys(groups: Sequence[Group]) -> list[str]:
    """The varying settings that are a perturbation's γ, K2 (``steps``) or RWP's ``c_min``."""
    return [k for k in varying_keys(groups) if ABLATION_KEY.fullmatch(k)]


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


def plot_ablation(rows: Sequence[dict[str, Any]], key: str, path: str | Path) -> Path:
    """Robust accuracy (%) against ``key``'s value, best (solid) and last (dashed) per series,
    mean ± std error bars; a log axis when the values span 20× or more. CSV beside."""
    from matplotlib.figure import Figure  # matplotlib only when plotting

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    values = [r[key] for r in rows]
    for i, name in enumerate(dict.fromkeys(r["series"] for r in rows)):
        mine = [r for r in rows if r["series"] == name]
        x = [r[key] for r in mine]
        for kind, style, fill in (("best", "-o", None), ("last", "--s", "none")):
            y = [100 * r[f"{kind}_robust_mean"] for r in mine]
            err = [0 if math.isnan(r[f"{kind}_robust_std"]) else 100 * r[f"{kind}_robust_std"] for r in mine]
            ax.errorbar(x, y, yerr=err, fmt=style, mfc=fill, color=f"C{i % 10}", capsize=3,
                        label=f"{name}, {kind}")
    if min(values) > 0 and max(values) / min(values) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("test robust accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    write_csv(rows, path.with_suffix(".csv"))
    return path
