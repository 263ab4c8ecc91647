"""Pseudo-labels for unlabeled extra data with a trained model (RST's labelling step).

    from wpat.training.pseudolabel import pseudolabel

    summary = pseudolabel("runs/cifar10-std", "unlabeled.npz", "pseudo.npz", batch_size=500)

The model is a run directory (its ``best.pt``, else ``last.pt``), a wpat checkpoint, or a foreign
state_dict with ``config`` naming its model and dataset (:func:`wpat.training.loading.model_from_checkpoint`).
The extra data (an ``.npz`` with ``image``, several parts, or RST's pickle; any labels in it are
ignored) must have the images of the model's dataset, stored NHWC. Each image gets the model's
top-1 class in eval mode, fp32, from ``float32`` inputs in [0, 1] (``uint8 / 255``).

Work is done in chunks of ``chunk_size`` examples. Each finished chunk's labels are kept in
``OUT.parts/`` beside ``OUT`` (written atomically), and a run started again after an
interruption reuses them, so only unfinished chunks are recomputed. ``OUT.parts/manifest.json``
records the model and extra files (path, size, modification time) and the chunk size; chunks of
another model or file are never mixed in. The output is an uncompressed ``.npz`` (``image``
uint8 NHWC as read, ``label`` int64), written atomically; ``OUT.parts`` is removed afterwards.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from wpat.configuration.config import Config
from wpat.data.extra import ExtraData, open_extra
from wpat.data.npz import NpzWriter
from wpat.data.specs import dataset_spec
from wpat.helpers.errors import WpatError
from wpat.training.experiment import resolve_device
from wpat.helpers.fs import atomic_file, writable_dir, write_text_atomic
from wpat.training.loading import model_from_checkpoint
from wpat.helpers.progress import Progress
from wpat.checkpoints.run_dir import find_checkpoint

MANIFEST = "manifest.json"


def predict(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Top-1 classes (int64 ``[n]``) of eval-mode ``model`` on uint8 NHWC ``images``."""
    labels = np.empty(len(images), np.int64)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            nhwc = torch.from_numpy(images[start:start + batch_size]).to(device)
            x = torch.empty(nhwc.permute(0, 3, 1, 2).shape, dtype=torch.float32, device=device)
            x.copy_(nhwc.permute(0, 3, 1, 2)).div_(255)
            labels[start:start + len(x)] = model(x).argmax(1).cpu().numpy()
    return labels


def _identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _parts_dir(out: Path, manifest: dict[str, Any]) -> Path:
    """``OUT.parts``, created with ``manifest``, or checked against the one it holds."""
    parts = out.with_name(out.name + ".parts")
    stored = parts / MANIFEST
    if stored.exists():
        try:
            found = json.loads(stored.read_text())
        except (OSError, ValueError):
            found = None
        if found != manifest:
            raise WpatError(f"{parts}: holds the chunks of another pseudo-labelling run (another model, "
                            f"extra data or chunk size); delete it or choose another output name")
    else:
        writable_dir(parts, "pseudolabel")
        write_text_atomic(stored, json.dumps(manifest, indent=1))
    return parts


def _load_chunk(path: Path, size: int) -> np.ndarray | None:
    """A finished chunk's labels, or None if absent or unreadable (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return labels if labels.shape == (size,) and labels.dtype == np.int64 else None


def _save_chunk(path: Path, labels: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, labels, allow_pickle=False)


def _checked_arguments(out: Path, batch_size: int, chunk_size: int, device: str) -> torch.device:
    """The device to label on, once the sizes, the output's name and the device are found good
    (each bad one is a one-line error before any model or data is read)."""
    for name, value in (("batch size", batch_size), ("chunk size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WpatError(f"pseudolabel: the {name} must be an integer >= 1, got {value!r}")
    if out.suffix != ".npz":
        raise WpatError(f"pseudolabel: the output must be an .npz file, got {out}")
    if out.exists():
        raise WpatError(f"pseudolabel: {out} already exists; delete it or choose another name")
    try:
        return resolve_device(device)
    except WpatError as err:
        raise WpatError(str(err).replace("run.device", "--device")) from None


def _remove_parts(parts: Path, chunk_paths: list[Path]) -> None:
    """The finished output no longer needs its chunks: remove them and their folder."""
    for path in chunk_paths:
        path.unlink(missing_ok=True)
    (parts / MANIFEST).unlink(missing_ok=True)
    try:
        parts.rmdir()
    except OSError:  # something else was put there: leave it
        pass


def pseudolabel(model: str | os.PathLike, extra: Any, out: str | os.PathLike, *,
                config: str | Config | None = None, batch_size: int = 500, device: str = "auto",
                chunk_size: int = 10_000, progress: bool | None = True,
                on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Label every image of ``extra`` with ``model`` and write ``out`` (see the module docstring).

    Args:
        model: run directory or checkpoint file.
        extra: extra data files (anything :func:`wpat.data.extra.open_extra` takes).
        out: the ``.npz`` to write; must not exist yet.
        config: preset or YAML (or Config) for a foreign state_dict, or to override the stored one.
        batch_size: images per forward pass.
        device: auto, cpu, cuda, cuda:N or mps.
        chunk_size: examples per resumable chunk.
        progress: report progress (a bar on a terminal, plain lines in a log).
        on_chunk: called with each finished chunk's index (after it is saved).

    Returns ``{"out", "examples", "chunks", "reused", "class_counts", "seconds"}``.
    """
    started = time.perf_counter()
    out = Path(out)
    target = _checked_arguments(out, batch_size, chunk_size, device)
    checkpoint = find_checkpoint(model)  # a run directory's best.pt, else its last.pt
    net, cfg, _ = model_from_checkpoint(checkpoint, config)
    spec = dataset_spec(cfg.data.name)
    classes = len(cfg.data.classes) if cfg.data.classes else spec.num_classes  # outputs of the head
    data = open_extra(extra, shape=spec.shape, num_classes=classes, labels=False)
    writable_dir(out.parent, "pseudolabel")
    manifest = {"model": _identity(checkpoint), "extra": [_identity(p) for p in data.paths],
                "model_name": cfg.model.name, "dataset": cfg.data.name, "examples": len(data),
                "chunk_size": chunk_size}
    parts = _parts_dir(out, manifest)
    net = net.to(target).eval()
    n_chunks = math.ceil(len(data) / chunk_size)
    chunk_paths = [parts / f"labels-{k:06d}.npy" for k in range(n_chunks)]
    sizes = [min(chunk_size, len(data) - k * chunk_size) for k in range(n_chunks)]
    done = {k for k in range(n_chunks) if _load_chunk(chunk_paths[k], sizes[k]) is not None}
    bar = Progress("pseudolabel", len(data), unit="img", initial=sum(sizes[k] for k in done),
                   enabled=progress)
    with data:
        for k in range(n_chunks):
            if k in done:
                continue
            images, _ = data.read(k * chunk_size, k * chunk_size + sizes[k])
            _save_chunk(chunk_paths[k], predict(net, images, batch_size, target))
            bar.advance(sizes[k])
            if on_chunk is not None:
                on_chunk(k)
        bar.close()
        counts = _assemble(data, out, chunk_paths, sizes, chunk_size, classes)
    _remove_parts(parts, chunk_paths)
    return {"out": str(out), "examples": len(data), "chunks": n_chunks, "reused": len(done),
            "class_counts": counts, "seconds": time.perf_counter() - started}


def _assemble(data: ExtraData, out: Path, chunk_paths: list[Path], sizes: list[int],
              chunk_size: int, num_classes: int) -> list[int]:
    """Write ``out`` from the extra images and the chunks' labels; the labels per class."""
    counts = np.zeros(num_classes, np.int64)

    def labels():
        for path, size in zip(chunk_paths, sizes):
            chunk = _load_chunk(path, size)
            if chunk is None:
                raise WpatError(f"pseudolabel: {path} vanished or was damaged while assembling; run again")
            counts[:] += np.bincount(chunk, minlength=num_classes)[:num_classes]
            yield chunk

    c, h, w = data.shape
    with NpzWriter(out) as writer:
        writer.write("image", (len(data), h, w, c), np.uint8, (x for _, x, _ in data.chunks(chunk_size)))
        writer.write("label", (len(data),), np.int64, labels())
    return counts.tolist()
