"""The leaderboard of ``wpat report``: per method, robustness at best and last over seeds, the
cost of training it, and its paired difference from a baseline row.

    results = [run_result(p) for p in find_runs(["runs/lb"])]
    groups = group_runs(results, run_methods(r.path for r in results))
    board = leaderboard(groups, baseline="at", sort="pgd_last")
    print(markdown_leaderboard(board))                # wpat.analysis.leaderboard_markdown
    write_csv(board.rows, "leaderboard.csv")          # wpat.helpers.tables.write_csv

One row per group of :func:`wpat.analysis.groups.group_runs` (runs that differ only in their
seed; nothing else is averaged), one table per dataset and threat model. Per row, mean ± sample
std over its seeds of:

- ``pgd_best``, ``pgd_last``, ``pgd_drop``, ``nat_best``, ``nat_last``: the per-epoch test
  robust (PGD, ``eval.steps``) and natural accuracy training logs, at the best epoch (as
  training picks ``best.pt``) and the last, and best − last per run (robust overfitting's cost);
- ``aa_best``, ``aa_last``: AutoAttack's accuracy on ``best.pt`` and ``last.pt`` where the run's
  ``eval.json`` holds it (``wpat eval RUN_DIR|SWEEP_DIR --attacks aa``) for those very epochs;
  ``aa_version`` and ``aa_images`` say which version on how many test images;
- ``minutes``: training wall time, the sum of the epochs' ``seconds`` (evaluation excluded);
- ``passes``: forward-backward passes per step (:mod:`wpat.analysis.cost`), and ``cost``: the
  same relative to AT with the same attack.

A run that keeps a weight average (``run.ema``, ``run.average=swa``) adds the row ``METHOD
(average)``: the same metrics of the average, which training measures beside the model at every
evaluated epoch (:func:`with_averages`).

And, against the baseline row of its table (``at`` or ``AT`` by default), per accuracy the
per-seed difference over the seeds both rows have, mean ± sample std, and ``agree``: the number
of those seeds whose difference has the sign of the mean. Rows are sorted by one metric, the
better end first (higher accuracy; lower best − last, time and cost); ``method`` sorts by name.
Accuracies are fractions in the CSV and percent (points) in the Markdown
(:mod:`wpat.analysis.leaderboard_markdown`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from wpat.analysis.cost import at_passes, step_passes
from wpat.analysis.groups import Group, RunResult, mean_std
from wpat.helpers.errors import WpatError
from wpat.checkpoints.run_dir import RunDir

DEFAULT_BASELINE = "at"  # matched without regard to case: a sweep's `at` or the report's `AT`
DEFAULT_SORT = "pgd_last"
AA_COLUMN = "aa"  # the eval.json column the AA cells read (wpat eval --attacks aa)


@dataclass(frozen=True)
class Metric:
    key: str
    header: str  # "{pgd}" stands for the PGD column's name, e.g. PGD-20
    higher_is_better: bool
    accuracy: bool = True  # a fraction shown in percent, with a paired difference


METRICS = (
    Metric("pgd_best", "{pgd} best", True),
    Metric("pgd_last", "{pgd} last", True),
    Metric("pgd_drop", "best − last", False),
    Metric("nat_best", "natural best", True),
    Metric("nat_last", "natural last", True),
    Metric("aa_best", "AA best", True),
    Metric("aa_last", "AA last", True),
    Metric("minutes", "train min", False, accuracy=False),
    Metric("passes", "passes/step", False, accuracy=False),
    Metric("cost", "× AT", False, accuracy=False),
)
BY_KEY = {m.key: m for m in METRICS}
SORT_KEYS = ("method", *BY_KEY)
SHOWN_DIFFERENCES = ("pgd_best", "pgd_last", "aa_best", "aa_last")  # the Markdown's Δ columns


@dataclass
class Leaderboard:
    """The rows (CSV-ready), and what the Markdown needs to say about them."""

    rows: list[dict[str, Any]]
    sort: str
    baseline: str | None
    pgd: str  # the PGD column's name, PGD-20
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- one run


AASetting = tuple[str, int]  # AutoAttack's version and the number of test images


def describe_aa(setting: AASetting) -> str:
    return f"{setting[0]}, {setting[1]} images"


def _aa_setting(settings: Mapping[str, Any], column: str) -> AASetting:
    return str(settings.get("autoattack") or column), int(settings.get("n_examples") or 0)


def autoattack_of(result: RunResult, column: str = AA_COLUMN) -> tuple[dict[str, float], AASetting | None, list[str]]:
    """AutoAttack's accuracy on the run's best and last checkpoints from its ``eval.json``
    (``{"best": ..., "last": ...}``, those it has), the setting they were measured under
    (``standard, 1000 images``), and notes on results left out: of another epoch than the
    run's best or last now (the run trained on after the evaluation), or measured under
    different settings on the two checkpoints."""
    from wpat.evaluation.results import read_report

    report = read_report(RunDir(result.path).path / "eval.json")
    if report is None:
        return {}, None, []
    prefix = "ema_" if result.model == "average" else ""  # the average's ema_best.pt, ema_last.pt
    found, settings, notes = {}, [], []
    held = {a for e in report["checkpoints"].values() for a in e.get("accuracy", {})}
    if column not in held and not prefix:
        notes += [f"eval.json holds {other}, not {column}: --aa {other} shows it"
                  for other in sorted(held) if other.startswith("aa")]
    for kind, epoch in ((prefix + "best", result.best_epoch), (prefix + "last", result.last_epoch)):
        entry = report["checkpoints"].get(kind)
        if entry is None or entry.get("superseded") or column not in entry.get("accuracy", {}):
            continue
        if entry.get("epoch") != epoch:
            notes.append(f"{result.path}: {column} of {kind}.pt is of epoch {entry.get('epoch')}, the run's "
                         f"{kind} is epoch {epoch} now; left out (evaluate it again)")
            continue
        found[kind.removeprefix(prefix)] = entry["accuracy"][column]
        settings.append(_aa_setting(entry.get("settings", {}).get(column, {}), column))
    if len(set(settings)) > 1:
        notes.append(f"{result.path}: {column} of best.pt and last.pt measured under different settings "
                     f"({' / '.join(map(describe_aa, settings))}); left out")
        return {}, None, notes
    return found, (settings[0] if settings else None), notes


def run_values(result: RunResult, aa_column: str = AA_COLUMN) -> tuple[dict[str, float | None], AASetting | None, list[str]]:
    """A run's value of every metric (None where it has none), its AA setting, and notes."""
    history = RunDir(result.path).history()
    passes = step_passes(result.setting, history)
    aa, aa_setting, notes = autoattack_of(result, aa_column)
    values = {"pgd_best": result.best_robust, "pgd_last": result.last_robust, "pgd_drop": result.robust_drop,
              "nat_best": result.best_natural, "nat_last": result.last_natural,
              "aa_best": aa.get("best"), "aa_last": aa.get("last"),
              "minutes": sum(float(r.get("seconds", 0.0)) for r in history) / 60,
              "passes": passes, "cost": None if passes is None else passes / at_passes(result.setting)}
    return values, aa_setting, notes


def paired(mine: Mapping[int, float], theirs: Mapping[int, float]) -> dict[str, Any]:
    """The per-seed difference ``mine − theirs`` over the seeds both have: mean, sample std, n,
    and ``agree``, the number of seeds whose difference has the sign of the mean."""
    diffs = [mine[s] - theirs[s] for s in mine if s in theirs]
    mean, std = mean_std(diffs)
    sign = 0 if not diffs or mean == 0 else math.copysign(1, mean)
    agree = sum(1 for d in diffs if (d > 0) - (d < 0) == sign)
    return {"mean": mean, "std": std, "n": len(diffs), "agree": agree}


def _group_values(group: Group, aa_column: str, notes: list[str]) -> tuple[dict[str, dict[int, float]], AASetting | None]:
    """Per metric, ``{seed: value}`` of the group's runs that have it; AutoAttack only from the
    runs measured under the setting most of them share (the others are noted)."""
    per_run = []
    for run in group.runs:
        values, aa_setting, run_notes = run_values(run, aa_column)
        notes += run_notes
        per_run.append((run, values, aa_setting))
    common = Counter(s for _, _, s in per_run if s is not None).most_common(1)
    aa_setting = common[0][0] if common else None
    table: dict[str, dict[int, float]] = {m.key: {} for m in METRICS}
    for run, values, setting in per_run:
        if setting is not None and setting != aa_setting:
            notes.append(f"{run.path}: AutoAttack measured as {describe_aa(setting)}, not as "
                         f"{describe_aa(aa_setting)} like the other runs of {group.label}; left out of its AA cells")
            values = {**values, "aa_best": None, "aa_last": None}
        for key, value in values.items():
            if value is not None:
                table[key][run.seed] = value
    return table, aa_setting


# ---------------------------------------------------------------------- the board


def check_sort(sort: str) -> str:
    key = sort.replace("-", "_")
    if key not in SORT_KEYS:
        raise WpatError(f"--sort {sort}: choose one of {', '.join(k.replace('_', '-') for k in SORT_KEYS)}")
    return key


def _baseline_of(groups: Sequence[Group], baseline: str | None, column: str) -> Group | None:
    wanted = (baseline or DEFAULT_BASELINE).lower()
    return next((g for g in groups if g.column == column and g.label.lower() == wanted), None)


def leaderboard(groups: Sequence[Group], baseline: str | None = None, sort: str = DEFAULT_SORT,
                aa_column: str = AA_COLUMN) -> Leaderboard:
    """The leaderboard of ``groups``: a row per group (see the module docstring), per table
    (dataset and threat model) sorted by ``sort``; ``baseline`` names the row the paired
    differences are taken against (default ``at``/``AT`` where a table has one). A
    ``baseline`` given but in no table, or an unknown ``sort``, is a one-line error."""
    sort = check_sort(sort)
    groups = with_averages(groups)
    labels = {g.label.lower() for g in groups}
    if baseline is not None and baseline.lower() not in labels:
        raise WpatError(f"--baseline {baseline}: no such row; rows: {', '.join(g.label for g in groups)}")
    notes: list[str] = []
    values = {id(g): _group_values(g, aa_column, notes) for g in groups}
    steps = sorted({g.setting.get("eval.steps") for g in groups}, key=str)
    rows = []
    columns = list(dict.fromkeys(g.column for g in groups))
    for column in columns:
        base = _baseline_of(groups, baseline, column)
        if base is None and len(groups) > 1:
            notes.append(f"{column}: no row {baseline or DEFAULT_BASELINE!r} to take differences against "
                         f"(--baseline NAME picks one)")
        mine = [g for g in groups if g.column == column]
        block = []
        for g in mine:
            table, aa_setting = values[id(g)]
            row: dict[str, Any] = {"method": g.label, "column": column, "n": len(g.runs),
                                   "seeds": " ".join(str(r.seed) for r in g.runs)}
            for m in METRICS:
                row[f"{m.key}_mean"], row[f"{m.key}_std"] = mean_std(list(table[m.key].values()))
                row[f"{m.key}_n"] = len(table[m.key])
            row["aa_version"], row["aa_images"] = aa_setting or ("", 0)
            row["baseline"] = base.label if base is not None and base is not g else ""
            for m in (m for m in METRICS if m.accuracy):
                d = paired(table[m.key], values[id(base)][0][m.key]) if row["baseline"] else {}
                for part in ("mean", "std", "n", "agree"):
                    row[f"delta_{m.key}_{part}"] = d.get(part, math.nan if part in ("mean", "std") else 0)
            row["runs"] = " ".join(str(r.path) for r in g.runs)
            block.append(row)
        rows += _sorted(block, sort)
    return Leaderboard(rows, sort, baseline, "PGD-" + "/".join(map(str, steps)), list(dict.fromkeys(notes)))


def with_averages(groups: Sequence[Group]) -> list[Group]:
    """``groups`` and, after each whose runs keep a weight average (ReBAT, KD+SWA, DKL: the
    model their papers report), a row ``LABEL (average)`` of the averages, measured under the
    same attack at every evaluated epoch (best by the same metric), with AutoAttack from
    ``ema_best.pt`` and ``ema_last.pt``, which ``wpat eval`` measures beside the model's."""
    out: list[Group] = []
    for g in groups:
        out.append(g)
        averages = [r.average for r in g.runs if r.average is not None]
        if averages and len(averages) == len(g.runs):
            out.append(dataclasses.replace(g, runs=averages, repeats=[], label=f"{g.label} (average)"))
    return out


def _sorted(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """Better first; rows without the value last, in their order."""
    if sort == "method":
        return sorted(rows, key=lambda r: r["method"].lower())
    sign = -1 if BY_KEY[sort].higher_is_better else 1
    have = [r for r in rows if not math.isnan(r[f"{sort}_mean"])]
    return sorted(have, key=lambda r: sign * r[f"{sort}_mean"]) + [r for r in rows if r not in have]
