"""``wpat sensitivity RUN_DIR|CKPT``: adversarial loss of a trained model under AWP and random
weight perturbations over a grid of γ (AWP §5.3, Fig. 3a; see :mod:`wpat.analysis.gamma`).

The checkpoint (``--checkpoint best`` or ``last`` of a run directory, or a file) is perturbed by
AWP (computed on the PGD examples of the unperturbed model) and by ``--directions`` seeded random
directions of the same relative size γ (``--gammas``, default 0 and 1e-4 ... 2 on a 1-2-5 grid);
at each point the adversarial loss is measured with PGD crafted against the perturbed model in the
run's training threat model (CE, ε and step size of the training attack, ``--pgd-steps``, default
the training attack's steps, eval-mode BN) on ``--n-examples`` (default 512) examples of
``--split`` (default train). Writes ``sensitivity.png``, ``.csv`` and ``.json`` into ``--out``
(default: the run directory) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from wpat.helpers.errors import WpatError


def parse_gammas(text: str | None) -> list[float]:
    """``"0,1e-3,0.01"`` -> sizes γ ≥ 0, finite, distinct; None -> the default grid."""
    from wpat.analysis.gamma import DEFAULT_GAMMAS

    if text is None:
        return list(DEFAULT_GAMMAS)
    try:
        gammas = [float(g) for g in text.split(",")]
    except ValueError:
        gammas = []
    if not gammas or not all(math.isfinite(g) and g >= 0 for g in gammas) or len(set(gammas)) < len(gammas):
        raise WpatError(f"--gammas {text!r}: expected distinct numbers >= 0, e.g. 0,1e-3,5e-3,0.1,1")
    return sorted(gammas)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="RUN_DIR|CKPT", help="a run directory or a checkpoint file")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint of a run directory (default best)")
    parser.add_argument("--gammas", help="relative sizes γ, comma-separated (default 0,1e-4,2e-4,...,1,2)")
    parser.add_argument("--directions", type=int, default=1, help="random directions averaged (default 1)")
    parser.add_argument("--n-examples", type=int, default=512, help="examples (default 512)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="data split (default train)")
    parser.add_argument("--pgd-steps", type=int, help="PGD steps (default: the run's attack.steps)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset, PGD and random directions")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's run.device)")
    parser.add_argument("--out", help="output directory (default: the run directory)")


def run(args: argparse.Namespace) -> int:
    # torch and matplotlib: imported only when measuring
    from wpat.training import experiment
    from wpat.analysis import analysis_attack, examples
    from wpat.analysis.gamma import gamma_sensitivity, plot_gamma_sensitivity
    from wpat.training.loading import model_from_checkpoint
    from wpat.checkpoints.run_dir import find_checkpoint
    from wpat.helpers.tables import markdown_table

    if args.directions < 1 or args.n_examples < 1 or (args.pgd_steps is not None and args.pgd_steps < 1):
        raise WpatError("--directions, --n-examples and --pgd-steps must be integers >= 1")
    gammas = parse_gammas(args.gammas)
    path = find_checkpoint(args.path, args.checkpoint)
    model, cfg, info = model_from_checkpoint(path)
    device = experiment.resolve_device(args.device or cfg.run.device)
    model.to(device)
    x, y = examples(cfg, args.split, args.n_examples, args.seed)
    attack = analysis_attack(cfg, args.pgd_steps)
    print(f"{path} (epoch {info['epoch']}): {len(gammas)} values of gamma, {len(x)} {args.split} examples, "
          f"PGD-{attack.steps} eps={attack.eps:.4g} on {device}")
    started = time.perf_counter()
    rows = gamma_sensitivity(model, x, y, attack, gammas, directions=args.directions,
                             batch_size=cfg.eval.batch_size, seed=args.seed)
    out = Path(args.out) if args.out else path.parent
    png = plot_gamma_sensitivity(rows, out / "sensitivity.png", title=f"{path.parent.name}/{path.name}")
    meta = {"checkpoint": str(path), "epoch": info["epoch"], "split": args.split, "n_examples": len(x),
            "directions": args.directions, "seed": args.seed, "device": str(device),
            "attack": {"norm": str(cfg.attack.norm), "eps": attack.eps, "alpha": attack.alpha,
                       "steps": attack.steps},
            "seconds": round(time.perf_counter() - started, 2),
            "rows": [{k: None if v != v else v for k, v in r.items()} for r in rows]}  # NaN -> null
    (out / "sensitivity.json").write_text(json.dumps(meta, indent=1))
    print(markdown_table(["gamma", "AWP loss", "random loss", "AWP adv acc", "random adv acc"],
                         [[f"{r['gamma']:g}", f"{r['awp_loss']:.4f}", f"{r['random_loss']:.4f}",
                           f"{100 * r['awp_acc']:.2f}", f"{100 * r['random_acc']:.2f}"] for r in rows]))
    print(f"wrote {png}, {png.with_suffix('.csv').name}, sensitivity.json")
    return 0
