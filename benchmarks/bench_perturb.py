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
- MLCAT: the loss scaling (objective ``mlcat-ls`` around AT, no perturbation) and the weight
  perturbation ``mlcat-wp`` (γ=0.01, 10 steps) with every example below its threshold (inf)
- AT+SAM, AT+ASAM: SAM(ρ=0.05) / ASAM(ρ=0.5) on every parameter, the step from w; the forward at
  w is the ascent's, so one more forward+backward (at w + v) than AT
- AT+SAM recraft: MAIR's trainer, x' crafted again at w + v (one more PGD-10)
- AT+SAM-AT: SAM-AT(ρ=0.05) with PGD's weight gradients in the ascent (the weight-gradient
  kernels of PGD's 10 backwards)
- methods that change the objective (issue 26), no perturbation: ReBAT (AT + the KL towards the
  weight average: one no-grad forward of the average, and the average's update after the step);
  KD (two no-grad teacher forwards); KD+SWA (KD plus SWA's BatchNorm pass over the training set
  once per epoch, amortized: one no-grad train-mode forward of a clean batch per step)
- other objectives (``ATTACKED_METHODS``), each with its authors' training attack: TRADES (PGD-10 on the
  KL, eval mode), consistency regularization on AT and on TRADES (both views attacked and
  forwarded: a batch of 2B), DKL (5 eval-mode steps) alone and with AWP

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
import copy
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
from wpat.optim.averaging import WeightAverage
from wpat.models import build_model
from wpat.objectives import OBJECTIVES, Batch, Objective, Supplies
from wpat.perturb import AWP, PERTURBATIONS, RWP, WeightPerturbation
from wpat.perturb.sam import ASAM, SAM
from wpat.perturb.sam_at import SAMAT
from wpat.training.step import train_step

OBJECTIVE = OBJECTIVES.build("at")  # CE on x_adv
# configurations that train another objective than AT

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
    "AT+MLCAT-WP all below (threshold=inf)": (lambda: PERTURBATIONS.build("mlcat-wp", threshold=float("inf")), 1),
    "AT+SAM": (lambda: SAM(rho=0.05), 1),
    "AT+ASAM": (lambda: ASAM(rho=0.5), 1),
    "AT+SAM recraft (MAIR)": (lambda: SAM(rho=0.05, recraft=True), 1),
    "AT+SAM-AT (PGD path)": (lambda: SAMAT(rho=0.05), 1),
}


# What a method row trains with: its objective, what the objective is supplied, and work after
# the step (the weight average's update), built for the benchmark's model.
MethodParts = tuple[Objective, Supplies, Callable[[], None] | None]


def rebat_parts(model: nn.Module, x: torch.Tensor) -> MethodParts:
    average = WeightAverage(model, 0.999, ramp=False)
    return (OBJECTIVES.build("rebat"), Supplies(average=average.model),
            lambda: average.update(model, 0))


def kd_parts(model: nn.Module, x: torch.Tensor) -> MethodParts:
    teachers = tuple(copy.deepcopy(model).eval() for _ in range(2))
    return OBJECTIVES.build("kd", standard_teacher="-", robust_teacher="-"), Supplies(teachers=teachers), None


def kd_swa_parts(model: nn.Module, x: torch.Tensor) -> MethodParts:
    objective, supplies, _ = kd_parts(model, x)
    average = copy.deepcopy(model)

    def batchnorm_pass_share() -> None:  # one batch of the epoch's pass over the training set
        with torch.no_grad():
            average.train()(x)

    return objective, supplies, batchnorm_pass_share


METHODS: dict[str, Callable[[nn.Module, torch.Tensor], MethodParts]] = {
    "AT+MLCAT-LS (objective)": lambda model, x: (OBJECTIVES.build("mlcat-ls", objectives=OBJECTIVES.build),
                                                Supplies(), None),
    "ReBAT (AT + KL to the EMA)": rebat_parts,
    "KD (two teachers)": kd_parts,
    "KD+SWA (+ BN pass, amortized)": kd_swa_parts,
}


def consistency(base: str) -> Objective:
    """Consistency regularization on ``base``, TRADES with the code's two forwards."""
    options = {"trades": {"clean_forwards": 1, "clean_first": True}}
    return OBJECTIVES.build("consistency", objectives=lambda name: OBJECTIVES.build(name, **options.get(name, {})),
                            base=base)


# name -> (the objective, its attack's steps, views of each batch, the perturbation); the attack
# takes the objective's loss, start and BN mode
ATTACKED_METHODS: dict[str, tuple[Callable[[], Objective], int, int, Callable[[], WeightPerturbation | None]]] = {
    "TRADES": (lambda: OBJECTIVES.build("trades"), 10, 1, lambda: None),
    "Consistency (AT)": (lambda: consistency("at"), 10, 2, lambda: None),
    "Consistency (TRADES)": (lambda: consistency("trades"), 10, 2, lambda: None),
    "DKL (5-step attack)": (lambda: OBJECTIVES.build("dkl"), 5, 1, lambda: None),
    "DKL+AWP (5-step attack)": (lambda: OBJECTIVES.build("dkl"), 5, 1, lambda: AWP(gamma=0.005)),
}


def cpu_ms() -> float:
    return time.process_time() * 1e3


def timed_step(model: nn.Module, optimizer: torch.optim.Optimizer, attack: PGD,
               perturbation: WeightPerturbation | None, x: torch.Tensor, y: torch.Tensor,
               alternations: int = 1, method: MethodParts | None = None) -> float:
    """One AT(-AWP/-RWP) step of wpat's training loop, or one of a method's; returns its CPU ms."""
    objective, supplies, after = method or (OBJECTIVE, Supplies(), None)
    start = cpu_ms()
    train_step(model, Batch(x, y, supplies=supplies), attack, objective, perturbation, optimizer, alternations)
    if after is not None:
        after()
    return cpu_ms() - start


def timed_method_step(model: nn.Module, optimizer: torch.optim.Optimizer, attack: PGD, objective: Objective,
                      perturbation: WeightPerturbation | None, batch: Batch) -> float:
    """One step of another objective in wpat's training loop; returns its CPU ms."""
    start = cpu_ms()
    train_step(model, batch, attack, objective, perturbation, optimizer)
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

    perturbations = {name: (make(), a, None) for name, (make, a) in CONFIGS.items()}
    perturbations.update({name: (None, 1, make(model, x)) for name, make in METHODS.items()})
    methods = {}
    for name, (make, steps, views, perturb) in ATTACKED_METHODS.items():
        objective = make()
        method_attack = PGD(0.1, 0.02, steps, init=objective.attack_init, loss=objective.attack_loss,
                            bn_mode=objective.attack_bn_mode)
        batch = Batch(x, y, views=tuple(torch.rand_like(x) for _ in range(views - 1)))
        methods[name] = (method_attack, objective, perturb(), batch)
    for p, a, m in perturbations.values():  # warm-up: allocator, first-call overheads
        timed_step(model, optimizer, attack, p, x, y, a, m)
    for method in methods.values():
        timed_method_step(model, optimizer, *method)
    total: dict[str, list[float]] = {name: [] for name in [*perturbations, *methods]}
    for _ in range(args.steps):
        for name, (p, a, m) in perturbations.items():
            total[name].append(timed_step(model, optimizer, attack, p, x, y, a, m))
        for name, method in methods.items():
            total[name].append(timed_method_step(model, optimizer, *method))

    fastest = {name: min(t) for name, t in total.items()}
    median = {name: statistics.median(t) for name, t in total.items()}
    rows = [f"| {name} | {fastest[name]:.1f} | {median[name]:.1f} | "
            f"{fastest[name] / fastest['AT']:.3f}× | {median[name] / median['AT']:.3f}× |"
            for name in total]
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
        "step); the L1 size norm should cost what the L2 one costs. "
        "MLCAT: the loss scaling only transforms the per-example losses (≈ 1.0×); MLCAT-WP is "
        "RWP's search, so with every example below its threshold it costs what RWP does. SAM and ASAM: one more "
        "forward+backward than AT (≤ 1.15×); with recraft one more PGD-10 too (≈ 2×); SAM-AT "
        "adds the weight-gradient kernels of PGD's backwards to SAM's cost. "
        "ReBAT adds one no-grad forward (the average's) and the average's update, KD two no-grad "
        "forwards (the teachers'), about 1/11 of an AT step each at most; SWA's BatchNorm pass adds "
        "one more per step, amortized over its epoch. "
        "Other objectives: consistency regularization attacks and trains on two views (≈ 2× its "
        "base); DKL's 5-step attack should cost about half a PGD-10 step, its two forwards about "
        "TRADES' training forwards.\n"
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
