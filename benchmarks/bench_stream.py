"""Streaming extra data: loader throughput against a training step, and host memory vs file size.

    python benchmarks/bench_stream.py [--sizes 1000000,5000000] [--images 1000000] [--steps 6]

1. Fabricates uncompressed ``.npz`` files of N random-looking 32x32x3 uint8 images with labels
   (3,072 bytes per image: 1M images = 3.1 GB, 5M = 15.4 GB), written in 64 MiB chunks, after
   checking the free disk space. Where the disk cannot hold a file, its image data is written as
   a hole of a sparse file (the zip and ``.npy`` headers, CRC and labels are real; the pages are
   never materialised and read back as zeros), and the table says so.
2. For each file, in a fresh subprocess (so that ``ru_maxrss`` belongs to that file alone), with
   the file's pages first dropped from the OS page cache (``posix_fadvise(DONTNEED)``, so reads
   come from disk): opens it (labels checked), then draws ``--images`` examples with
   :class:`wpat.data.stream.ExtraStream` in batches of ``--batch`` (float32 NCHW on the CPU) and
   reports images/s and the peak resident memory before and after streaming.
3. Times a PGD-10 AT training step (``wpat.training.step.train_step``) of the small CNN on 32x32x3 at
   batch 128 (``--threads`` torch threads), and the same step fed from the stream (each step
   draws its batch with ``next_batch``), so the ratio loader/consumption and the stall a step
   sees are measured on the same machine.

The files are deleted afterwards (``--keep`` keeps them). The table goes to
docs/benchmarks/stream.md. Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

IMAGE = (32, 32, 3)
CHUNK = 1 << 14  # images per write: 16,384 x 3,072 bytes = 50 MB


class _HoleWriter:
    """A file object for zipfile that turns writes of the shared zero chunk into holes."""

    def __init__(self, f, zeros: np.ndarray) -> None:
        self.f, self.zeros = f, zeros

    def write(self, data) -> int:
        if getattr(data, "obj", None) is self.zeros:
            self.f.seek(len(data), os.SEEK_CUR)
            return len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def fabricate(path: Path, n: int, sparse: bool) -> float:
    """Write ``n`` images (a repeated random pattern, or holes) and labels; seconds taken."""
    started = time.perf_counter()
    pattern = np.random.default_rng(0).integers(0, 256, (CHUNK, *IMAGE), dtype=np.uint8)
    zeros = np.zeros_like(pattern)
    source = zeros if sparse else pattern
    with open(path, "wb") as raw:
        archive = zipfile.ZipFile(_HoleWriter(raw, zeros), "w", zipfile.ZIP_STORED, allowZip64=True)
        with archive.open("image.npy", "w", force_zip64=True) as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": (n, *IMAGE)}
            np.lib.format.write_array_header_2_0(f, header)
            for start in range(0, n, CHUNK):
                rows = min(CHUNK, n - start)
                f.write(memoryview(source).cast("B")[: rows * pattern[0].nbytes] if rows < CHUNK
                        else memoryview(source).cast("B"))
        with archive.open("label.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, {"descr": "<i8", "fortran_order": False, "shape": (n,)})
            for start in range(0, n, CHUNK):
                f.write((np.arange(start, min(start + CHUNK, n)) % 10).astype(np.int64).tobytes())
        archive.close()
        raw.truncate()
        os.fsync(raw.fileno())
    return time.perf_counter() - started


def drop_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def child(args: argparse.Namespace) -> None:
    """Runs in a subprocess: stream ``args.images`` examples of ``args.child``; print JSON."""
    import torch

    from wpat.data.extra import open_extra
    from wpat.data.stream import ExtraStream

    torch.set_num_threads(args.threads)
    maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731 (Linux: KiB)
    started = time.perf_counter()
    data = open_extra(args.child)
    opened = time.perf_counter() - started
    before = maxrss()
    with ExtraStream(data, args.batch, seed=0, augment=args.augment) as stream:
        started, seen = time.perf_counter(), 0
        while seen < args.images:
            seen += len(stream.next_batch()[1])
        seconds = time.perf_counter() - started
    print(json.dumps({"open_s": opened, "images": seen, "seconds": seconds, "rss_before": before,
                      "rss_peak": maxrss()}))


def measure(path: Path, args: argparse.Namespace, augment: str) -> dict:
    drop_cache(path)
    command = [sys.executable, __file__, "--child", str(path), "--images", str(args.images),
               "--batch", str(args.batch), "--augment", augment, "--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_rates(path: Path, args: argparse.Namespace) -> dict:
    """Median seconds of an AT step on fixed tensors and on batches drawn from the stream."""
    import torch

    from wpat.attacks import PGD
    from wpat.data.extra import open_extra
    from wpat.data.stream import ExtraStream
    from wpat.models import build_model
    from wpat.objectives import OBJECTIVES, Batch
    from wpat.training.step import train_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=3, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    attack, objective = PGD(8 / 255, 2 / 255, 10, bn_mode="train"), OBJECTIVES.build("at")
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    fixed, streamed = [], []
    drop_cache(path)
    with ExtraStream(open_extra(path), args.batch, seed=0, augment="crop_flip") as stream:
        train_step(model, Batch(*stream.next_batch()), attack, objective, None, optimizer)  # warm-up
        for _ in range(args.steps):  # interleaved, so machine noise hits both alike
            started = time.perf_counter()
            train_step(model, Batch(x, y), attack, objective, None, optimizer)
            fixed.append(time.perf_counter() - started)
            started = time.perf_counter()
            train_step(model, Batch(*stream.next_batch()), attack, objective, None, optimizer)
            streamed.append(time.perf_counter() - started)
    return {"fixed": statistics.median(fixed), "streamed": statistics.median(streamed),
            "fixed_min": min(fixed), "streamed_min": min(streamed)}


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000", help="images per fabricated file")
    parser.add_argument("--images", type=int, default=1_000_000, help="images streamed per file")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--dir", default="/tmp/wpat-bench-stream")
    parser.add_argument("--sparse", action="store_true", help="write every file sparse")
    parser.add_argument("--keep", action="store_true", help="keep the fabricated files")
    parser.add_argument("--out", default="docs/benchmarks/stream.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--augment", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from wpat.helpers.tables import markdown_table

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    rows, notes, files = [], [], []
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            path = root / f"extra-{n}.npz"
            need = n * (np.prod(IMAGE) + 8) + (1 << 20)
            free = shutil.disk_usage(root).free
            sparse = args.sparse or need + (2 << 30) > free
            files.append(path)
            seconds = fabricate(path, n, sparse)
            disk = os.stat(path).st_blocks * 512
            notes.append(f"{n:,} images: {gb(os.path.getsize(path))} file ({gb(disk)} on disk"
                         f"{', sparse: image data is a hole' if sparse else ''}), written in {seconds:.0f} s "
                         f"with {gb(free)} free before")
            print(notes[-1], flush=True)
            for augment in (("none", "crop_flip") if n == min(int(s) for s in args.sizes.split(",")) else ("none",)):
                r = measure(path, args, augment)
                rows.append([f"{n:,}", "sparse" if sparse else "real", augment, f"{r['images']:,}",
                             f"{r['images'] / r['seconds']:,.0f}", f"{r['open_s']:.1f}",
                             f"{r['rss_before'] / 2**20:,.0f}", f"{r['rss_peak'] / 2**20:,.0f}",
                             f"{(r['rss_peak'] - r['rss_before']) / 2**20:,.0f}"])
                print(rows[-1], flush=True)
        rates = step_rates(files[0], args)
    finally:
        if not args.keep:
            for path in files:
                path.unlink(missing_ok=True)
    step_rate = args.batch / rates["fixed"]
    loader_rate = float(rows[0][4].replace(",", ""))
    crop_rate = float(next(r for r in rows if r[2] == "crop_flip")[4].replace(",", ""))
    table = markdown_table(["file (images)", "data", "augment", "streamed", "images/s", "open s",
                            "RSS before MiB", "RSS peak MiB", "growth MiB"], rows)
    facts = (f"CPU {platform.processor() or platform.machine()} ({_cpu()}), {os.cpu_count()} cores, "
             f"{_ram()} RAM, torch {_torch()} with {args.threads} thread(s), NumPy {np.__version__}, "
             f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f} at the end")
    text = f"""# Streaming extra data

Command: `python benchmarks/bench_stream.py --sizes {args.sizes} --images {args.images} --steps {args.steps}`

{facts}. ExtraStream defaults: blocks of 1,024 images, windows of 16 blocks, 4 pieces prefetched
by one background thread; batches of {args.batch}, float32 NCHW on the CPU. Each file is read cold
(its pages dropped from the page cache first) in a fresh subprocess; RSS is `ru_maxrss`.

{chr(10).join('- ' + note for note in notes)}

{table}

Consumption: a PGD-10 AT step (`wpat.training.step.train_step`) of the small CNN (width 32, 32x32x3,
batch {args.batch}) takes {1000 * rates['fixed']:,.0f} ms here (median; fastest {1000 * rates['fixed_min']:,.0f} ms),
{step_rate:,.0f} images/s; the loader delivers {loader_rate:,.0f} images/s, **{loader_rate / step_rate:,.0f}x**
what the step consumes. Drawing one batch takes the training thread at most {1000 * args.batch / loader_rate:.1f} ms
({1000 * args.batch / crop_rate:.1f} ms with crop and flip; the inverse of the streaming rate, waits on the
reading thread included), {100 * args.batch / crop_rate / rates['fixed']:.2f} % of a step.
The same step fed by the stream (each step draws its batch with `next_batch`, crop and flip
included) took {1000 * rates['streamed']:,.0f} ms (median; fastest {1000 * rates['streamed_min']:,.0f} ms) over
{args.steps} interleaved steps of each kind: {100 * (rates['streamed'] / rates['fixed'] - 1):+.1f} % (median),
{100 * (rates['streamed_min'] / rates['fixed_min'] - 1):+.1f} % (fastest), against a spread of
{100 * (rates['fixed'] / rates['fixed_min'] - 1):.0f} % between the fastest and the median fixed step on this
shared machine (load average above){_verdict(rates)}

{_rss_reading(rows)}
"""
    Path(args.out).write_text(text)
    print(text)


def _verdict(rates: dict) -> str:
    diff = abs(rates["streamed"] / rates["fixed"] - 1)
    spread = rates["fixed"] / rates["fixed_min"] - 1
    if diff <= max(spread, 0.02):
        return ": the difference is within the noise; the stream's own cost is the per-batch figure above."
    return ": the difference exceeds that spread."


def _rss_reading(rows: list[list[str]]) -> str:
    """What the table says about RSS against file size, from the numbers themselves."""
    plain = [r for r in rows if r[2] == "none"]
    growth = [float(r[8].replace(",", "")) for r in plain]
    peaks = [float(r[7].replace(",", "")) for r in plain]
    sizes = ", ".join(r[0] for r in plain)
    return (f"RSS against file size (files of {sizes} images, same number streamed): peak "
            f"{min(peaks):,.0f}-{max(peaks):,.0f} MiB, growth while streaming {min(growth):,.0f}-"
            f"{max(growth):,.0f} MiB. The stream holds one window plus the prefetched pieces (about "
            f"60 MiB at these settings) and reads with positioned reads, not a memory map, so the "
            f"file's pages stay in the OS page cache rather than in the process; the baseline is "
            f"the interpreter with torch imported.")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown model"


def _ram() -> str:
    return gb(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _torch() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
