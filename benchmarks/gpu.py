"""On a GPU in one command: check and measure every path of wpat that has never run on one.

    python benchmarks/gpu.py --budget 420             # one H100, ≤ 7 min: writes docs/benchmarks/gpu.md
    python benchmarks/gpu.py --smoke --out /tmp/g.md  # any CPU, toy sizes, seconds (the test suite runs it)
    python benchmarks/gpu.py --dry-run                # measure nothing: the page of planned rows

Sections (they run in the order 1, 3, 4, 2, 5: the quick, decisive ones first, so that the time
budget can only cut the long ones):

1. **Correctness.** Training steps of AT, AT-AWP, AT-RWP and TRADES-AWP on the device equal
   the same steps on the CPU, in the setting where docs/design.md's bf16 tolerance was measured
   (a small CNN): two fp32 steps (TF32 off), every tensor within 10× the CPU fp32 steps' own
   distance from float64 on it (at least 1e-4); one bf16 autocast step within docs/design.md's
   tolerance ("Mixed precision"). Both sides take the
   same adversarial examples, crafted on the CPU, because each device draws the attack's random
   start from its own generator; the attack itself is checked from x (no random start), where
   both must find the same examples.
2. **Throughput** of PreAct ResNet-18 and WRN-34-10 at batch 128 for clean, AT (PGD-10),
   AT-AWP, AT-RWP with every and with no example below ``c_min``, and TRADES, in the modes fp32,
   bf16, bf16 + channels_last (each adds one setting to the one before): images/s, the
   estimated CIFAR-10 epoch, FLOPs per step (``torch.utils.flop_counter``) and the achieved
   share of the device's bf16 peak, peak memory. In bf16 + channels_last also where the time
   goes: kernel time against wall time (``torch.profiler``), host syncs per step and per loader
   batch (``torch.cuda.set_sync_debug_mode``), the busiest kernels; there RWP also runs with
   ``early_exit=false``, its sync-free form.
3. **Extra data**: the ``data.extra`` stream (a reading thread, pinned memory, a side CUDA
   stream) feeding an AT step: images/s delivered against images/s consumed.
4. **NCCL**: a one-process group (init, all-reduce, teardown).
5. **Compile**: the mode bf16 + channels_last + compile of section 2, last because compiling
   takes longest.

Every run is set up as ``wpat train`` sets it up, a preset plus overrides built by the training
loop's own ``build_parts`` (model on the device, channels_last, compile, the optimizer's parameter
groups, the on-device loader, the extra-data stream), on random images written in CIFAR-10's
file format; each batch is the loop's ``train_step`` under the loop's autocast.

A row that fails records its error in its table and the run goes on. ``--budget SECONDS``
bounds the whole run: a row whose predicted time (the longest row of its kind so far) no
longer fits is skipped with a note, and a row still running when the budget ends is stopped
(SIGALRM); the page is rewritten before and after every row, so even a run killed from outside
leaves one. Figures are compared with goals, never asserted. Exit status: 0 when every row was
measured or skipped for time, 1 when a row failed or a check did not hold, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import os
import pickle
import platform
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

START = time.monotonic()  # the budget counts from here, before torch's import

import numpy as np  # noqa: E402
import torch  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Everything this script uses of wpat is in this block: the package is about to be reorganized,
# and a moved module or attribute should cost an edit here only. A run is built through the
# config loader and the training loop's Trainer; a batch is the loop's training step.
from wpat.configuration.config import load_config  # noqa: E402
from wpat.data import write_npz  # noqa: E402
from wpat.helpers.errors import WpatError  # noqa: E402
from wpat.training.step import train_step  # noqa: E402
from wpat.helpers.tables import markdown_table  # noqa: E402
from wpat.objectives import Batch  # noqa: E402
from wpat.training.batching import compose_batch  # noqa: E402
from wpat.training.parts import build_parts  # noqa: E402


class Run:
    """A run exactly as ``wpat train PRESET OVERRIDES`` sets it up, before its first epoch: the
    training loop's own parts (``build_parts``), of which nothing is written here."""

    def __init__(self, preset: str, overrides: list[str], run_dir: Path) -> None:
        self.parts = build_parts(load_config(preset, overrides))
        self.cfg, self.device = self.parts.cfg, self.parts.device

    @property
    def model(self) -> torch.nn.Module:
        """The plain module (its state is the run's weights)."""
        return self.parts.model

    def attack(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.parts.attack(model, x, y)

    def step(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None,
             attack: Callable[..., torch.Tensor] | None = None) -> None:
        """One batch of the loop's ``train_epoch``: the step under bf16 autocast when ``run.amp``,
        the perturbation active; ``attack`` replaces the run's own."""
        p, cfg = self.parts, self.cfg
        batch = Batch(x, y, supplies=p.supplies)
        with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=cfg.run.amp):
            train_step(p.forward_model, batch, attack or p.attack, p.objective, p.perturbation, p.optimizer,
                       cfg.perturb.alternations, cfg.optim.l1, weights, score_forward=p.score_forward)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The loop's batches, epoch after epoch, with the extra-data stream's share if any."""
        epoch = 0
        while True:
            self.parts.loader.set_epoch(epoch)
            for loaded in self.parts.loader:
                batch, weights = compose_batch(self.parts.world, loaded, self.parts.extra,
                                               self.cfg.data.extra_weight, self.parts.supplies)
                yield batch.x, batch.y, weights
            epoch += 1

    def extra_stream(self) -> tuple[Any, int]:
        """The extra-data stream and how many examples of each batch it gives."""
        extra = self.parts.extra
        return extra, 0 if extra is None else extra.batch_size

    def close(self) -> None:
        if self.parts.extra is not None:
            self.parts.extra.close()
# ---------------------------------------------------------------------------------------------


ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks" / "gpu.md"
CIFAR10_TRAIN = 50_000
GPU_COMMAND = ".venv/bin/python benchmarks/gpu.py --budget 420"

MODELS = {  # key -> (label, preset, stand-in overrides for --smoke)
    "preact_resnet18": ("PreAct ResNet-18", "cifar10-preactresnet18-linf",
                        ["model.name=small_cnn", "model.small_cnn.width=4"]),
    "wrn34_10": ("WRN-34-10", "cifar10-wrn34-10-at",
                 ["model.name=wide_resnet", "model.wide_resnet.depth=10", "model.wide_resnet.widen=1"]),
}
# --smoke: fewer attack and RWP steps as well (the paths are the same; only sizes shrink)
SMOKE = ["attack.steps=2", "perturb.rwp.steps=3"]
MODES = {  # key -> (label, overrides); each mode adds one setting to the one before
    "fp32": ("fp32", ["run.amp=false", "run.channels_last=false", "run.compile=false"]),
    "bf16": ("bf16", ["run.amp=true", "run.channels_last=false", "run.compile=false"]),
    "bf16-cl": ("bf16 + channels_last", ["run.amp=true", "run.channels_last=true", "run.compile=false"]),
    "bf16-cl-compile": ("bf16 + channels_last + compile",
                        ["run.amp=true", "run.channels_last=true", "run.compile=true"]),
}
COMPILED = "bf16-cl-compile"
PROFILED = "bf16-cl"  # the mode in which syncs and kernels are examined


@dataclass(frozen=True)
class Method:
    label: str
    overrides: tuple[str, ...]
    clean: bool = False  # no attack: the step trains on the clean batch
    syncs: bool = False  # host syncs by design (RWP's early exit)
    only: str | None = None  # measured in this mode only


METHODS = [
    Method("clean", ("perturb.name=none",), clean=True),
    Method("AT (PGD-10)", ("perturb.name=none",)),
    Method("AT-AWP", ("perturb.name=awp",)),
    Method("AT-RWP, all below c_min", ("perturb.name=rwp", "perturb.rwp.c_min=inf"), syncs=True),
    Method("AT-RWP, none below c_min", ("perturb.name=rwp", "perturb.rwp.c_min=0"), syncs=True),
    # The same v as "all below", without the early exit's host sync (docs/design.md).
    Method("AT-RWP, all below, early_exit=false",
           ("perturb.name=rwp", "perturb.rwp.c_min=inf", "perturb.rwp.early_exit=false"), only=PROFILED),
    Method("TRADES (β = 6)", ("objective.name=trades", "perturb.name=none", "attack.script_forwards=false")),
]
AT, AWP, RWP_NONE = METHODS[1], METHODS[2], METHODS[4]

CHECKS = [  # correctness: label, overrides
    ("AT", ["perturb.name=none"]),
    ("AT-AWP", ["perturb.name=awp"]),
    ("AT-RWP, all below c_min", ["perturb.name=rwp", "perturb.rwp.c_min=inf"]),
    ("TRADES-AWP", ["objective.name=trades", "perturb.name=awp", "perturb.awp.gamma=0.005"]),
]
# Every check runs in the setting where docs/design.md's bf16 tolerance was measured
# (tests/test_fast_path.py), moved onto CIFAR-shaped images: a width-4 small CNN, PGD-3 of
# ε = 0.1 in eval mode, plain SGD. PreAct ResNet-18 at initialization on random images is no
# place for an element-wise comparison: two fp32 AT steps on the CPU lie 2 % from the same steps
# in float64, AT-AWP's 20 %, AT-RWP's (10 ascent steps) 62 %.
CHECK_SETTING = ["model.name=small_cnn", "model.small_cnn.width=4", "model.mean=[0.3,0.3,0.3]",
                 "model.std=[0.3,0.3,0.3]", "attack.eps=0.1", "attack.alpha=0.05", "attack.steps=3",
                 "attack.bn_mode=eval", "attack.script_forwards=false", "optim.momentum=0", "optim.weight_decay=0", "perturb.rwp.steps=2"]
CHECK_BATCH, FP32_STEPS = 32, 2
# fp32: each tensor within FP32_MARGIN times the CPU fp32 steps' own error on it, at least FP32_FLOOR
FP32_MARGIN, FP32_FLOOR = 10.0, 1e-4
BF16_COSINE, BF16_NORM, BF16_TENSOR = 0.99, 0.05, 0.25  # docs/design.md, "Mixed precision": one step
ATTACK_AGREEMENT = 0.999  # share of pixels; a sign step may flip on a near-zero input gradient

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; the first entry
# contained in the device's name wins, so specific variants come before their family.
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0), ("RTX 4090", 165.0),
]
NOT_REACHED = "not reached"


class OutOfTime(BaseException):
    """Raised by SIGALRM when the budget ends; a BaseException, so no row's handler swallows it."""


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{type(err).__name__}: {text}".replace("|", "\\|")


# --------------------------------------------------------------------------------- the page


@dataclass
class Row:
    """One line of a table: identifying cells, then measured values, or a note saying why not."""

    label: list[str]
    values: dict[str, Any] = field(default_factory=dict)
    note: str = NOT_REACHED
    measured: bool = False
    failed: bool = False  # an error, or a check that did not hold


@dataclass
class Section:
    title: str
    text: str
    label_columns: list[str]
    columns: list[str]
    render: Callable[[Row], list[str]]
    rows: list[Row] = field(default_factory=list)

    def table(self) -> str:
        cells = [row.label + (self.render(row) if row.measured else [row.note] + [""] * (len(self.columns) - 1))
                 for row in self.rows]
        return markdown_table(self.label_columns + self.columns, cells)


@dataclass
class Grid:
    """The throughput rows of every model, mode and method, and what is shared between them."""

    rows: dict[str, dict[tuple[str, str], Row]]  # model -> (method label, mode) -> row
    times: dict[str, dict[str, Row]]  # model -> method label -> where-the-time-goes row
    flops: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, method label) -> per step
    peak: float | None = None  # TFLOP/s

    def fastest(self, model: str, method: Method) -> tuple[str, Row] | None:
        found = [(mode, r) for (label, mode), r in self.rows.get(model, {}).items()
                 if label == method.label and r.measured]
        return min(found, key=lambda mr: mr[1].values["seconds"]) if found else None


@dataclass
class Report:
    args: argparse.Namespace
    device: torch.device
    facts: dict[str, str]
    grid: Grid
    sections: list[Section] = field(default_factory=list)

    def rows(self) -> Iterator[Row]:
        for section in self.sections:
            yield from section.rows

    def markdown(self) -> str:
        lines = ["# GPU check and benchmark", ""]
        if self.args.dry_run or self.device.type != "cuda":
            lines += [no_gpu_banner(self.args), ""]
        lines += [f"Command: `{command_line()}`", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.facts.items()] + [""]
        lines += [
            "`benchmarks/gpu.py` runs, on one device and within a time budget, the paths of wpat that a "
            "GPU run takes and the CPU test suite cannot (bf16 autocast on CUDA, channels_last and "
            "`torch.compile` on a GPU, the extra-data stream's pinned copies, NCCL, RWP's early exit "
            "against its sync-free form). Each run is built as `wpat train` builds it (preset and "
            "overrides, the training loop's `build_parts`) on random CIFAR-shaped images; the loader's batch "
            "is part of each timed step, as in training. A row that failed shows its error; a row that "
            "did not fit the time budget says so.", "",
            "## Goals", "", "Measured against, not asserted (issue 28).", "", goals_table(self), ""]
        for section in self.sections:
            lines += [f"## {section.title}", "", section.text, "", section.table(), ""]
        return "\n".join(lines)

    def write(self) -> None:
        if self.args.out is None:
            return
        path = Path(self.args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(self.markdown())
        os.replace(partial, path)  # a reader, or a kill, never leaves half a page


def no_gpu_banner(args: argparse.Namespace) -> str:
    if args.dry_run:
        what = ("**No GPU figure has been measured yet**: no GPU has run this script. The tables below "
                "list what it measures; every row reads \"not measured yet\" until a GPU has run it.")
    else:
        what = ("**No GPU figure was measured**: this run used the CPU"
                + (" at toy sizes (`--smoke`: stand-in models, a few steps, no compiling)" if args.smoke else "")
                + ". Its figures show only that every row is produced; none of them says anything about a GPU.")
    return (f"> {what} On a machine with a CUDA GPU, from the repository root: `{GPU_COMMAND}` (after "
            "`bash scripts/setup.sh`; where PyTorch with CUDA and wpat's other dependencies are installed "
            "already, `PYTHONPATH=src python3 benchmarks/gpu.py --budget 420`). It stops within the budget, "
            "in seconds, and rewrites this page.")


def command_line() -> str:
    return " ".join(["python benchmarks/gpu.py", *sys.argv[1:]]).strip()


def goals_table(report: Report) -> str:
    """The goals of issue 28 with what was measured against them."""
    g, on_gpu = report.grid, report.device.type == "cuda" and not report.args.dry_run
    rows = []

    def add(goal: str, measured: str | None, met: bool) -> None:
        verdict = "-" if measured is None else ("met" if met else "not met") if on_gpu else "not a GPU"
        rows.append([goal, measured or "-", verdict])

    best = g.fastest("preact_resnet18", AT)
    measured, met = None, False
    if best is not None:
        t, batch = best[1].values["seconds"], best[1].values["batch"]
        epoch = CIFAR10_TRAIN // batch * t
        flops = g.flops.get(("preact_resnet18", AT.label))
        share = flops / t / 1e12 / g.peak if flops and g.peak else None
        measured = (f"{100 * share:.1f} % of peak, " if share is not None else "") + \
            f"epoch {epoch:,.1f} s ({MODES[best[0]][0]})"
        met = share is not None and share >= 0.25 and epoch <= 8
    add("PreAct ResNet-18 AT (PGD-10) at ≥ 25 % of an H100's bf16 peak: a CIFAR-10 epoch in ≤ 8 s", measured, met)
    for method, limit in ((AWP, 1.15), (RWP_NONE, 1.05)):
        parts, met = [], True
        for model in g.rows:
            at = g.fastest(model, AT)
            row = g.rows[model].get((method.label, at[0])) if at else None
            if row is not None and row.measured:
                ratio = row.values["seconds"] / at[1].values["seconds"]
                parts.append(f"{MODELS[model][0]} {ratio:.2f}× ({MODES[at[0]][0]})")
                met &= ratio <= limit
        add(f"{method.label} ≤ {limit:.2f}× AT, in AT's fastest mode", ", ".join(parts) or None, met)
    counts = [(model, r.label[0], r.values["step_syncs"]) for model, rows_ in g.times.items()
              for r in rows_.values() if r.measured and "step_syncs" in r.values
              and not next(m for m in METHODS if m.label == r.label[0]).syncs]
    measured = None
    if counts:
        measured = "; ".join(f"{MODELS[m][0]} {label}: {n}" for m, label, n in counts if n) or \
            f"0 in each of {len(counts)} steps measured"
    add("no host sync inside a training step (RWP's early exit syncs once per ascent step by design; "
        "`perturb.rwp.early_exit=false` removes it)", measured, bool(counts) and all(n == 0 for *_, n in counts))
    return markdown_table(["goal", "measured", "verdict"], rows)


# ------------------------------------------------------------------------------- the budget


class Budget:
    """Seconds left of ``--budget`` (counted from the process's start), the predicted time of a
    row from the rows measured so far, and the alarm that stops a row running past the end."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = START + seconds
        self.longest: dict[tuple, float] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def arm(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            raise OutOfTime
        signal.signal(signal.SIGALRM, stop)
        if self.left() > 0:  # 0 would disarm the timer instead
            signal.setitimer(signal.ITIMER_REAL, self.left())

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def attempt(report: Report, budget: Budget, row: Row, work: Callable[[], None], kind: tuple = ()) -> None:
    """Measure one row: skip it when its predicted time does not fit; record an error and go on."""
    predicted = budget.longest.get(kind) if kind else None
    if budget.left() <= 0 or (predicted is not None and predicted > budget.left()):
        row.note = (f"skipped: {max(0.0, budget.left()):.0f} s of the {budget.seconds:g} s budget left"
                    + (f", a row like it took {predicted:.0f} s" if predicted is not None else ""))
        return
    row.note = "started, not finished: the run was stopped"
    report.write()
    started = time.monotonic()
    try:
        work()
        row.measured, row.note = True, ""
    except OutOfTime:
        row.note = f"stopped: the {budget.seconds:g} s budget ran out during this row"
        raise
    except Exception as err:  # one row's failure is recorded, and the others go on
        row.note, row.failed = f"error: {one_line(err)}", True
    finally:
        release(report.device, row.failed)
    if kind:
        budget.longest[kind] = max(time.monotonic() - started, budget.longest.get(kind, 0.0))
    verdict = ("FAILED " if row.failed else "") + ("measured" if row.measured else row.note)
    print(f"[{time.monotonic() - START:6.1f} s] {' / '.join(row.label)}: {verdict}", file=sys.stderr, flush=True)
    report.write()


def release(device: torch.device, failed: bool) -> None:
    """Give the finished row's memory back before the next row. A full garbage collection costs
    a third of a second with torch loaded, so it runs only where reference counting may not have
    freed everything: after an error (its traceback holds the row's frames) or when device
    memory is still held. A device that fails here is reported by the next row, not by this one."""
    with contextlib.suppress(Exception):
        held = device.type == "cuda" and torch.cuda.memory_allocated(device) > 2**28
        if failed or held:
            gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# -------------------------------------------------------------------------- measuring tools


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    """Mean seconds of ``fn`` over n calls, the device synchronized before and after."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / n


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def host_syncs(fn: Callable[[], Any]) -> int:
    """CUDA calls inside ``fn`` that made the host wait for the device:
    ``torch.cuda.set_sync_debug_mode("warn")`` warns once for each."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def profile(fn: Callable[[], Any], n: int, device: torch.device) -> tuple[float, list[tuple[str, float]]]:
    """(device kernel seconds per call, the three busiest kernels with their share of that time)
    over n calls; on the CPU (0, the three ops with the most self CPU time and their share)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(n):
            fn()
        synchronize(device)
    busy: dict[str, float] = {}  # name -> microseconds
    if cuda:
        for event in prof.events():
            if event.device_type == DeviceType.CUDA:
                busy[event.name] = busy.get(event.name, 0.0) + event.time_range.elapsed_us()
        if not busy:
            raise RuntimeError("the profiler recorded no CUDA kernel (is CUPTI available?)")
    else:
        for average in prof.key_averages():
            busy[average.key] = busy.get(average.key, 0.0) + average.self_cpu_time_total
    total = sum(busy.values()) or 1.0
    top = [(name, us / total) for name, us in sorted(busy.items(), key=lambda kv: -kv[1])[:3]]
    return (total / 1e6 / n if cuda else 0.0), top


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """fp32 without TF32 on CUDA (cuDNN convolutions default to TF32: 10 mantissa bits)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ------------------------------------------------------------------------------ the settings


def fabricate_cifar10(root: Path, n_train: int, n_test: int) -> None:
    """Random images and labels in CIFAR-10's "python version" layout, so that every run reads
    them through wpat's CIFAR reader and trains from its on-device loader."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_batch = -(-n_train // 5)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


@dataclass
class Settings:
    device: torch.device
    smoke: bool
    work: Path  # a temporary directory: fabricated data, run directories
    batch: int
    steps: int
    warmup: int
    stream_images: int
    allreduce_floats: int
    profiled: int  # steps under the profiler
    extra: list[str]  # --set

    def open(self, model: str, *parts: list[str] | tuple[str, ...], batch: int | None = None,
             device: torch.device | None = None) -> Run:
        """A run of ``model``'s preset: the smoke stand-in, the parts, the plumbing, --set last."""
        overrides = [*MODELS[model][2], *SMOKE] if self.smoke else []
        for part in parts:
            overrides += list(part)
        overrides += [f"data.batch_size={batch or self.batch}", f"data.root={self.work / 'cifar10'}",
                      f"run.device={device or self.device}", "run.progress=false", "run.tensorboard=false",
                      *self.extra]
        return Run(MODELS[model][1], overrides, Path(tempfile.mkdtemp(dir=self.work)))


# ------------------------------------------------------------------------------- correctness


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float64, copy=True, memory_format=torch.contiguous_format)
            for k, v in model.state_dict().items() if v.is_floating_point()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def cpu_steps(s: Settings, parts: list[list[str]], batch: int, steps: int) -> tuple[dict, dict, list[tuple]]:
    """``steps`` fp32 steps on the CPU: (initial state, final state, the batches and adversarial
    examples used). Each step's examples are crafted by the run's own attack against a copy of
    the model, so that the attack's BatchNorm updates reach no side of the comparison."""
    run = s.open("preact_resnet18", *parts, MODES["fp32"][1], batch=batch, device=torch.device("cpu"))
    try:
        initial, feed, used = state_of(run.model), run.batches(), []
        for _ in range(steps):
            x, y, weights = next(feed)
            x_adv = run.attack(copy.deepcopy(run.model), x, y)
            run.step(x, y, weights, attack=lambda m, a, b, x_adv=x_adv: x_adv)
            used.append((x, y, weights, x_adv))
        return initial, state_of(run.model), used
    finally:
        run.close()


def replay(s: Settings, parts: list[list[str]], mode: str, batch: int, initial: dict, used: list[tuple],
           device: torch.device, dtype: torch.dtype = torch.float32) -> dict:
    """The same steps from the same weights on ``device`` in ``mode`` (in float64 with
    ``dtype``, for the CPU's exact-arithmetic yardstick); the final state."""
    run = s.open("preact_resnet18", *parts, MODES[mode][1], batch=batch, device=device)
    try:
        run.model.to(dtype).load_state_dict(initial)

        def to(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, dtype if t.is_floating_point() else None)

        exact = exact_fp32(device) if mode == "fp32" else contextlib.nullcontext()
        with exact, default_dtype(dtype):
            for x, y, weights, x_adv in used:
                x_adv = to(x_adv)
                run.step(to(x), to(y), to(weights), attack=lambda m, a, b, x_adv=x_adv: x_adv)
        return state_of(run.model)
    finally:
        run.close()


def weight_update(initial: dict, final: dict) -> torch.Tensor:
    """The concatenated update of the conv and linear weights (what AWP and RWP perturb)."""
    return torch.cat([(final[k] - initial[k]).flatten() for k in weight_keys(initial)])


def weight_keys(state: dict) -> list[str]:
    return [k for k, v in state.items() if v.dim() > 1 and not k.startswith("normalize.")]


def check_fp32(s: Settings, method: list[str], row: Row) -> None:
    """The device's fp32 steps against the CPU's, tensor by tensor, each with the CPU's own fp32
    error on it (against the same steps in float64) as the yardstick of what fp32 resolves
    there: a BatchNorm network's conv gradients are ill-conditioned where they come from
    cancellation (the first conv of the small CNN: 7e-3 off float64 after one step), while the
    other tensors agree with float64 to 1e-6 and so are checked tightly."""
    parts = [CHECK_SETTING, method]
    initial, cpu32, used = cpu_steps(s, parts, CHECK_BATCH, FP32_STEPS)
    cpu64 = replay(s, parts, "fp32", CHECK_BATCH, initial, used, torch.device("cpu"), torch.float64)
    device = replay(s, parts, "fp32", CHECK_BATCH, initial, used, s.device)
    worst = (0.0, "-", 0.0, FP32_FLOOR)  # (error / limit, tensor, error, limit)
    for key, start in initial.items():
        reference = cpu32[key] - start
        if not reference.any():  # never changes (the normalization's buffers)
            continue
        own = relative(reference, cpu64[key] - start)
        error, limit = relative(device[key] - start, reference), max(FP32_FLOOR, FP32_MARGIN * own)
        worst = max(worst, (error / limit, key, error, limit))
    update = relative(weight_update(initial, device), weight_update(initial, cpu32))
    ok = worst[0] <= 1
    row.values = {"measured": f"update {update:.1e}; nearest its limit: {worst[1]} {worst[2]:.1e}",
                  "tolerance": f"each tensor ≤ {FP32_MARGIN:g}× fp32's own error, ≥ {FP32_FLOOR:g} "
                               f"({worst[1]}: {worst[3]:.1e})", "ok": ok}
    row.failed = not ok


def check_bf16(s: Settings, method: list[str], row: Row) -> None:
    """One bf16 step on the device against the fp32 step on the CPU, under docs/design.md's
    tolerance."""
    parts = [CHECK_SETTING, method]
    initial, cpu32, used = cpu_steps(s, parts, CHECK_BATCH, 1)
    device = replay(s, parts, "bf16", CHECK_BATCH, initial, used, s.device)
    ref, got = weight_update(initial, cpu32), weight_update(initial, device)
    cosine = float(torch.nn.functional.cosine_similarity(got, ref, dim=0))
    norm = float(got.norm() / ref.norm())
    worst = max(relative(device[k] - initial[k], cpu32[k] - initial[k]) for k in weight_keys(initial))
    ok = cosine >= BF16_COSINE and abs(norm - 1) <= BF16_NORM and worst <= BF16_TENSOR
    row.values = {"measured": f"cosine {cosine:.4f}, norm ratio {norm:.4f}, worst tensor {worst:.3f}",
                  "tolerance": f"cosine ≥ {BF16_COSINE}, norm ±{100 * BF16_NORM:g} %, "
                               f"each tensor ±{100 * BF16_TENSOR:g} %", "ok": ok}
    row.failed = not ok


def check_attack(s: Settings, row: Row) -> None:
    """wpat's PGD-10 from x (no random start) on the device and on the CPU, on the same model."""
    parts = [CHECK_SETTING, ["perturb.name=none", "attack.steps=10", "attack.random_start=false"], MODES["fp32"][1]]
    cpu = s.open("preact_resnet18", *parts, batch=CHECK_BATCH, device=torch.device("cpu"))
    dev = s.open("preact_resnet18", *parts, batch=CHECK_BATCH)
    dev.model.load_state_dict(cpu.model.state_dict())
    x, y, _ = next(cpu.batches())
    reference = cpu.attack(cpu.model, x, y)
    with exact_fp32(s.device):
        result = dev.attack(dev.model, x.to(s.device), y.to(s.device)).cpu()
    agree = float(((result - reference).abs() <= 1e-5).float().mean())
    row.values = {"measured": f"{100 * agree:.3f} % of pixels equal",
                  "tolerance": f"≥ {100 * ATTACK_AGREEMENT:g} % of pixels", "ok": agree >= ATTACK_AGREEMENT}
    row.failed = agree < ATTACK_AGREEMENT


def correctness(s: Settings) -> tuple[Section, Callable[[Report, Budget], None]]:
    section = Section(
        "Correctness: the device against the CPU",
        "Training steps from the same weights on the same batches and adversarial examples, on the device "
        "and on the CPU; the examples are crafted on the CPU by the run's own attack (each device draws "
        "the attack's random start from its own generator), so the step itself is compared: the search "
        "for v, the update at w + v, the BatchNorm statistics. The runs are `cifar10-preactresnet18-linf` "
        "with each method's overrides in the setting where docs/design.md's bf16 tolerance was measured "
        "(tests/test_fast_path.py: a width-4 small CNN, normalization 0.3/0.3, PGD-3 of ε = 0.1 and step "
        f"0.05 in eval mode, plain SGD), at batch {CHECK_BATCH}. PreAct ResNet-18 at initialization on "
        "random images is no place for an element-wise comparison: its training step is so "
        "ill-conditioned that two fp32 AT steps on the CPU lie 2 % from the same steps in float64, "
        "AT-AWP's 20 %, AT-RWP's 62 % (batch 16, measured on a CPU).\n\n"
        f"*fp32* ({FP32_STEPS} steps, TF32 off): every tensor of the state (weights, biases, BatchNorm "
        "parameters and running statistics) must change on the device as on the CPU, within "
        f"{FP32_MARGIN:g}× the CPU fp32 steps' own error on that tensor (their distance from the same steps "
        f"in float64), and at least {FP32_FLOOR:g}: a BatchNorm network's conv gradients are "
        "ill-conditioned where they come from cancellation, the other tensors agree with float64 to "
        "about 1e-6 and are held to the floor. *update*: the relative difference of the whole conv and "
        "linear update.\n\n"
        "*bf16* (one step under autocast on the device) against the fp32 step on the CPU, under "
        "docs/design.md's tolerance (\"Mixed precision\"): cosine ≥ 0.99 with the fp32 update, its norm "
        "within 5 %, each tensor's update within 25 %.\n\n"
        "*attack*: PGD-10 from x (no random start) on both sides; at least "
        f"{100 * ATTACK_AGREEMENT:g} % of the pixels must agree (a sign step can flip on a near-zero input "
        "gradient).",
        ["check", "precision"], ["measured", "tolerance", "verdict"],
        render=lambda r: [r.values["measured"], r.values["tolerance"], "pass" if r.values["ok"] else "FAIL"])
    rows = {(label, mode): Row([label, mode]) for label, _ in CHECKS for mode in ("fp32", "bf16")}
    attack_row = Row(["PGD-10 attack, no random start", "fp32"])
    section.rows = [*rows.values(), attack_row]

    def run(report: Report, budget: Budget) -> None:
        for label, method in CHECKS:
            for mode, check in (("fp32", check_fp32), ("bf16", check_bf16)):
                row = rows[label, mode]
                attempt(report, budget, row, lambda: check(s, method, row))  # noqa: B023 (called at once)
        attempt(report, budget, attack_row, lambda: check_attack(s, attack_row))

    return section, run


# ------------------------------------------------------------------------------- throughput


def measure(s: Settings, model: str, method: Method, mode: str, row: Row, time_row: Row | None,
            grid: Grid) -> None:
    """Throughput of one (model, method, mode); in the profiled mode also where the time goes."""
    run = s.open(model, method.overrides, MODES[mode][1])
    try:
        feed = run.batches()
        attack = (lambda m, x, y: x) if method.clean else None

        def one() -> None:
            x, y, weights = next(feed)
            run.step(x, y, weights, attack)

        for _ in range(s.warmup + (2 if run.cfg.run.compile else 0)):  # compiling takes the first calls
            one()
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        seconds = timed(one, s.steps, s.device)
        row.values = {"seconds": seconds, "batch": run.cfg.data.batch_size}
        if s.device.type == "cuda":
            row.values["memory"] = torch.cuda.max_memory_allocated(s.device) / 2**30
        if not run.cfg.run.compile and (model, method.label) not in grid.flops:
            grid.flops[model, method.label] = count_flops(one)  # the same arithmetic in every mode
        if time_row is not None:
            where_the_time_goes(s, run, feed, attack, seconds, time_row)
    finally:
        run.close()


def where_the_time_goes(s: Settings, run: Run, feed: Iterator, attack: Callable | None, seconds: float,
                        row: Row) -> None:
    """Host syncs, kernel time and the busiest kernels of a run already warm; a failure here is
    this row's, not the throughput row's."""
    def one() -> None:
        x, y, weights = next(feed)
        run.step(x, y, weights, attack)

    try:
        values: dict[str, Any] = {"seconds": seconds}
        if s.device.type == "cuda":
            batch: list = []
            values["loader_syncs"] = host_syncs(lambda: batch.append(next(feed)))
            values["step_syncs"] = host_syncs(lambda: run.step(*batch[0], attack))
        values["kernel_s"], values["top"] = profile(one, s.profiled, s.device)
        row.values, row.measured = values, True
    except Exception as err:
        row.note, row.failed = f"error: {one_line(err)}", True


def throughput_section(s: Settings, model: str, grid: Grid) -> Section:
    rows = grid.rows[model]
    modes = {label: key for key, (label, _) in MODES.items()}

    def render(row: Row) -> list[str]:
        v, (method, mode) = row.values, (row.label[0], modes[row.label[1]])
        t, batch = v["seconds"], v["batch"]
        at = rows.get((AT.label, mode))
        flops = grid.flops.get((model, method))
        achieved = flops / t / 1e12 if flops else None
        return [f"{batch / t:,.0f}", f"{1e3 * t:,.1f}",
                f"{t / at.values['seconds']:.2f}×" if at is not None and at.measured else "-",
                f"{CIFAR10_TRAIN // batch * t:,.1f}", f"{flops / 1e9:,.1f}" if flops else "-",
                f"{achieved:,.1f}" if achieved is not None else "-",
                f"{100 * achieved / grid.peak:.1f} %" if achieved is not None and grid.peak else "-",
                f"{v['memory']:.2f}" if "memory" in v else "-"]

    stand_in = f" (`--smoke` stand-in: `{' '.join(MODELS[model][2] + SMOKE)}`)" if s.smoke else ""
    return Section(
        f"{MODELS[model][0]}: throughput",
        f"`{MODELS[model][1]}`{stand_in} with each method's overrides, batch {s.batch}: {s.warmup} warm-up "
        f"step(s) (two more when compiling), then the mean of {s.steps} timed step(s). *× AT*: against AT "
        f"in the same mode. *epoch*: {CIFAR10_TRAIN:,} // batch steps at this rate. *GFLOP/step*: counted "
        "once per method by `torch.utils.flop_counter` (convolutions and matrix products, forward and "
        "backward) in the first eager mode; *% of bf16 peak* is against the device's dense bf16 peak in "
        "every mode. *memory*: the peak allocated during the timed steps.",
        ["step", "mode"],
        ["images/s", "ms/step", "× AT", "epoch (s)", "GFLOP/step", "TFLOP/s", "% of bf16 peak", "memory (GiB)"],
        render, rows=list(rows.values()))


def time_section(s: Settings, model: str, grid: Grid) -> Section:
    def render(row: Row) -> list[str]:
        v = row.values
        top = "; ".join(f"{name[:70]} {100 * share:.0f} %" for name, share in v["top"])
        if s.device.type != "cuda":
            return ["n/a (CPU)", f"{1e3 * v['seconds']:,.1f}", "n/a", "n/a (CPU)", "n/a (CPU)", f"CPU ops: {top}"]
        return [f"{1e3 * v['kernel_s']:,.1f}", f"{1e3 * v['seconds']:,.1f}",
                f"{100 * v['kernel_s'] / v['seconds']:.0f} %", str(v["step_syncs"]), str(v["loader_syncs"]), top]

    return Section(
        f"{MODELS[model][0]}: where the time goes ({MODES[PROFILED][0]})",
        f"Kernel time per step from `torch.profiler` (the device's kernel durations over {s.profiled} "
        "profiled step(s), per step) against the unprofiled wall time per step of the throughput table: a low share "
        "means the device waits for the host (launches, Python, syncs). Host syncs: CUDA calls that made "
        "the host wait, counted with `torch.cuda.set_sync_debug_mode(\"warn\")` over one training step "
        "and over the loader's next batch. The three busiest kernels, with their share of kernel time.",
        ["step"], ["kernel ms/step", "wall ms/step", "kernel share", "host syncs/step", "syncs/loader batch",
                   "busiest kernels"], render, rows=list(grid.times[model].values()))


def throughput(s: Settings, grid: Grid, models: list[str], modes: list[str]) -> Callable[[Report, Budget], None]:
    def run(report: Report, budget: Budget) -> None:
        for model in models:
            if COMPILED in modes:
                import torch._dynamo
                torch._dynamo.reset()  # a fresh cache per model keeps recompiles under dynamo's limit
            for mode in modes:
                for method in METHODS:
                    row = grid.rows[model].get((method.label, mode))
                    if row is None:
                        continue
                    if s.smoke and mode == COMPILED:
                        row.note = ("skipped: --smoke does not compile (minutes on a CPU; "
                                    "`pytest -m slow` checks the compiled step there)")
                        continue
                    time_row = grid.times[model].get(method.label) if mode == PROFILED else None
                    attempt(report, budget, row,
                            lambda: measure(s, model, method, mode, row, time_row, grid),  # noqa: B023 (run at once)
                            kind=(model, method.label, mode == COMPILED))
                    if time_row is not None and not row.measured:  # the time row says why too
                        time_row.note, time_row.failed = row.note, row.failed
    return run


# ------------------------------------------------------------------------------- extra data


def stream(s: Settings) -> tuple[Section, Callable[[Report, Budget], None]]:
    row = Row([f"PreAct ResNet-18, AT (PGD-10), {MODES[PROFILED][0]}"])
    section = Section(
        "Extra data: the stream feeding the device",
        f"`data.extra` = {s.stream_images:,} random images in one `.npz`, `data.extra_fraction=0.5` (RST): "
        f"half of every batch of {s.batch} comes from `ExtraStream` (a reading thread, pinned memory, a "
        "side CUDA stream). *delivered*: extra images/s the stream hands over when drained alone; "
        "*consumed*: extra images/s the AT step takes when fed by it. Then the step's images/s fed by the "
        "stream against the same step on a batch already on the device; a ratio above 1 is time the step "
        "waits for data.",
        ["run"], ["delivered (extra img/s)", "consumed (extra img/s)", "headroom", "step img/s, fed",
                  "step img/s, resident", "resident / fed"],
        lambda r: [f"{r.values['delivered']:,.0f}", f"{r.values['consumed']:,.0f}",
                   f"{r.values['delivered'] / r.values['consumed']:.1f}×", f"{r.values['fed']:,.0f}",
                   f"{r.values['resident']:,.0f}", f"{r.values['resident'] / r.values['fed']:.3f}×"],
        rows=[row])

    def work() -> None:
        rng = np.random.default_rng(1)
        npz = write_npz(s.work / "extra.npz", rng.integers(0, 256, (s.stream_images, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, s.stream_images))
        run = s.open("preact_resnet18", AT.overrides, MODES[PROFILED][1],
                     [f"data.extra={npz}", "data.extra_fraction=0.5"])
        try:
            extra, n_extra = run.extra_stream()
            extra.next_batch(n_extra)  # starts the reading thread, which reads the first window
            drained = max(20, min(200, s.stream_images // n_extra))
            delivered = n_extra / timed(lambda: extra.next_batch(n_extra), drained, s.device)
            feed = run.batches()
            one = lambda: run.step(*next(feed))  # noqa: E731
            for _ in range(s.warmup):
                one()
            fed = timed(one, s.steps, s.device)
            resident_batch = next(feed)
            resident = timed(lambda: run.step(*resident_batch), s.steps, s.device)
            batch = run.cfg.data.batch_size
            row.values = {"delivered": delivered, "consumed": n_extra / fed, "fed": batch / fed,
                          "resident": batch / resident}
        finally:
            run.close()

    return section, lambda report, budget: attempt(report, budget, row, work)


# ----------------------------------------------------------------------------------- NCCL


def nccl(s: Settings) -> tuple[Section, Callable[[Report, Budget], None]]:
    backend = "nccl" if s.device.type == "cuda" else "gloo"
    row = Row([backend])
    section = Section(
        "One-process NCCL group",
        f"`torch.distributed` with backend {backend}, one rank, a file store: init, an all-reduce of "
        f"{s.allreduce_floats:,} fp32 values (PreAct ResNet-18's gradient, what a multi-GPU step reduces; "
        "the mean of 5 after one warm-up) whose result must equal its input, a barrier, teardown. It "
        "checks the library and the device; wpat's multi-process step needs two GPUs or more.",
        ["backend"], ["init (s)", "all-reduce (ms)", "GB/s", "result", "teardown (s)"],
        lambda r: [f"{r.values['init']:.2f}", f"{1e3 * r.values['allreduce']:.2f}",
                   f"{4 * s.allreduce_floats / r.values['allreduce'] / 1e9:,.1f}",
                   "equal" if r.values["equal"] else "DIFFERENT", f"{r.values['teardown']:.2f}"],
        rows=[row])

    def work() -> None:
        import torch.distributed as dist
        started = time.perf_counter()
        dist.init_process_group(backend, init_method=f"file://{s.work / 'store'}", rank=0, world_size=1)
        try:
            init = time.perf_counter() - started
            values = torch.randn(s.allreduce_floats, device=s.device)
            expected = values.clone()
            dist.all_reduce(values)
            seconds = timed(lambda: dist.all_reduce(values), 5, s.device)
            equal = bool(torch.equal(values, expected))
            dist.barrier()
        finally:
            started = time.perf_counter()
            if dist.is_initialized():
                dist.destroy_process_group()
        row.values = {"init": init, "allreduce": seconds, "equal": equal, "teardown": time.perf_counter() - started}
        row.failed = not equal

    return section, lambda report, budget: attempt(report, budget, row, work)


# -------------------------------------------------------------------------------------- main


SECTIONS = ("correctness", "throughput", "stream", "nccl", "compile")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="toy sizes on the CPU: stand-in models, batch 8, one step per row, no compiling")
    parser.add_argument("--dry-run", action="store_true", help="measure nothing; write the page of planned rows")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke or --dry-run)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run (default 420)")
    parser.add_argument("--out", default=None,
                        help=f"the page to write (default: {DEFAULT_OUT.relative_to(ROOT)} for a full run on a "
                             "GPU and for --dry-run; none otherwise)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="a subset of " + ",".join(SECTIONS))
    parser.add_argument("--models", default=",".join(MODELS), help="a subset of " + ",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES), help="a subset of " + ",".join(MODES))
    parser.add_argument("--batch", type=int, default=None, help="throughput batch (default 128; 8 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 5; 1 with --smoke)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per row (default 2; 0 with --smoke)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak in TFLOP/s (default: from its name)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable), e.g. --set attack.steps=5")
    args = parser.parse_args(argv)
    for name, allowed in (("sections", SECTIONS), ("models", tuple(MODELS)), ("modes", tuple(MODES))):
        chosen = [x for x in getattr(args, name).split(",") if x]
        bad = [x for x in chosen if x not in allowed]
        if bad or not chosen:
            parser.error(f"--{name}: {', '.join(bad) or 'nothing chosen'}; choose from {','.join(allowed)}")
        setattr(args, name, chosen)
    for name, low in (("batch", 1), ("steps", 1), ("warmup", 0)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            parser.error(f"--{name}: {getattr(args, name)} is below {low}")
    if not args.budget > 0:
        parser.error("--budget: give a positive number of seconds")
    try:
        torch.device(args.device or "cpu")
    except RuntimeError:
        parser.error(f"--device: {args.device!r} is not a device (cuda, cuda:N, cpu)")
    return args


def facts_of(args: argparse.Namespace, device: torch.device, peak: float | None) -> dict[str, str]:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.dry_run:
        return {"device": "none yet", "page laid out": date}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"{torch.get_num_threads()} torch threads)")
    facts = {
        "device": name,
        "torch": torch.__version__,
        "CUDA": str(torch.version.cuda),
        "cuDNN": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
        "date": date,
        "bf16 peak": f"{peak:g} TFLOP/s" if peak else "unknown (`--peak-tflops`)",
        "budget": f"{args.budget:g} s",
    }
    if device.type == "cuda":  # what "fp32" means in the throughput tables
        facts["fp32"] = (f"TF32 convolutions {torch.backends.cudnn.allow_tf32}, TF32 matmul "
                         f"{torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark "
                         f"{torch.backends.cudnn.benchmark} (PyTorch's defaults; wpat sets none of them)")
    return facts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke or args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: error: no CUDA device here; `--smoke` runs toy sizes on the CPU (no GPU figure)",
              file=sys.stderr)
        return 2
    if args.out is None and not args.smoke and (device.type == "cuda" or args.dry_run):
        args.out = str(DEFAULT_OUT)
    try:  # a bad --set is one line, before anything runs
        load_config(MODELS["preact_resnet18"][1], args.set)
    except WpatError as err:
        print(f"gpu.py: error: --set: {err}", file=sys.stderr)
        return 2
    peak = peak_tflops(device, args.peak_tflops)
    with tempfile.TemporaryDirectory(prefix="wpat-gpu-") as tmp:
        s = Settings(
            device=device, smoke=args.smoke, work=Path(tmp), batch=args.batch or (8 if args.smoke else 128),
            steps=args.steps or (1 if args.smoke else 5),
            warmup=args.warmup if args.warmup is not None else (0 if args.smoke else 2),
            stream_images=2048 if args.smoke else 50_000,
            allreduce_floats=100_000 if args.smoke else 11_172_170, profiled=1 if args.smoke else 2,
            extra=list(args.set))
        report = Report(args, device, facts_of(args, device, peak), Grid({}, {}, peak=peak))
        work = lay_out(report, s)
        if args.dry_run:
            for row in report.rows():
                row.note = "not measured yet"
        else:
            # Enough images for any batch; the loader reshuffles them every epoch.
            fabricate_cifar10(s.work / "cifar10", n_train=max(4 * s.batch, 512), n_test=64)
            run_all(report, work)
        if not args.dry_run:
            report.facts["elapsed"] = f"{time.monotonic() - START:.0f} s"
        report.write()
    print(report.markdown())
    if args.out:
        print(f"written to {args.out}", file=sys.stderr)
    return 1 if any(r.failed for r in report.rows()) else 0


def lay_out(report: Report, s: Settings) -> list[Callable[[Report, Budget], None]]:
    """Every section with every row (so each appears, measured or with the reason it is not),
    and the work that fills them, in the order it runs."""
    args, grid = report.args, report.grid
    work: list[Callable[[Report, Budget], None]] = []
    if "correctness" in args.sections:
        section, run = correctness(s)
        report.sections.append(section)
        work.append(run)
    modes = [m for m in args.modes if m != COMPILED or "compile" in args.sections]
    eager = [m for m in modes if m != COMPILED]
    if "throughput" not in args.sections:
        modes, eager = [m for m in modes if m == COMPILED], []
    for model in args.models if modes else []:
        grid.rows[model] = {(m.label, mode): Row([m.label, MODES[mode][0]])
                            for mode in modes for m in METHODS if m.only in (None, mode)}
        grid.times[model] = {m.label: Row([m.label]) for m in METHODS} if PROFILED in eager else {}
        report.sections.append(throughput_section(s, model, grid))
        if grid.times[model]:
            report.sections.append(time_section(s, model, grid))
    for name, build in (("stream", stream), ("nccl", nccl)):  # quick: before the long grid
        if name in args.sections:
            section, run = build(s)
            report.sections.append(section)
            work.append(run)
    if eager:
        work.append(throughput(s, grid, args.models, eager))
    if COMPILED in modes:
        work.append(throughput(s, grid, args.models, [COMPILED]))
    return work


def run_all(report: Report, work: list[Callable[[Report, Budget], None]]) -> None:
    budget = Budget(report.args.budget)
    budget.arm()
    try:
        for run in work:
            run(report, budget)
    except OutOfTime:
        for row in report.rows():
            if row.note == NOT_REACHED:
                row.note = f"skipped: the {budget.seconds:g} s budget ran out"
    finally:
        budget.disarm()


if __name__ == "__main__":
    sys.exit(main())
