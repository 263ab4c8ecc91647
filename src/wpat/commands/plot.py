"""``wpat plot RUN_DIR...``: learning curves of one or several runs on one figure
(AT vs AWP vs RWP, as AWP Fig. 1a and RWP Fig. 2c) and, with ``--weights``, per-layer weight
histograms of their ``--checkpoint`` (best or last; AWP Fig. 4).

Legends use ``--labels`` (one per run) or the runs' methods (``AT``, ``AT-AWP``, ...; the
directory names when two runs share a method). Writes ``curves.png``/``curves.csv`` and
``weights.png``/``weights.csv`` into ``--out`` (default: the first run directory) and prints
where.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wpat.helpers.errors import WpatError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per run (default: methods)")
    parser.add_argument("--out", help="output directory (default: the first run directory)")
    parser.add_argument("--weights", action="store_true",
                        help="also plot per-layer weight histograms")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="the checkpoint whose weights --weights shows (default best)")


def labels_for(paths: list[Path], labels: list[str] | None) -> list[str]:
    """``--labels``, else the runs' methods, else (if two share one) their directory names."""
    from wpat.analysis import run_label

    if labels is not None:
        if len(labels) != len(paths) or len(set(labels)) < len(labels):
            raise WpatError(f"--labels: expected {len(paths)} distinct labels, one per run, "
                            f"got {len(labels)}")
        return labels
    for candidate in ([run_label(p) for p in paths], [p.name for p in paths]):
        if len(set(candidate)) == len(candidate):
            return candidate
    return [str(p) for p in paths]


def run(args: argparse.Namespace) -> int:
    # matplotlib and torch: imported only when plotting
    from wpat.analysis import layer_weights, plot_curves, plot_weight_histograms
    from wpat.training.loading import model_from_checkpoint
    from wpat.checkpoints.run_dir import RunDir, find_checkpoint

    paths = [RunDir.at(p).path for p in args.run_dirs]
    labels = labels_for(paths, args.labels)
    out = Path(args.out) if args.out is not None else paths[0]
    runs = dict(zip(labels, paths))
    # Every input is read before anything is written: a bad checkpoint leaves the figures as they were.
    histories = {label: RunDir(p).history() for label, p in runs.items()}
    weights = ({label: layer_weights(model_from_checkpoint(find_checkpoint(p, args.checkpoint))[0])
                for label, p in runs.items()} if args.weights else None)
    written = [plot_curves(histories, out / "curves.png")]
    if weights is not None:
        written.append(plot_weight_histograms(weights, out / "weights.png"))
    print("wrote " + ", ".join(f"{p} (+ {p.with_suffix('.csv').name})" for p in written))
    return 0
