"""The analyses' figures: each a PNG with the data it shows written beside it as CSV.

- :func:`plot_landscape_1d` -- g(α) per checkpoint, several directions (AWP Fig. 1, 5);
- :func:`plot_landscape_2d` -- the relative landscape |g(α, β) − g(0, 0)| (AWP Fig. 6);
- :func:`plot_lsc` -- LSC histogram per epoch and fraction below c_min (RWP §3, Fig. 1c);
- :func:`plot_curves` -- robust/natural learning curves and the robust gap of several runs
  (AWP Fig. 1a, RWP Fig. 2c);
- :func:`plot_group_curves` -- the same averaged over seeds, with the fraction below c_min
  (``wpat report``);
- :func:`plot_ablation` -- robust accuracy against γ, c_min or K2 (RWP Fig. 1b, 2a, 2b);
- :func:`plot_method_curves`, :func:`plot_cost` -- the leaderboard's: test robust accuracy per
  epoch per method, and robustness against training cost (``wpat report``);
- :func:`plot_weight_histograms` -- per-layer weight histograms, log counts (AWP Fig. 4).

Figures are built on ``matplotlib.figure.Figure`` and saved through its Agg canvas: no pyplot,
no global backend switch, no display needed. Each function returns the PNG's path; the CSV has
the same name with ``.csv``. Accuracies are stored as fractions and drawn in percent.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from wpat.analysis.runs import CURVE_KEYS, curve_rows
from wpat.analysis.lsc import LSCTable
from wpat.helpers.errors import WpatError
from wpat.helpers.tables import write_csv

MAX_PANELS = 12  # weight histograms: beyond this many layers, an evenly spaced selection


def _save(fig: Figure, path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``fig`` to ``path`` (PNG) and ``rows`` to the CSV beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    write_csv(rows, path.with_suffix(".csv"))
    return path


def _sequential_colors(n: int) -> list:
    """Dark (early) to light (late), stopping before viridis' hard-to-see yellow."""
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, max(n, 1))][:n]


def _qualitative_colors(n: int = 10) -> Iterator:
    """One distinct colour for each of ``n`` lines: tab10's up to ten, tab20's up to twenty (a
    leaderboard's 19 methods), repeating after that."""
    return itertools.cycle(colormaps["tab10" if n <= 10 else "tab20"].colors)


def _legend_place(n: int) -> dict[str, Any]:
    """Legend placement for ``n`` entries: beside the axes past eight, where it would cover the curves."""
    return {"loc": "center left", "bbox_to_anchor": (1.0, 0.5)} if n > 8 else {}


def _grid(n: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, list]:
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _epoch_axis(ax, epochs: Sequence[float]) -> None:
    """Whole epochs on the x axis. A locator alone ticks fractions over a span of under two
    epochs (a one-epoch run), so such a span is widened to one epoch on either side."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) and max(epochs) - min(epochs) < 2:
        ax.set_xlim(min(epochs) - 1, max(epochs) + 1)


def _points(n: int, hollow: bool = False) -> dict[str, Any]:
    """The style that keeps a one-point series visible (a line through one point draws
    nothing): a marker, hollow for a dashed (training) series."""
    if n != 1:
        return {}
    return {"marker": "o", "ms": 5, **({"mfc": "none"} if hollow else {})}


def _spread(n: int, limit: int) -> list[int]:
    """All of ``range(n)``, or ``limit`` evenly spaced indices including the first and last."""
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)).tolist()


def plot_landscape_1d(curves: Mapping[str, np.ndarray], alphas: Sequence[float],
                      path: str | Path) -> Path:
    """One line per checkpoint (label → losses [directions, len(alphas)]); the first direction
    drawn solid, the others thin, in the same colour (AWP Fig. 5's repeatability check)."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    rows = []
    for (label, losses), color in zip(curves.items(), _sequential_colors(len(curves))):
        for k, loss in enumerate(np.atleast_2d(losses)):
            first = k == 0
            ax.plot(alphas, loss, color=color, lw=1.8 if first else 0.8, alpha=1.0 if first else 0.6,
                    label=label if first else None)
            rows += [{"label": label, "direction": k, "alpha": a, "loss": v}
                     for a, v in zip(alphas, loss)]
    n_dirs = max(np.atleast_2d(v).shape[0] for v in curves.values())
    ax.set_xlabel("α (along a filter-normalized random direction d)")
    ax.set_ylabel("adversarial loss ρ(w + αd)")
    ax.set_title(f"Weight loss landscape ({n_dirs} direction{'s' if n_dirs > 1 else ''})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path, rows)


def plot_landscape_2d(surfaces: Mapping[str, np.ndarray], alphas: Sequence[float],
                      betas: Sequence[float], path: str | Path) -> Path:
    """One contour panel per checkpoint (label → |g(α, β) − g(0, 0)|, shape [len(alphas),
    len(betas)]) on one colour scale, so flatness compares across panels."""
    fig, axes = _grid(len(surfaces), 3, (4.2, 3.6))
    top = max(float(np.nanmax(s)) for s in surfaces.values())
    levels = MaxNLocator(nbins=12).tick_values(0.0, top if top > 0 else 1.0)  # round numbers
    rows = []
    for ax, (label, relative) in zip(axes, surfaces.items()):
        filled = ax.contourf(betas, alphas, relative, levels=levels, cmap="viridis")
        ax.contour(betas, alphas, relative, levels=levels[::3], colors="white", linewidths=0.5)
        ax.plot(0, 0, "r+", ms=10)
        ax.set_title(label)
        ax.set_xlabel("β (direction e)")
        ax.set_ylabel("α (direction d)")
        rows += [{"label": label, "alpha": a, "beta": b, "relative_loss": relative[i, j]}
                 for i, a in enumerate(alphas) for j, b in enumerate(betas)]
    fig.colorbar(filled, ax=axes, label="|g(α, β) − g(0, 0)|  (adversarial loss)")
    fig.suptitle("Relative weight loss landscape")
    return _save(fig, path, rows)


def plot_lsc(table: LSCTable, path: str | Path) -> Path:
    """Left: share of each epoch's training adversarial examples per LSC bin (heatmap); right:
    fraction with loss below c_min through training."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    heat, line = fig.subplots(1, 2, width_ratios=[1.4, 1])
    totals = table.counts.sum(axis=1, keepdims=True)
    shares = table.counts / np.where(totals > 0, totals, 1)
    image = heat.imshow(shares, aspect="auto", origin="lower", cmap="magma", vmin=0,
                        interpolation="nearest")
    labels = table.bin_labels()
    heat.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize="small")
    ticks = _spread(len(table.epochs), 10)
    heat.set_yticks(ticks, [str(table.epochs[i]) for i in ticks])
    # c_min in bin coordinates (bin k spans k-0.5 .. k+0.5); the last edge is inf
    finite = [e for e in table.edges if math.isfinite(e)]
    if finite[0] <= table.c_min <= finite[-1]:
        heat.axvline(np.interp(table.c_min, finite, np.arange(len(finite))) - 0.5, color="cyan",
                     ls="--", label=f"c_min = {table.c_min:g}")
        heat.legend(loc="upper right", fontsize="small")
    heat.set_xlabel("adversarial loss bin (nats)")
    heat.set_ylabel("epoch")
    heat.set_title(f"LSC groups of training adversarial examples ({table.source})")
    fig.colorbar(image, ax=heat, label="fraction of the epoch's examples")
    line.plot(table.epochs, table.frac_below, "o-", ms=3)
    line.set_ylim(0, 1)
    _epoch_axis(line, table.epochs)
    line.set_ylabel(f"fraction with loss < c_min = {table.c_min:g}")
    line.set_title("Examples below c_min")
    line.grid(alpha=0.3)
    return _save(fig, path, table.rows())


def plot_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Learning curves of several runs (label → metrics.jsonl records): robust accuracy (train
    dashed, test solid, ★ at the best test epoch), robust gap, natural accuracy."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    robust, gap, natural = fig.subplots(1, 3)
    rows, shown = [], []
    for (label, history), color in zip(histories.items(), _qualitative_colors()):
        table = curve_rows(history)
        rows += [{"run": label, **r} for r in table]
        epochs = [r["epoch"] for r in table]
        col = {k: np.array([100 * r[k] for r in table]) for k in CURVE_KEYS}
        points = _points(len(epochs))
        robust.plot(epochs, col["test_pgd_acc"], color=color, label=label, **points)
        robust.plot(epochs, col["train_pgd_acc"], color=color, ls="--", **_points(len(epochs), hollow=True))
        if epochs:
            best = int(np.nanargmax(col["test_pgd_acc"]))
            robust.plot(epochs[best], col["test_pgd_acc"][best], "*", color=color, ms=12)
        gap.plot(epochs, col["robust_gap"], color=color, label=label, **points)
        natural.plot(epochs, col["test_nat_acc"], color=color, label=label, **points)
        natural.plot(epochs, col["train_nat_acc"], color=color, ls="--", **_points(len(epochs), hollow=True))
        shown += epochs
    one = len(set(shown)) == 1
    styles = [Line2D([], [], color="gray", ls="-", label="test", **_points(int(one))),
              Line2D([], [], color="gray", ls="--", label="train", **_points(int(one), hollow=True)),
              Line2D([], [], color="gray", ls="", marker="*", ms=10, label="best test")]
    for ax, title in ((robust, "Robust accuracy (PGD)"), (gap, "Robust generalization gap"),
                      (natural, "Natural accuracy")):
        ax.set_title(title)
        _epoch_axis(ax, shown)
        ax.set_ylabel("train − test robust accuracy (%)" if ax is gap else "accuracy (%)")
        ax.grid(alpha=0.3)
    robust.legend(handles=robust.get_legend_handles_labels()[0] + styles, fontsize="small")
    gap.legend(fontsize="small")
    return _save(fig, path, rows)


def plot_weight_histograms(weights: Mapping[str, Mapping[str, Tensor]], path: str | Path, *,
                           bins: int = 80, max_panels: int = MAX_PANELS) -> Path:
    """One panel per layer (run label → {layer name → weight}), runs overlaid on shared bins,
    log-scale counts. Layers are those of the first run present in every run."""
    first, *others = weights.values()
    names = [n for n in first if all(n in w for w in others)]
    if not names:
        raise WpatError(f"the runs {', '.join(weights)} share no layer to compare")
    layers = [names[i] for i in _spread(len(names), max_panels)]
    fig, axes = _grid(len(layers), 4, (3.6, 2.8))
    rows = []
    for ax, layer in zip(axes, layers):
        values = {label: w[layer].detach().flatten().double().cpu().numpy() for label, w in weights.items()}
        edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=bins)
        for (label, v), color in zip(values.items(), _qualitative_colors()):
            counts, _ = np.histogram(v, bins=edges)
            ax.stairs(counts, edges, color=color, label=label)
            rows += [{"layer": layer, "run": label, "bin_low": lo, "bin_high": hi, "count": int(c)}
                     for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
        ax.set_yscale("log")
        ax.set_title(layer, fontsize="small")
        ax.set_xlabel("weight value", fontsize="small")
        ax.set_ylabel("count", fontsize="small")
        ax.tick_params(which="both", labelsize="x-small")
    axes[0].legend(fontsize="x-small")
    shown = f"{len(layers)} of {len(names)}" if len(layers) < len(names) else f"{len(names)}"
    fig.suptitle(f"Weight distributions ({shown} layers, log-scale counts)")
    return _save(fig, path, rows)


def _band(ax, x: np.ndarray, mean: np.ndarray, std: np.ndarray, hollow: bool = False, **style: Any) -> None:
    """``mean`` drawn as a line, ± ``std`` as a light band (none where std is NaN); a single
    point as a marker with an error bar, where a band would have no width."""
    keep = ~np.isnan(mean)
    ax.plot(x[keep], mean[keep], **style, **_points(int(keep.sum()), hollow))
    spread = np.nan_to_num(std[keep])
    if keep.sum() == 1:
        ax.errorbar(x[keep], mean[keep], yerr=spread, fmt="none", color=style.get("color"), capsize=3)
        return
    ax.fill_between(x[keep], mean[keep] - spread, mean[keep] + spread, color=style.get("color"),
                    alpha=0.15, lw=0)


def plot_group_curves(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Learning curves of method groups, mean ± std over seeds (rows of
    :func:`wpat.analysis.report.group_curves`): robust accuracy (test solid, train dashed),
    natural accuracy, and the fraction of training adversarial examples below c_min."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    robust, natural, below = fig.subplots(1, 3)
    series = list(dict.fromkeys((r["method"], r["column"]) for r in rows))
    epochs = [r["epoch"] for r in rows]
    columns = {column for _, column in series}
    for (method, column), color in zip(series, _qualitative_colors(len(series))):
        mine = [r for r in rows if (r["method"], r["column"]) == (method, column)]
        label = method if len(columns) == 1 else f"{method} [{column}]"
        label += f" (n={mine[0]['n']})"
        epoch = np.array([r["epoch"] for r in mine], dtype=float)

        def col(key: str, scale: float = 100.0) -> np.ndarray:
            return scale * np.array([r[key] for r in mine], dtype=float)

        for ax, prefix in ((robust, "pgd"), (natural, "nat")):
            _band(ax, epoch, col(f"test_{prefix}_acc_mean"), col(f"test_{prefix}_acc_std"),
                  color=color, label=label)
            _band(ax, epoch, col(f"train_{prefix}_acc_mean"), col(f"train_{prefix}_acc_std"),
                  color=color, ls="--", hollow=True)
        _band(below, epoch, col("lsc_frac_below_mean", 1.0), col("lsc_frac_below_std", 1.0),
              color=color, label=label)
    one = int(len(set(epochs)) == 1)
    styles = [Line2D([], [], color="gray", ls="-", label="test", **_points(one)),
              Line2D([], [], color="gray", ls="--", label="train", **_points(one, hollow=True))]
    for ax, title, ylabel in ((robust, "Robust accuracy (PGD)", "accuracy (%)"),
                              (natural, "Natural accuracy", "accuracy (%)"),
                              (below, "Training adversarial examples below c_min", "fraction")):
        ax.set_title(title)
        _epoch_axis(ax, epochs)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    below.set_ylim(0, 1)
    robust.legend(handles=robust.get_legend_handles_labels()[0] + styles, fontsize="small")
    below.legend(fontsize="small")
    fig.suptitle("Mean ± sample std over seeds")
    return _save(fig, path, rows)


def plot_ablation(rows: Sequence[dict[str, Any]], key: str, path: str | Path) -> Path:
    """Robust accuracy (%) against ``key``'s value, best (solid) and last (dashed) per series,
    mean ± std error bars; a log axis when the values span 20× or more. CSV beside."""
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
    return _save(fig, path, rows)


def plot_method_curves(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The leaderboard's first figure: test robust accuracy per epoch of each method, mean ±
    std over its seeds as a band (rows of :func:`wpat.analysis.report.group_curves`), one
    panel per dataset and threat model. The CSV beside keeps the plotted series only."""
    columns = list(dict.fromkeys(r["column"] for r in rows))
    fig, axes = _grid(len(columns), 2, (7.5, 4.8))
    kept = [{k: r[k] for k in ("method", "column", "epoch", "n", "test_pgd_acc_mean", "test_pgd_acc_std")}
            for r in rows]
    for ax, column in zip(axes, columns):
        mine = [r for r in kept if r["column"] == column]
        methods = list(dict.fromkeys(r["method"] for r in mine))
        for method, color in zip(methods, _qualitative_colors(len(methods))):
            series = [r for r in mine if r["method"] == method]
            epoch = np.array([r["epoch"] for r in series], dtype=float)
            mean = 100 * np.array([r["test_pgd_acc_mean"] for r in series], dtype=float)
            std = 100 * np.array([r["test_pgd_acc_std"] for r in series], dtype=float)
            _band(ax, epoch, mean, std, color=color, label=f"{method} (n={series[0]['n']})")
        ax.set_title(column)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test robust accuracy (%)")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small", **_legend_place(len(methods)))
    fig.suptitle("Test robust accuracy per epoch (PGD), mean ± sample std over seeds")
    return _save(fig, path, kept)


def plot_cost(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The leaderboard's second figure: robust accuracy against training cost, per method
    (rows of :func:`wpat.analysis.leaderboard.leaderboard`): forward-backward passes per step
    relative to AT (left) and training wall time (right); last (filled) and best (hollow)
    test PGD accuracy, and AutoAttack at last (triangle) where measured, mean ± std bars."""
    fig = Figure(figsize=(13, 5), layout="constrained")
    by_passes, by_time = fig.subplots(1, 2)
    columns = list(dict.fromkeys(r["column"] for r in rows))
    kept = []
    for r, color in zip(rows, _qualitative_colors(len(rows))):
        label = r["method"] if len(columns) == 1 else f"{r['method']} [{r['column']}]"
        kept.append({k: r[k] for k in ("method", "column", "cost_mean", "minutes_mean", "minutes_std",
                                       "pgd_best_mean", "pgd_best_std", "pgd_last_mean", "pgd_last_std",
                                       "aa_last_mean", "aa_last_std")})
        for ax, x, xerr in ((by_passes, r["cost_mean"], None), (by_time, r["minutes_mean"], r["minutes_std"])):
            if math.isnan(x):
                continue
            xerr = None if xerr is None or math.isnan(xerr) else xerr
            for key, marker, fill in (("pgd_last", "o", None), ("pgd_best", "o", "none"), ("aa_last", "^", None)):
                y, std = 100 * r[f"{key}_mean"], 100 * r[f"{key}_std"]
                if math.isnan(y):
                    continue
                ax.errorbar(x, y, yerr=None if math.isnan(std) else std, xerr=xerr if key == "pgd_last" else None,
                            fmt=marker, mfc=fill,
                            color=color, capsize=3, label=label if key == "pgd_last" else None)
            ax.annotate(r["method"], (x, 100 * r["pgd_last_mean"]), textcoords="offset points",
                        xytext=(5, -10), fontsize="x-small", color=color)
    styles = [Line2D([], [], color="gray", ls="", marker="o", label="PGD last"),
              Line2D([], [], color="gray", ls="", marker="o", mfc="none", label="PGD best"),
              Line2D([], [], color="gray", ls="", marker="^", label="AA last")]
    for ax, xlabel in ((by_passes, "forward-backward passes per step, relative to AT"),
                       (by_time, "training wall time (min)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test robust accuracy (%)")
        ax.grid(alpha=0.3)
    by_time.legend(handles=by_passes.get_legend_handles_labels()[0] + styles, fontsize="small",
                   **_legend_place(len(rows)))
    fig.suptitle("Robustness against training cost, mean ± sample std over seeds")
    return _save(fig, path, kept)
