"""Data-parallel scaling on the CPU: 1 process × 2 threads against 2 gloo processes × 1 thread.

    python benchmarks/bench_ddp.py [--steps 6] [--batch 128] [--width 16]

Each configuration trains the same global batch with wpat's training step (AT and AT-RWP with
every example below c_min, so the search runs all its steps) on the small CNN, and reports
images/s of the global batch and the share of a step spent in the ranks' all-reduces (gradient
averaging and the search's per-step gradient averages; timed by wrapping
``wpat.helpers.distributed.average_``). Both use the same total number of threads, measured in one run.
The table goes to docs/benchmarks/ddp.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "ddp.md"


def worker(steps: int, batch: int, width: int) -> None:
    """One rank (or the single process): time ``steps`` training steps per method."""
    import torch

    from wpat.helpers import distributed
    from wpat.attacks import PGD
    from wpat.models import build_model
    from wpat.objectives import OBJECTIVES, Batch
    from wpat.perturb import RWP
    from wpat.training.step import train_step

    world = distributed.init(torch.device("cpu"))
    comm = {"s": 0.0}
    plain_average = distributed.average_

    def timed_average(tensors):
        started = time.perf_counter()
        plain_average(tensors)
        comm["s"] += time.perf_counter() - started

    distributed.average_ = timed_average
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.3,), width=width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = world.share(torch.rand(batch, 1, 28, 28)), world.share(torch.randint(0, 10, (batch,)))
    attack, objective = PGD(0.1, 0.025, 10, bn_mode="train"), OBJECTIVES.build("at")
    methods = {"AT": lambda: None, "AT-RWP (all below c_min)": lambda: RWP(c_min=float("inf"))}
    result = {}
    for name, make in methods.items():
        train_step(model, Batch(x, y), attack, objective, make(), optimizer)  # warm-up
        comm["s"] = 0.0
        started = time.perf_counter()
        for _ in range(steps):
            train_step(model, Batch(x, y), attack, objective, make(), optimizer)
        seconds = time.perf_counter() - started
        result[name] = {"images_per_s": steps * batch / seconds, "comm_share": comm["s"] / seconds}
    if world.main:
        print("RESULT " + json.dumps(result), flush=True)


def launch(processes: int, threads: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = (f"import torch; torch.set_num_threads({threads}); import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_ddp; bench_ddp.worker({args.steps}, {args.batch}, {args.width})")
    if processes == 1:
        command = [sys.executable, "-c", code]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--nproc_per_node", str(processes), "--master_port", "29561", "--no-python",
                   sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    one, two = launch(1, 2, args), launch(2, 1, args)
    rows = [f"| {name} | {one[name]['images_per_s']:.0f} | {two[name]['images_per_s']:.0f} | "
            f"{two[name]['images_per_s'] / one[name]['images_per_s']:.2f}× | {100 * two[name]['comm_share']:.1f} % |"
            for name in one]
    table = "\n".join(["| method | 1 process × 2 threads (img/s) | 2 processes × 1 thread (img/s) | ratio | "
                       "all-reduce share of a 2-rank step |", "|---|---:|---:|---:|---:|", *rows])
    report = (f"# Data-parallel scaling (CPU, gloo)\n\nCommand: `python benchmarks/bench_ddp.py --steps {args.steps} "
              f"--batch {args.batch} --width {args.width}`\n\nsmall_cnn width {args.width}, global batch "
              f"{args.batch}, PGD-10; CPU `{platform.machine()}`, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[1]:.1f}; both configurations use 2 threads in all, measured in one run.\n\n"
              f"{table}\n\n"
              "Reading: a rank does 1/N of the attack and search work of the global batch and all-reduces "
              "the model's gradients once per step, plus once per ascent step of AWP/RWP (and a flag per "
              "RWP step). The all-reduce share above, measured with gloo over shared memory, is the "
              "communication to expect per step; with NCCL on N GPUs the same per-step volume (the model's "
              "size) crosses NVLink or the network, so the step scales with N as long as that share stays "
              "small against the attack's 11 forward/backward passes. No GPU was available to measure it.\n")
    print(table)
    REPORT.write_text(report)
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
