"""Checkpoints: atomic writes, safe loads, RNG capture.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(weights_only=True)``: a file that carries code (a pickled object with a
``__reduce__`` payload, as an untrusted checkpoint from a download link might) is refused and
its code never runs. Files are written to a temporary name in the same directory, flushed and
fsync'ed, then renamed over the old file, so a crash or a full disk at any moment leaves either
the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from wpat.checkpoints.diagnosis import HEAD_BYTES, LEGACY_MAGIC, ZIP_MAGIC, damaged, not_torch_save, refused
from wpat.helpers.errors import WpatError
from wpat.helpers.fs import atomic_file

FORMAT = "wpat-checkpoint-v1"


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (:func:`wpat.helpers.fs.atomic_file`)."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a wpat checkpoint safely; any problem is one :class:`WpatError` naming the file.

    The file is first recognised by its content: a ``torch.save`` file is a zip archive
    (``PK\\x03\\x04``) or a legacy torch pickle (its magic number first). Anything else (an empty
    file, an HTML page from a failed download, random bytes, a plain pickle) is reported as not a
    checkpoint without being loaded. A checkpoint that ``torch.load(weights_only=True)`` cannot
    read is told apart as truncated or corrupt, or as unsafe (refused) only when its pickle names
    a global that torch's weights-only allow list lacks, found by disassembling the pickle
    statically: nothing in the file is ever run (:mod:`wpat.checkpoints.diagnosis`).
    """
    path = Path(path)
    if not path.exists():
        raise WpatError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise WpatError(f"{path}: is a directory, not a checkpoint file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as err:
        raise WpatError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if not (head.startswith(ZIP_MAGIC) or head.startswith(LEGACY_MAGIC)):
        raise WpatError(f"{path}: {not_torch_save(path, head, size)}")
    try:
        with warnings.catch_warnings():  # torch warns on stderr about some odd files
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise WpatError(f"{path}: {refused(path, head, size, err)}") from None
    except Exception as err:  # a damaged file can break the reader in many ways; nothing ran
        raise WpatError(f"{path}: {damaged(path, head, size, err)}") from None
    if not isinstance(ckpt, dict):
        raise WpatError(f"{path}: not a wpat checkpoint (found a {type(ckpt).__name__}, expected a dict)")
    return ckpt


def hash_tensors(digest: "hashlib._Hash", tensors: Iterable[torch.Tensor]) -> "hashlib._Hash":
    """``digest`` updated with the bytes of every tensor, in order (on the CPU, contiguous)."""
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest


def weights_digest(model: torch.nn.Module) -> str:
    """A short fingerprint of ``model``'s state_dict, bit for bit: equal digests, same weights.
    ``eval.json`` records it with each checkpoint's results, so results of weights that a
    checkpoint no longer holds are told apart from the current ones."""
    return "sha256:" + hash_tensors(hashlib.sha256(), model.state_dict().values()).hexdigest()[:16]


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
