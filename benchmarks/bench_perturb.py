"""Per-step cost of AT-AWP and AT-RWP relative to plain AT, measured in one run.

    python benchmarks/bench_perturb.py [--batch 128] [--width 16] [--steps 15]

One training step = PGD-10 (train-mode BN, as the authors' AT) + the weight perturbation's
search + forward/backward/SGD step at w + v. Configurations:

- AT            plain adversarial training (no perturbation)
- AT+AWP        AWP(γ=0.01), one ascent step
- AT+RWP all    RWP(γ=0.01, c_min=inf): every example below c_min, all 10 steps run
- AT+RWP none   RWP(γ=0.01, c_min=0): no example below; the search reads the training loop's
                forward at w, exits, and the step trains on that same forward
- the AWP paper's Fig. 2a/2b ablations: AWP with K2 ∈ {5, 10} ascent steps at A = 1; A ∈ {2, 3}
  alternations of x' and v at K2 = 1 (each alternation adds one PGD-10 and one ascent step);
  AWP with the L1 size norm

The configurations take turns one step at a time, so drifts of a shared machine hit all of them
alike. Steps are timed in process CPU time (one thread by default), and the ratios use each
configuration's fastest step: other processes can only slow a step down (shared caches and
cores), so the minimum is the least disturbed estimate of its cost (as ``timeit`` advises). The
median ratios are reported too.
Writes the table to docs/benchmarks/perturb.md. Random inputs: the cost does not depend on the
pixel values, and the RWP cases pin the selection with c_min.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from wpat.attacks import PGD
from wpat.models import build_model
from wpat.objectives import OBJECTIVES, Batch
from wpat.perturb import AWP, RWP, WeightPerturbation
from wpat.training.step import train_step

OBJECTIVE = OBJECTIVES.build("at")  # CE on x_adv

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "perturb.md"

# name -> (the perturbation, alternations A)
CONFIGS: dict[str, tuple[Callable[[], WeightPerturbation | None], int]] = {
    "AT": (lambda: None, 1),
    "AT+AWP": (lambda: AWP(gamma=0.01), 1),
    "AT+RWP all below (c_min=inf)": (lambda: RWP(gamma=0.01, c_min=float("inf"), steps=10), 1),
    "AT+RWP none below (c_min=0)": (lambda: RWP(gamma=0.01, c_min=0.0, steps=10), 1),
    "AT+AWP K2=5 (Fig. 2a)": (lambda: AWP(gamma=0.01, steps=5), 1),
    "AT+AWP K2=10 (Fig. 2a)": (lambda: AWP(gamma=0.01, steps=10), 1),
    "AT+AWP A=2 (Fig. 2a)": (lambda: AWP(gamma=0.01), 2),
    "AT+AWP A=3 (Fig. 2a)": (lambda: AWP(gamma=0.01), 3),
    "AT+AWP L1 size (Fig. 2b)": (lambda: AWP(gamma=0.01, norm="l1"), 1),
}


def cpu_ms() -> float:
    return time.process_time() * 1e3


def timed_step(model: nn.Module, optimizer: torch.optim.Optimizer, attack: PGD,
               perturbation: WeightPerturbation | None, x: torch.Tensor, y: torch.Tensor,
               alternations: int = 1) -> float:
    """One AT(-AWP/-RWP) step of wpat's training loop; returns its CPU ms."""
    start = cpu_ms()
    train_step(model, Batch(x, y), attack, OBJECTIVE, perturbation, optimizer, alternations)
    return cpu_ms() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="small_cnn width")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.286,),
                        std=(0.353,), width=args.width).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    attack = PGD(0.1, 0.02, 10, bn_mode="train")
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))

    perturbations = {name: (make(), a) for name, (make, a) in CONFIGS.items()}
    for p, a in perturbations.values():  # warm-up: allocator, first-call overheads
        timed_step(model, optimizer, attack, p, x, y, a)
    total: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.steps):
        for name, (p, a) in perturbations.items():
            total[name].append(timed_step(model, optimizer, attack, p, x, y, a))

    fastest = {name: min(t) for name, t in total.items()}
    median = {name: statistics.median(t) for name, t in total.items()}
    rows = [f"| {name} | {fastest[name]:.1f} | {median[name]:.1f} | "
            f"{fastest[name] / fastest['AT']:.3f}× | {median[name] / median['AT']:.3f}× |"
            for name in CONFIGS]
    table = "\n".join([
        "| configuration | ms/step fastest | ms/step median | vs AT (fastest) | vs AT (median) |",
        "|---|---:|---:|---:|---:|", *rows])

    params = sum(p.numel() for p in model.parameters())
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[1]  # 5-minute load: how much the machine was shared meanwhile
    command = "python benchmarks/bench_perturb.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    report = (
        "# Weight-perturbation overhead\n\n"
        f"Command: `{command.strip()}`\n\n"
        f"small_cnn (width {args.width}, {params:,} parameters), 1×28×28 inputs, batch "
        f"{args.batch}, PGD-10 (L∞, train-mode BN), SGD; CPU `{cpu}`, {args.threads} "
        f"thread(s), {os.cpu_count()} cores, load average {load:.1f} at the end, torch "
        f"{torch.__version__}. {args.steps} interleaved steps per configuration, in process "
        "CPU time.\n\n"
        f"{table}\n\n"
        "*vs AT*: ratios of the fastest and of the median whole steps of wpat's training loop "
        "(`wpat.training.step.train_step`).\n\n"
        "Targets: AWP ≤ 1.15×; RWP ≤ 2.4× with every example below c_min (10 extra "
        "forward+backward passes), ≤ 1.05× with none. The training loop's own forward at w is "
        "the search's first step, and when RWP selects no example it is also the forward the "
        "weights are trained on, so that case costs one comparison and no extra pass. "
        "Fig. 2a: each extra alternation (A) should add about one PGD-10 plus one ascent step "
        "(≈ 1 AT step), each extra ascent step (K2) about one forward+backward (≈ 1/11 of an AT "
        "step); the L1 size norm should cost what the L2 one costs.\n"
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
