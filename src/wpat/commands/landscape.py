"""``wpat landscape RUN_DIR|CKPT...``: weight loss landscapes (AWP §3, Appendix B, Algorithm 1).

For each checkpoint, the adversarial loss along filter-normalized random directions, with PGD
examples crafted against every perturbed model (see :mod:`wpat.analysis.landscape`). Every
checkpoint gets the same directions (same ``--seed``) normalized by its own weights, so epochs
overlay on one plot. The data, the threat model (ε, step size) and the examples come from the
first checkpoint's config, so all checkpoints are measured alike.

Options: ``--dim 1`` (default) plots g(α) for ``--directions`` directions (default 1; the paper
repeats 10); ``--dim 2`` the relative landscape |g(α, β) − g(0, 0)| on the grid alphas²
``--alphas=START:STOP:NUM`` (default -1:1:21; the ``=`` lets a negative start through) or a
comma list. ``--n-examples`` (default 1000) of the ``--split`` (default train, as Algorithm 1);
``--pgd-steps`` K1 (default: the training attack's steps; ε and the step size η1 are the
training attack's too). Writes ``landscape.png``, ``.csv`` and ``.json`` (``landscape-2d.*`` for
``--dim 2``) into ``--out`` (default: the first checkpoint's run directory).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wpat.helpers.errors import WpatError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from wpat.attacks import PGD


def parse_epochs(text: str | None) -> list[int] | None:
    """``"10,20,40"`` -> [10, 20, 40]."""
    if text is None:
        return None
    try:
        return [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise WpatError(f"--epochs {text!r}: expected epochs like 10,20,40") from None


def parse_alphas(text: str) -> list[float]:
    """``"-1:1:21"`` (start:stop:points, both ends included) or ``"-1,-0.5,0,0.5,1"``."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            first, last, n = float(start), float(stop), int(num)
            if n < 2:
                raise ValueError
            # both ends included; rounded so that the grid's middle point is exactly α = 0
            return [round(first + (last - first) * i / (n - 1), 10) for i in range(n)]
        return [float(a) for a in text.split(",")]
    except ValueError:
        raise WpatError(f"--alphas {text!r}: expected START:STOP:NUM with NUM >= 2 (e.g. -1:1:21) "
                        f"or comma-separated values") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR|CKPT",
                        help="a run directory (epoch-NNN.pt, best.pt, last.pt) or checkpoint files")
    parser.add_argument("--epochs", help="only these epochs, e.g. 10,20,40")
    parser.add_argument("--dim", type=int, choices=(1, 2), default=1,
                        help="1-D curves or the 2-D relative landscape (default 1)")
    parser.add_argument("--directions", type=int, default=1,
                        help="random directions per checkpoint, 1-D only (default 1)")
    parser.add_argument("--alphas", default="-1:1:21",
                        help="coordinates along each direction: START:STOP:NUM or a comma list; "
                             "write --alphas=-2:2:41 when START is negative (default -1:1:21)")
    parser.add_argument("--n-examples", type=int, default=1000,
                        help="examples for ρ (default 1000)")
    parser.add_argument("--split", choices=("train", "test"), default="train",
                        help="data split (default train, as Algorithm 1)")
    parser.add_argument("--pgd-steps", type=int,
                        help="PGD steps K1 (default: the run's attack.steps)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the directions, the example subset and PGD (default 0)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's run.device)")
    parser.add_argument("--out", help="output directory (default: the first checkpoint's)")


def check(args: argparse.Namespace) -> None:
    if args.directions < 1 or (args.dim == 2 and args.directions != 1):
        raise WpatError("--directions: expected an integer >= 1, and 1 with --dim 2 "
                        "(the 2-D grid uses two directions)")
    if args.n_examples < 1 or (args.pgd_steps is not None and args.pgd_steps < 1):
        raise WpatError("--n-examples and --pgd-steps must be integers >= 1")


def measure(model: nn.Module, x: Tensor, y: Tensor, attack: PGD, alphas: list[float],
            args: argparse.Namespace, batch_size: int) -> dict[str, Any]:
    """ρ(w) and the landscape of one checkpoint along the seed's directions."""
    import numpy as np
    import torch

    from wpat.analysis import (adversarial_losses, filter_normalized_direction, landscape_1d,
                               landscape_2d)

    generator = torch.Generator().manual_seed(args.seed)  # the same directions for every checkpoint
    directions = [filter_normalized_direction(model, generator)
                  for _ in range(max(args.directions, args.dim))]
    options = {"batch_size": batch_size, "seed": args.seed}
    center = adversarial_losses(model, x, y, attack, **options)[0].mean().item()
    if args.dim == 1:
        loss, acc = zip(*(landscape_1d(model, x, y, attack, d, alphas, **options)
                          for d in directions))
    else:
        loss, acc = landscape_2d(model, x, y, attack, *directions, alphas, alphas, **options)
    return {"center_loss": center, "loss": np.array(loss).tolist(),
            "adv_acc": np.array(acc).tolist()}


def plot(records: list[dict[str, Any]], alphas: list[float], dim: int, path: Path) -> Path:
    import numpy as np

    from wpat.analysis import plot_landscape_1d, plot_landscape_2d

    if dim == 1:
        return plot_landscape_1d({r["label"]: np.array(r["loss"]) for r in records}, alphas, path)
    relative = {r["label"]: np.abs(np.array(r["loss"]) - r["center_loss"]) for r in records}
    return plot_landscape_2d(relative, alphas, alphas, path)


def run(args: argparse.Namespace) -> int:
    # torch and matplotlib: imported only when measuring
    from wpat.training import experiment
    from wpat.analysis import analysis_attack, examples, list_checkpoints
    from wpat.training.loading import model_from_checkpoint

    check(args)
    alphas = parse_alphas(args.alphas)
    refs = list_checkpoints(args.paths, parse_epochs(args.epochs))
    _, cfg, _ = model_from_checkpoint(refs[0].path)  # its data and attack serve every checkpoint
    device = experiment.resolve_device(args.device or cfg.run.device)
    x, y = examples(cfg, args.split, args.n_examples, args.seed)
    attack = analysis_attack(cfg, args.pgd_steps)
    n_points = len(alphas) ** args.dim * args.directions
    print(f"{len(refs)} checkpoint(s) x {n_points} points, {len(x)} {args.split} examples, "
          f"PGD-{attack.steps} eps={attack.eps:.4g} on {device}")

    records, started = [], time.perf_counter()
    for ref in refs:
        model, ref_cfg, _ = model_from_checkpoint(ref.path)
        model.to(device)
        if ref_cfg.data.name != cfg.data.name:
            raise WpatError(f"{ref.path}: trained on {ref_cfg.data.name}, not {cfg.data.name} "
                            f"like {refs[0].path}")
        t0 = time.perf_counter()
        record = {"label": ref.label, "path": str(ref.path), "epoch": ref.epoch,
                  **measure(model, x, y, attack, alphas, args, cfg.eval.batch_size)}
        record["seconds"] = round(time.perf_counter() - t0, 2)
        records.append(record)
        print(f"{ref.label}: rho(w) = {record['center_loss']:.4f}, "
              f"{n_points} points in {record['seconds']:.1f} s")

    out = Path(args.out) if args.out else refs[0].path.parent
    name = "landscape" if args.dim == 1 else "landscape-2d"
    png = plot(records, alphas, args.dim, out / f"{name}.png")
    meta = {"dim": args.dim, "alphas": alphas, "directions": args.directions, "seed": args.seed,
            "split": args.split, "n_examples": len(x), "device": str(device),
            "attack": {"norm": str(cfg.attack.norm), "eps": attack.eps, "alpha": attack.alpha,
                       "steps": attack.steps},
            "seconds": round(time.perf_counter() - started, 2), "checkpoints": records}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {png}, {png.with_suffix('.csv').name}, {name}.json")
    return 0
