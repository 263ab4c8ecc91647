"""Checkpoints: atomic writes, safe loads, RNG capture.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(weights_only=True)``: a file that carries code (a pickled object with a
``__reduce__`` payload, as an untrusted checkpoint from a download link might) is refused and
its code never runs. Files are written to a temporary name in the same directory, flushed and
fsync'ed, then renamed over the old file, so a crash or a full disk at any moment leaves either
the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wpat.errors import WpatError

FORMAT = "wpat-checkpoint-v1"


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every filesystem allows fsync on a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a wpat checkpoint safely; any problem is one :class:`WpatError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise WpatError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise WpatError(
            f"{path}: refused: the file contains Python objects other than tensors and plain "
            f"data (it could run code when loaded); only weights-only checkpoints are accepted "
            f"({str(err).splitlines()[0][:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise WpatError(f"{path}: not a readable checkpoint (truncated or corrupt: {str(err).splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict):
        raise WpatError(f"{path}: not a wpat checkpoint (found a {type(ckpt).__name__}, expected a dict)")
    return ckpt


def is_wpat_checkpoint(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == FORMAT


def rng_state() -> dict[str, Any]:
    """All RNG states a run depends on (python, numpy, torch CPU and CUDA)."""
    np_state = np.random.get_state()
    state = {
        "python": list(_to_plain(random.getstate())),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value
