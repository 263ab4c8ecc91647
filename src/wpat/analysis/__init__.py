"""Analyses of trained runs: weight loss landscapes, LSC groups, learning curves, weights.

    from wpat.analysis import filter_normalized_direction, landscape_1d, plot_landscape_1d

    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    loss, acc = landscape_1d(model, x, y, attack, d, alphas=np.linspace(-1, 1, 21))
    plot_landscape_1d({"epoch 20": loss}, alphas, "landscape.png")   # + landscape.csv

``landscape.py`` (AWP §3, Appendix B, Algorithm 1), ``lsc.py`` (RWP §3, Fig. 1c), ``runs.py``
(reading run directories), ``plots.py`` (figures with their data beside them), ``groups.py``
(runs grouped by their setting over seeds), ``report.py`` (mean ± std over seeds as RWP Table 1 /
AWP Table 4, ablation plots), ``leaderboard.py`` and ``leaderboard_markdown.py`` (the methods'
leaderboard and its Markdown), ``gamma.py`` (adversarial loss under AWP vs random weight
perturbations over γ, AWP Fig. 3a). The commands
``wpat landscape | lsc | plot | report | sensitivity`` are thin wrappers around these; they load
checkpoints with :mod:`wpat.training.loading`.
"""

from wpat.analysis.runs import (CheckpointRef, analysis_attack, curve_rows, examples,
                                layer_weights, list_checkpoints, run_label)
from wpat.analysis.landscape import (adversarial_losses, filter_normalized_direction,
                                     landscape_1d, landscape_2d)
from wpat.analysis.lsc import LSCTable, lsc_from_losses, lsc_table
from wpat.analysis.groups import Group, RunResult, find_runs, group_runs, run_result
from wpat.analysis.report import (ablation_keys, ablation_rows, group_curves, markdown_report,
                                  report_rows)
from wpat.analysis.gamma import (DEFAULT_GAMMAS, crafted_examples, gamma_sensitivity,
                                 plot_gamma_sensitivity)
from wpat.analysis.plots import (plot_ablation, plot_curves, plot_group_curves, plot_landscape_1d,
                                 plot_landscape_2d, plot_lsc, plot_weight_histograms)

__all__ = [
    "DEFAULT_GAMMAS", "Group", "RunResult", "ablation_keys", "ablation_rows", "crafted_examples",
    "find_runs", "gamma_sensitivity", "group_curves", "group_runs", "markdown_report", "plot_ablation",
    "plot_gamma_sensitivity", "report_rows", "run_result",
    "CheckpointRef", "LSCTable", "adversarial_losses", "analysis_attack", "curve_rows", "examples",
    "filter_normalized_direction", "landscape_1d", "landscape_2d", "layer_weights",
    "list_checkpoints", "lsc_from_losses", "lsc_table", "plot_curves", "plot_group_curves", "plot_landscape_1d",
    "plot_landscape_2d", "plot_lsc", "plot_weight_histograms", "run_label",
]
