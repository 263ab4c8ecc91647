"""Batches of extra data too large for the device, streamed from files with bounded memory.

    from wpat.data.extra import open_extra
    from wpat.data.stream import ExtraStream

    extra = open_extra("5m.npz", shape=(3, 32, 32), num_classes=10)
    with ExtraStream(extra, 128, seed=0, device="cuda", augment="crop_flip") as stream:
        stream.seek(epoch)                           # a new epoch: a new order
        x, y = stream.next_batch()                   # float32 [128, 3, 32, 32] in [0, 1], int64 [128]
        x2, y2 = stream.next_batch(64)               # any number of examples per call
        saved = stream.state()                       # {"epoch", "position", ...}, plain ints
    stream.load_state(saved)                         # continue bitwise from there

**Order.** One *pass* over the N examples is shuffled in two levels: the file is cut into
blocks of ``block_size`` consecutive examples; a seeded permutation orders the blocks; the
blocks are taken ``window`` at a time (a window, ``block_size * window`` examples, is all that
is held in memory), and a seeded permutation orders the examples of each window. Each example
appears once per pass. An epoch is an endless sequence of passes, each with its own
permutations; every permutation comes from NumPy's ``SeedSequence`` of ``(seed, epoch, pass,
...)``, so the order is a function of ``(seed, epoch)`` alone.

**Position.** ``position`` counts the examples already consumed in the epoch (it exceeds N in a
second pass). ``seek(epoch, position)`` and ``load_state`` restart the stream there: the
window holding ``position`` is re-read and its first examples skipped, so a resumed run draws
bitwise the batches it would have drawn. Augmentation (``augment``/``padding``, the names of
:mod:`wpat.data.loader`) of a batch is drawn from a generator seeded by ``(seed, epoch,
position at the batch's start)``, so it replays as well, whatever happened before.

**Memory and threads.** A background thread reads the window's blocks with positioned reads
(:mod:`wpat.data.npz`; no memory map, so nothing stays resident), gathers the permuted examples
in pieces of ``block_size``, transposes them to ``uint8`` NCHW and moves each piece to the
device (pinned memory and a side CUDA stream on a GPU, so the copy overlaps the training step),
keeping at most ``prefetch`` pieces ahead. Host memory is therefore about one window plus
``prefetch`` pieces and a few transient copies (at the defaults and CIFAR's 3 KiB images:
48 MiB + 4 x 3 MiB; docs/benchmarks/stream.md measures the growth), whatever the file size. The
training thread only slices pieces and casts them to ``float32`` on the device. ``close()`` (or
leaving a ``with`` block) stops the thread.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Any, Iterator

import numpy as np
import torch

from wpat.data.extra import ExtraData
from wpat.data.loader import AUGMENTATIONS, PADDINGS
from wpat.helpers.errors import WpatError

_ORDER, _WINDOW, _AUGMENT = 0, 1, 2  # tags that keep the seed streams apart


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


def pass_windows(n: int, block_size: int, window: int, seed: int, epoch: int, pass_: int) -> list[np.ndarray]:
    """The blocks of each window of pass ``pass_`` (block ``b`` holds examples
    ``[b*block_size, (b+1)*block_size)``), each window's blocks in ascending order (file order)."""
    blocks = _rng(seed, epoch, pass_, _ORDER).permutation(math.ceil(n / block_size))
    return [np.sort(blocks[i:i + window]) for i in range(0, len(blocks), window)]


def window_rows(n: int, block_size: int, blocks: np.ndarray) -> np.ndarray:
    """The file indices of a window's examples, block after block."""
    return np.concatenate([np.arange(b * block_size, min((b + 1) * block_size, n)) for b in blocks])


def window_permutation(size: int, seed: int, epoch: int, pass_: int, w: int) -> np.ndarray:
    """The order (into :func:`window_rows`) in which window ``w``'s examples are streamed."""
    return _rng(seed, epoch, pass_, _WINDOW, w).permutation(size)


def stream_order(n: int, *, seed: int, epoch: int, pass_: int = 0, block_size: int, window: int) -> np.ndarray:
    """All N file indices of one pass in stream order (for checks; O(N) memory)."""
    windows = pass_windows(n, block_size, window, seed, epoch, pass_)
    rows = [window_rows(n, block_size, blocks) for blocks in windows]
    return np.concatenate([r[window_permutation(len(r), seed, epoch, pass_, w)] for w, r in enumerate(rows)])


class ExtraStream:
    """Endless ``(x float32 [n,C,H,W] in [0,1], y int64 [n])`` batches of :class:`ExtraData`.

    Args:
        data: labeled extra data (:func:`wpat.data.extra.open_extra`).
        batch_size: examples per ``next_batch()`` without an argument.
        seed: with the epoch, determines order and augmentation (an integer >= 0).
        epoch, position: where the stream starts (see the module docstring).
        device: where batches are returned.
        block_size: consecutive examples per block, the unit of file reads and of pieces sent
            to the device (default 1024: 3 MiB of 32x32x3 images).
        window: blocks shuffled together in memory (default 16).
        prefetch: pieces prepared ahead by the background thread (default 4).
        augment, padding: an augmentation of :data:`wpat.data.AUGMENTATIONS` and its padding.
    """

    def __init__(self, data: ExtraData, batch_size: int = 128, *, seed: int = 0, epoch: int = 0,
                 position: int = 0, device: str | torch.device = "cpu", block_size: int = 1024,
                 window: int = 16, prefetch: int = 4, augment: str = "none", padding: str = "zeros") -> None:
        for name, value, low in (("batch_size", batch_size, 1), ("block_size", block_size, 1),
                                 ("window", window, 1), ("prefetch", prefetch, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise WpatError(f"ExtraStream: {name} must be an integer >= {low}, got {value!r}")
        if not data.labeled:
            raise WpatError(f"ExtraStream: {', '.join(map(str, data.paths))} has no labels; "
                            f"pseudo-label it first with `wpat pseudolabel`")
        if len(data) == 0:
            raise WpatError(f"ExtraStream: {', '.join(map(str, data.paths))} holds no examples")
        if padding not in PADDINGS:
            raise WpatError(f"ExtraStream: padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        self._augment = AUGMENTATIONS.get(augment)
        self.augment, self.padding = augment, padding
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.block_size, self.window, self.prefetch = block_size, window, prefetch
        self.device = torch.device(device)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(prefetch)
        self._piece: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cursor = 0
        self.seek(epoch, position)

    # ------------------------------------------------------------------ position

    def seek(self, epoch: int, position: int = 0) -> None:
        """Continue from ``position`` examples into ``epoch`` (a new epoch: ``seek(epoch)``)."""
        if min(epoch, position) < 0:
            raise WpatError(f"ExtraStream: epoch and position must be >= 0, got {epoch}, {position}")
        self._halt()
        self.epoch, self.position = int(epoch), int(position)

    def state(self) -> dict[str, Any]:
        """Plain ints to store in a checkpoint: where the stream is and what it was reading."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "examples": len(self.data), "block_size": self.block_size, "window": self.window}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state`; the data and settings must be those it was taken with."""
        mine = self.state()
        changed = [k for k in ("seed", "examples", "block_size", "window") if state.get(k) != mine[k]]
        if changed:
            raise WpatError("ExtraStream: the saved stream state does not match this stream ("
                            + ", ".join(f"{k} {state.get(k)} saved, {mine[k]} now" for k in changed)
                            + "); resume with the same extra data and settings")
        self.seek(int(state["epoch"]), int(state["position"]))

    # ------------------------------------------------------------------ batches

    def next_batch(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` (default ``batch_size``) examples, on the device, augmented."""
        n = self.batch_size if n is None else n
        if n < 1:
            raise WpatError(f"ExtraStream: a batch needs at least 1 example, got {n}")
        if self._thread is None:
            self._start()
        xs, ys, got = [], [], 0
        while got < n:
            if self._piece is None or self._cursor == len(self._piece[1]):
                self._piece, self._cursor = self._take(), 0
            take = min(n - got, len(self._piece[1]) - self._cursor)
            xs.append(self._piece[0][self._cursor:self._cursor + take])
            ys.append(self._piece[1][self._cursor:self._cursor + take])
            self._cursor += take
            got += take
        x = (xs[0] if len(xs) == 1 else torch.cat(xs)).to(torch.float32).div_(255)
        y = ys[0] if len(ys) == 1 else torch.cat(ys)
        if self.augment != "none":
            generator = torch.Generator(device=self.device)
            key = _rng(self.seed, self.epoch, self.position, _AUGMENT).integers(2**63)
            generator.manual_seed(int(key))
            x = self._augment(x, generator, self.padding)
        self.position += n
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def close(self) -> None:
        """Stop the background thread (the stream can still seek and continue afterwards)."""
        self._halt()

    def __enter__(self) -> "ExtraStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ background thread

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(self.prefetch)
        self._thread = threading.Thread(target=self._produce, args=(self.epoch, self.position, self._stop),
                                        name="wpat-extra-stream", daemon=True)
        self._thread.start()

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()
        self._thread, self._piece, self._cursor = None, None, 0

    def _take(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if self._thread is None or not self._thread.is_alive():
                    raise WpatError("ExtraStream: the reading thread stopped unexpectedly") from None
        if isinstance(item, BaseException):
            self._thread.join()
            self._thread = None
            raise item
        x, y, ready = item
        if ready is not None:  # CUDA: wait for the side stream's copy, then keep x alive for ours
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            x.record_stream(current)
            y.record_stream(current)
        return x, y

    def _put(self, item: object, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _produce(self, epoch: int, position: int, stop: threading.Event) -> None:
        try:
            n, k = len(self.data), self.block_size
            pass_, skip = divmod(position, n)
            copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            while not stop.is_set():
                for w, blocks in enumerate(pass_windows(n, k, self.window, self.seed, epoch, pass_)):
                    size = sum(min(k, n - int(b) * k) for b in blocks)
                    if skip >= size:  # a window before the resume position: not read
                        skip -= size
                        continue
                    images, labels = self._read_window(blocks)
                    order = window_permutation(size, self.seed, epoch, pass_, w)[skip:]
                    skip = 0
                    for i in range(0, len(order), k):
                        index = order[i:i + k]
                        nchw = np.ascontiguousarray(images[index].transpose(0, 3, 1, 2))
                        piece = self._to_device(nchw, labels[index], copy_stream)
                        if not self._put(piece, stop):
                            return
                    del images, labels  # before the next window is read: one window at a time
                pass_ += 1
        except BaseException as err:  # handed to the training thread, which raises it
            self._put(err, stop)

    def _read_window(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples of ``blocks``, block after block, read straight into one buffer with
        one positioned read per run of consecutive blocks."""
        n, k = len(self.data), self.block_size
        c, h, w = self.data.shape
        size = sum(min(k, n - int(b) * k) for b in blocks)
        images, labels = np.empty((size, h, w, c), np.uint8), np.empty(size, np.int64)
        filled, start = 0, int(blocks[0])
        for i, b in enumerate(blocks):
            if i + 1 == len(blocks) or int(blocks[i + 1]) != int(b) + 1:  # the end of a run
                lo, hi = start * k, min((int(b) + 1) * k, n)
                self.data.read(lo, hi, out=(images[filled:filled + hi - lo], labels[filled:filled + hi - lo]))
                filled += hi - lo
                if i + 1 < len(blocks):
                    start = int(blocks[i + 1])
        return images, labels

    def _to_device(self, images: np.ndarray, labels: np.ndarray, copy_stream: Any) -> tuple:
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        if copy_stream is None:
            return x.to(self.device), y.to(self.device), None
        with torch.cuda.stream(copy_stream):
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(copy_stream)
        return x, y, ready
