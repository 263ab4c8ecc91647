"""Training throughput: clean, AT (PGD-10) and TRADES steps, in images/s, measured in one run.

    python benchmarks/bench_train.py [--models small_cnn,preact_resnet18] [--steps 6] [--threads 1]

For each model it times, interleaved so machine noise hits all alike:

- ``clean``: one forward + backward + SGD step;
- ``AT``: wpat's PGD-10 (input gradients only, ``torch.autograd.grad``) + the training step;
- ``AT (reference-style)``: PGD-10 as the authors' scripts write it — ``loss.backward()`` on an
  input that requires grad, so every attack step also computes (and accumulates) the weights'
  gradients, then ``model.zero_grad()``;
- ``TRADES``: wpat's TRADES step (KL attack from a clean forward, CE + β·KL objective).

In forward-equivalents (forward = 1, backward ≈ 2; an input-only backward skips the weight
gradients, ≈ 1), PGD-10 AT costs about 10·2 + 3 = 23 against a clean step's 3, i.e. 7.7×; the
reference style spends 10·3 + 3 + extra ≈ 34, i.e. 11×. The table reports measured ratios. The
markdown table is written to docs/benchmarks/train.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wpat.attacks import PGD
from wpat.models import build_model
from wpat.objectives import OBJECTIVES, Batch
from wpat.helpers.tables import markdown_table
from wpat.training.step import train_step

SHAPES = {"small_cnn": (1, 28, 28, (0.286,), (0.353,)), "preact_resnet18": (3, 32, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))}


def reference_style_pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10):
    """PGD as the authors' scripts write it: a full backward per step (weight grads included)."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        grad = delta.grad.detach()
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    model.zero_grad()
    return (x + delta).detach()


def make_steps(model, optimizer):
    at = OBJECTIVES.build("at")
    trades = OBJECTIVES.build("trades", beta=6.0)
    pgd = PGD(8 / 255, 2 / 255, 10, bn_mode="train")
    kl_pgd = PGD(8 / 255, 2 / 255, 10, init="normal", loss="kl", bn_mode="eval")

    def clean(x, y):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def reference(x, y):
        model.train()
        x_adv = reference_style_pgd(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_adv), y).backward()
        optimizer.step()

    return {
        "clean": clean,
        "AT (PGD-10)": lambda x, y: train_step(model, Batch(x, y), pgd, at, None, optimizer),
        "AT (reference-style PGD-10)": reference,
        "TRADES (PGD-10 on KL)": lambda x, y: train_step(model, Batch(x, y), kl_pgd, trades, None, optimizer),
    }


def bench_model(name: str, batch: int, steps: int, channels_last: bool) -> list[list[str]]:
    c, h, w, mean, std = SHAPES[name]
    model = build_model(name, num_classes=10, in_channels=c, mean=mean, std=std)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, c, h, w), torch.randint(0, 10, (batch,))
    kinds = make_steps(model, optimizer)
    times = {k: [] for k in kinds}
    for kind, step in kinds.items():  # warm-up
        step(x, y)
    for _ in range(steps):
        for kind, step in kinds.items():
            started = time.perf_counter()
            step(x, y)
            times[kind].append(time.perf_counter() - started)
    clean = statistics.median(times["clean"])
    rows = []
    for kind, ts in times.items():
        t = statistics.median(ts)
        rows.append([name, kind, f"{batch / t:,.0f}", f"{1000 * t:,.1f}", f"{t / clean:.2f}×"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn,preact_resnet18")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per kind (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=0, help="0: 128 for small_cnn, 32 for preact_resnet18 on CPU")
    parser.add_argument("--out", default="docs/benchmarks/train.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        batch = args.batch or (128 if name == "small_cnn" else 32)
        rows += bench_model(name, batch, args.steps, channels_last=True)
        print(markdown_table(["model", "step", "images/s", "ms/step", "× clean"], rows[-4:]), flush=True)
    table = markdown_table(["model", "step", "images/s", "ms/step", "× clean"], rows)
    header = (f"# Training throughput\n\nCommand: `python benchmarks/bench_train.py --models {args.models} "
              f"--steps {args.steps} --threads {args.threads}`\n\nCPU {platform.machine()}, {args.threads} thread(s), "
              f"torch {torch.__version__}, channels_last, median of {args.steps} interleaved steps; "
              f"ratios measured in the same run.\n\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + table + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
