"""Results of many runs as the papers tabulate them: mean ± sample std over seeds.

    runs = [run_result(p) for p in find_runs(["runs/gamma-sweep"])]     # wpat.analysis.groups
    groups = group_runs([r for r in runs if r.finished])
    print(markdown_report(groups))            # RWP Table 1 / AWP Table 4 layout
    write_csv(report_rows(groups), "report.csv")     # wpat.helpers.tables.write_csv
    plot_group_curves([row for g in groups for row in group_curves(g)], "curves.png")
    key = "perturb.awp.gamma"                 # one of ablation_keys(groups)
    plot_ablation(ablation_rows(groups, key), key, "ablation.png")   # both in plots.py, CSV beside

One row per group of :func:`wpat.analysis.groups.group_runs` (runs that differ only in their
seed, labelled by method and distinguishing settings), columns grouped by dataset and threat
model: the robust (test PGD) and natural accuracy of the best and last checkpoints and best −
last, averaged over the group's seeds. Accuracies are fractions in [0, 1] in the CSV and
percent in the tables and plots; the std of a single run is NaN (shown as no ``±``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from wpat.analysis.groups import Group, group_labels, mean_std, varying_keys
from wpat.checkpoints.run_dir import RunDir
from wpat.helpers.errors import is_number
from wpat.helpers.tables import markdown_table
from wpat.sweep import COMPONENT_SECTIONS

METRICS = ("best_robust", "last_robust", "robust_drop", "best_natural", "last_natural")
METRIC_NAMES = ("robust best", "robust last", "best − last", "natural best", "natural last")
# Per-epoch series averaged over a group's seeds (fractions): the learning curves and the share
# of training adversarial examples with loss below c_min (logged every epoch, also without RWP).
CURVE_SERIES = ("test_pgd_acc", "train_pgd_acc", "test_nat_acc", "train_nat_acc", "lsc_frac_below")


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
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(
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
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values if complete else [])
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
        heads.setdefault(repr(sorted(rest.items())), Group(rest, method=g.method))
        members.setdefault(repr(sorted(rest.items())), []).append(g)
    names = group_labels(list(heads.values()), varying_keys(list(heads.values())))
    rows = []
    for name, series in zip(names, members.values()):
        for g in sorted(series, key=lambda g: g.setting[key]):
            (best, best_std), (last, last_std) = g.stats("best_robust"), g.stats("last_robust")
            rows.append({"series": f"{name} [{g.column}]", key: g.setting[key], "n": len(g.runs),
                         "best_robust_mean": best, "best_robust_std": best_std,
                         "last_robust_mean": last, "last_robust_std": last_std})
    return rows
