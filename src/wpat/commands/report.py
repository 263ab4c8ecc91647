"""``wpat report RUN_DIR|SWEEP_DIR ...``: mean ± std over seeds, as RWP Table 1 / AWP Table 4.

Rows are methods (the sweep's method names, ``wpat sweep --methods``, or else objective +
perturbation, e.g. ``AT``, ``AT-AWP``, ``TRADES-RWP``) with the settings in which the runs
differ; columns are grouped by dataset and threat model; cells give the test robust (PGD) and
natural accuracy of the best and last checkpoints, mean ± sample std over the runs that differ
only in ``run.seed`` (runs that differ in anything else are never averaged
together); ``best − last`` is the robust accuracy robust overfitting cost each run. Writes into
``--out`` (default: the sweep directory, or the first run directory):

- ``report.md`` / ``report.csv``: the table (also printed);
- ``differences.csv`` and a second table in ``report.md``: where rows share seeds, the per-seed
  difference between two rows, mean ± std (a difference's own spread, smaller than the rows'
  stds combined when seeds pair alike runs);
- ``curves.png`` / ``.csv``: each row's learning curves and fraction of training adversarial
  examples below c_min, mean ± std over its seeds;
- ``ablation-<key>.png`` / ``.csv`` for each numeric option of a selected component that the
  runs vary (``perturb.<name>.gamma``, K2 ``perturb.<name>.steps``, ``perturb.rwp.c_min``,
  ``objective.trades.beta``, ...): robust accuracy against that value (RWP Fig. 1b, 2a, 2b);
- ``leaderboard.md`` / ``.csv`` (also printed): per method, robust accuracy at best and last
  (PGD, and AutoAttack where ``eval.json`` holds it, with its version and number of images),
  best − last, natural accuracy, training wall time and forward-backward passes per step
  relative to AT, and the per-seed difference from a baseline row (``--baseline``, default AT)
  with the number of seeds of the same sign; sorted by ``--sort``
  (:mod:`wpat.analysis.leaderboard`);
- ``leaderboard-curves.png`` / ``.csv``: test robust accuracy per epoch per method, mean ± std
  bands; ``leaderboard-cost.png`` / ``.csv``: robustness against training cost.

Runs that have not reached their last epoch are listed and left out unless ``--unfinished``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wpat.helpers.errors import WpatError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR|SWEEP_DIR",
                        help="run directories, sweep directories or directories of runs")
    parser.add_argument("--out", help="output directory (default: the sweep directory or first run directory)")
    parser.add_argument("--unfinished", action="store_true",
                        help="also count runs that have not reached their last epoch")
    parser.add_argument("--baseline", metavar="ROW",
                        help="the leaderboard row the paired differences are taken against (default: at / AT)")
    parser.add_argument("--sort", default="pgd-last", metavar="COLUMN",
                        help="sort the leaderboard by: pgd-best, pgd-last (default), pgd-drop, nat-best, "
                             "nat-last, aa-best, aa-last, minutes, passes, cost or method")
    parser.add_argument("--aa", default="aa", metavar="COLUMN",
                        help="the eval.json column the AA cells read: aa (standard, default), aa-plus, aa-apgd")


def test_images(groups) -> dict[str, int]:
    """Per table (dataset and threat model), the number of test images every row's per-epoch
    accuracy is measured on, where the configs say (``data.test_subset``); for the noise line."""
    found: dict[str, set] = {}
    for g in groups:
        found.setdefault(g.column, set()).add(g.setting.get("data.test_subset", 0))
    return {column: n.pop() for column, n in found.items() if len(n) == 1 and next(iter(n)) > 0}


def run(args: argparse.Namespace) -> int:
    # torch (reading configs builds nothing, but wpat.analysis imports it) and matplotlib: only here
    from wpat.analysis.groups import find_runs, group_runs, run_methods, run_result
    from wpat.analysis.leaderboard import check_sort, leaderboard
    from wpat.analysis.leaderboard_markdown import markdown_leaderboard
    from wpat.analysis.plots import plot_ablation, plot_cost, plot_group_curves, plot_method_curves
    from wpat.analysis.report import (ablation_keys, ablation_rows, group_curves, markdown_differences,
                                      markdown_report, paired_differences, report_rows)
    from wpat.evaluation import check_attack_names
    from wpat.helpers.fs import write_text_atomic
    from wpat.helpers.tables import write_csv

    check_sort(args.sort)
    check_attack_names([args.aa])
    results = [run_result(p) for p in find_runs(args.paths)]
    left_out = [r for r in results if not r.finished and not args.unfinished]
    counted = [r for r in results if r not in left_out]
    if not counted:
        raise WpatError(f"no finished run among {len(results)} (pass --unfinished to count them anyway)")
    groups = group_runs(counted, run_methods(r.path for r in counted))
    board = leaderboard(groups, args.baseline, args.sort, args.aa)  # checks --baseline before writing
    out = Path(args.out) if args.out else Path(args.paths[0])
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_report(groups)
    differences = paired_differences(groups)
    if differences:
        text += "\n\n" + markdown_differences(differences)
    write_text_atomic(out / "report.md", text + "\n")
    written = [out / "report.md", write_csv(report_rows(groups), out / "report.csv")]
    if differences:
        written.append(write_csv(differences, out / "differences.csv"))
    curve_rows = [row for g in groups for row in group_curves(g)]
    curves = plot_group_curves(curve_rows, out / "curves.png")
    written += [curves, curves.with_suffix(".csv")]
    board_text = markdown_leaderboard(board, test_images(groups))
    write_text_atomic(out / "leaderboard.md", board_text + "\n")
    written += [out / "leaderboard.md", write_csv(board.rows, out / "leaderboard.csv")]
    for png in (plot_method_curves(curve_rows, out / "leaderboard-curves.png"),
                plot_cost(board.rows, out / "leaderboard-cost.png")):
        written += [png, png.with_suffix(".csv")]
    for key in ablation_keys(groups):
        png = plot_ablation(ablation_rows(groups, key), key, out / f"ablation-{key}.png")
        written += [png, png.with_suffix(".csv")]
    print(text)
    print()
    print(board_text)
    for r in left_out:
        print(f"left out (unfinished, epoch {r.last_epoch} of {r.epochs}): {r.path}")
    for g in groups:
        for r in g.repeats:
            same = next(o for o in g.runs if o.seed == r.seed)
            print(f"left out (same setting and seed as {same.path}): {r.path}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
