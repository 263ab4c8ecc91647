"""``wpat plot RUN_DIR...``: learning curves of one or several runs on one figure
(AT vs AWP vs RWP, as AWP Fig. 1a and RWP Fig. 2c) and, with ``--weights``, per-layer weight
histograms of their ``--checkpoint`` (best or last; AWP Fig. 4).

Legends use ``--labels`` (one per run) or the runs' methods (``AT``, ``AT-AWP``, ...; the
directory names when two runs share a method). Writes ``curves.png``/``curves.csv`` and
``weights.png``/``weights.csv`` into ``--out`` (default: the current directory).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wpat.analysis import (layer_weights, load_model, plot_curves, plot_weight_histograms,
                           read_history, run_label)
from wpat.analysis.curves import run_dir
from wpat.errors import WpatError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `wpat train`")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per run (default: the methods)")
    parser.add_argument("--out", default=".", help="output directory (default: the current directory)")
    parser.add_argument("--weights", action="store_true", help="also plot per-layer weight histograms")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="the checkpoint whose weights --weights shows (default best)")


def labels_for(paths: list[Path], labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(paths):
            raise WpatError(f"--labels: {len(labels)} labels for {len(paths)} runs")
        return labels
    methods = [run_label(p) for p in paths]
    return methods if len(set(methods)) == len(methods) else [p.name for p in paths]


def run(args: argparse.Namespace) -> int:
    paths = [run_dir(p) for p in args.run_dirs]
    labels = labels_for(paths, args.labels)
    out = Path(args.out)
    written = [plot_curves({label: read_history(p) for label, p in zip(labels, paths)}, out / "curves.png")]
    if args.weights:
        weights = {label: layer_weights(load_model(p / f"{args.checkpoint}.pt")[0]) for label, p in zip(labels, paths)}
        written.append(plot_weight_histograms(weights, out / "weights.png"))
    print("wrote " + ", ".join(f"{p} (+ {p.with_suffix('.csv').name})" for p in written))
    return 0
