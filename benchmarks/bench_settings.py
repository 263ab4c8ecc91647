"""Cost of the training settings relative to plain AT, measured in one run.

    python benchmarks/bench_settings.py [--steps 10] [--batch 128] [--width 16]

Each configuration is one training step of wpat's loop on the small CNN (1×28×28, PGD-10,
train-mode BN): drawing the batch from a ``DeviceLoader`` (so the augmentations' cost counts),
``wpat.training.step.train_step``, and the weight average's update where it is on. Configurations take
turns one step at a time so that drifts of a shared machine hit all alike; each ratio uses the
configuration's fastest step, in process CPU time. Writes docs/benchmarks/settings.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from wpat.attacks import PGD
from wpat.optim.averaging import WeightAverage
from wpat.data import DeviceLoader
from wpat.models import build_model
from wpat.objectives import OBJECTIVES, Batch
from wpat.optim.regularize import parameter_groups
from wpat.training.step import train_step

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "settings.md"

# name -> (loader options, l1, l2, ema decay)
CONFIGS = {
    "AT": ({}, 0.0, 0.0, 0.0),
    "AT + L1 (5e-6)": ({}, 5e-6, 0.0, 0.0),
    "AT + L2 (5e-3)": ({}, 0.0, 5e-3, 0.0),
    "AT + cutout (14)": ({"cutout": 14}, 0.0, 0.0, 0.0),
    "AT + mixup (α 1.4)": ({"mix": "mixup", "mix_alpha": 1.4}, 0.0, 0.0, 0.0),
    "AT + CutMix (α 1.0)": ({"mix": "cutmix", "mix_alpha": 1.0}, 0.0, 0.0, 0.0),
    "AT + EMA (0.995)": ({}, 0.0, 0.0, 0.995),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = (torch.rand(args.batch * (args.steps + 2), 1, 28, 28) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (len(images),))
    attack, objective = PGD(0.1, 0.025, 10, bn_mode="train"), OBJECTIVES.build("at")
    runs = {}
    for name, (loader_options, l1, l2, decay) in CONFIGS.items():
        model = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.3,), width=args.width)
        optimizer = torch.optim.SGD(parameter_groups(model, 5e-4, l2), lr=0.01, momentum=0.9)
        loader = DeviceLoader(images, labels, args.batch, shuffle=True, drop_last=True, augment="flip",
                              num_classes=10, **loader_options)
        ema = WeightAverage(model, decay) if decay else None
        runs[name] = (model, optimizer, iter(loader), l1, ema)
    times = {name: [] for name in CONFIGS}
    for round_ in range(args.steps + 1):
        for name, (model, optimizer, batches, l1, ema) in runs.items():
            started = time.process_time()
            x, y = next(batches)
            train_step(model, Batch(x, y), attack, objective, None, optimizer, l1=l1)
            if ema is not None:
                ema.update(model)
            if round_:  # the first round warms up
                times[name].append(time.process_time() - started)
    fastest = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    rows = [f"| {name} | {1000 * fastest[name]:.0f} | {fastest[name] / fastest['AT']:.3f}× | "
            f"{median[name] / median['AT']:.3f}× |" for name in CONFIGS]
    table = "\n".join(["| configuration | ms/step (fastest) | vs AT (fastest) | vs AT (median) |",
                       "|---|---:|---:|---:|", *rows])
    report = (f"# Cost of the training settings\n\nCommand: `python benchmarks/bench_settings.py --steps {args.steps} "
              f"--batch {args.batch} --width {args.width}`\n\nsmall_cnn width {args.width}, batch {args.batch}, "
              f"PGD-10, {args.threads} thread(s), CPU `{platform.machine()}`, load average {os.getloadavg()[1]:.1f} "
              f"at the end, torch {torch.__version__}; {args.steps} interleaved steps each, process CPU time.\n\n"
              f"{table}\n\nTarget: each setting within a few per cent of plain AT (the PGD-10 attack dominates the "
              "step; the augmentations are a handful of tensor operations per batch, the average one fused "
              "multiply-add per parameter).\n")
    print(table)
    REPORT.write_text(report)
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
