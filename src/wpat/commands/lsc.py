"""``wpat lsc RUN_DIR``: LSC groups of the training adversarial losses through training
(RWP §3, eq. 7, Fig. 1c; see :mod:`wpat.analysis.lsc`).

By default the histogram per epoch and the fraction below the threshold ``run.lsc_threshold``
(by default RWP's ``c_min`` where RWP trains, else 1.7; the training log counts it the same way)
come from the run's ``metrics.jsonl``.
``--recompute`` measures them instead at each checkpoint of the run (``epoch-NNN.pt``,
``best.pt``, ``last.pt``) on ``--n-examples`` (default 1000) training examples with the
training attack's PGD on CE, eval-mode BN (for runs whose log lacks them).
Writes ``lsc.png`` and ``lsc.csv`` into ``--out`` (default: the run directory) and prints where.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wpat.helpers.errors import WpatError

if TYPE_CHECKING:
    from wpat.analysis import LSCTable


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of `wpat train`")
    parser.add_argument("--recompute", action="store_true",
                        help="measure the losses at the run's checkpoints, not from the log")
    parser.add_argument("--n-examples", type=int, default=1000,
                        help="training examples with --recompute (default 1000)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the subset and PGD with --recompute (default 0)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's run.device)")
    parser.add_argument("--out", help="output directory (default: the run directory)")


def recompute(path: Path, n_examples: int, seed: int, device_name: str | None) -> LSCTable:
    """The LSC table measured at every checkpoint of the run in ``path``."""
    from wpat.training import experiment
    from wpat.analysis import (adversarial_losses, analysis_attack, examples, list_checkpoints,
                               lsc_from_losses)
    from wpat.training.loading import model_from_checkpoint
    from wpat.training.experiment import lsc_threshold

    refs = list_checkpoints([path])
    _, cfg, _ = model_from_checkpoint(refs[0].path)  # one subset and attack for all checkpoints
    c_min = lsc_threshold(cfg)  # the training log's c_min
    x, y = examples(cfg, "train", n_examples, seed)
    attack = analysis_attack(cfg)
    device = experiment.resolve_device(device_name or cfg.run.device)
    losses = {}
    for ref in refs:
        model = model_from_checkpoint(ref.path)[0].to(device)
        loss = adversarial_losses(model, x, y, attack, batch_size=cfg.eval.batch_size, seed=seed)[0]
        losses[ref.epoch] = loss.cpu()
        print(f"{ref.label}: {(loss < c_min).float().mean().item():.3f} below c_min")
    return lsc_from_losses(losses, c_min)


def run(args: argparse.Namespace) -> int:
    from wpat.analysis import lsc_table, plot_lsc
    from wpat.training.experiment import lsc_threshold
    from wpat.checkpoints.run_dir import RunDir

    run_dir = RunDir.at(args.run_dir)
    path = run_dir.path
    if args.n_examples < 1:
        raise WpatError("--n-examples must be an integer >= 1")
    if args.recompute:
        table = recompute(path, args.n_examples, args.seed, args.device)
    else:
        table = lsc_table(run_dir.history(), lsc_threshold(run_dir.config()))
    png = plot_lsc(table, Path(args.out or path) / "lsc.png")
    print(f"wrote {png} and {png.with_suffix('.csv').name} "
          f"({len(table.epochs)} epochs, {table.source})")
    return 0
