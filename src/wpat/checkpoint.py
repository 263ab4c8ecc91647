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
import io
import os
import pickle
import pickletools
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np
import torch

from wpat.errors import WpatError
from wpat.fs import atomic_file

FORMAT = "wpat-checkpoint-v1"


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (:func:`wpat.fs.atomic_file`)."""
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
    statically: nothing in the file is ever run.
    """
    path = Path(path)
    if not path.exists():
        raise WpatError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise WpatError(f"{path}: is a directory, not a checkpoint file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_HEAD)
    except OSError as err:
        raise WpatError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if not (head.startswith(ZIP_MAGIC) or head.startswith(LEGACY_MAGIC)):
        raise WpatError(f"{path}: {_not_torch_save(path, head, size)}")
    try:
        with warnings.catch_warnings():  # torch warns on stderr about some odd files
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise WpatError(f"{path}: {_refused(path, head, size, err)}") from None
    except Exception as err:  # a damaged file can break the reader in many ways; nothing ran
        raise WpatError(f"{path}: {_damaged(path, head, size, err)}") from None
    if not isinstance(ckpt, dict):
        raise WpatError(f"{path}: not a wpat checkpoint (found a {type(ckpt).__name__}, expected a dict)")
    return ckpt

# ------------------------------------------------------------------ telling bad files apart

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # the first pickle of the older format
_HEAD = 4096
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
               "BINUNICODE8"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_NEUTRAL_OPS = {"PROTO", "FRAME", "MARK"}


def pickle_globals(stream: BinaryIO) -> set[str]:
    """The globals (``module.name``) one pickle in ``stream`` would import, read statically.

    The pickle is disassembled with :func:`pickletools.genops`, never unpickled: nothing runs.
    ``STACK_GLOBAL`` (protocol 4+) takes its module and name from the two strings pushed before
    it, directly or from the memo. Raises ``ValueError`` (or another exception) on a damaged or
    truncated pickle; the stream is left just after the pickle's STOP.
    """
    found: set[str] = set()
    memo: dict[Any, Any] = {}
    last: list[Any] = [None, None]  # the two most recently pushed values (strings or None)
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name in _NEUTRAL_OPS:
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = last[-1]
            continue
        if name in _PUT_OPS:
            memo[arg] = last[-1]
            continue
        value: Any = None
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.add(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            module, attr = last
            found.add(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str)
                      else "(a global computed at load time)")
        elif name in _STRING_OPS:
            value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
        elif name in _GET_OPS:
            value = memo.get(arg)
        last = [last[-1], value]
    return found


def _allowed(name: str) -> bool:
    """Whether torch's weights-only unpickler accepts the global ``name``."""
    try:
        from torch import _weights_only_unpickler as w  # private, but what torch.load consults

        return name in w._get_allowed_globals() or name in w._get_user_allowed_globals()
    except Exception:  # another torch version: its public rule of thumb
        return name.startswith("torch.") or name in ("collections.OrderedDict", "_codecs.encode")


def _unsafe(found: set[str]) -> str | None:
    """The "refused" reason if ``found`` holds a global torch's allow list lacks, else None."""
    bad = sorted(g for g in found if not _allowed(g))
    if not bad:
        return None
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return (f"refused as unsafe: loading it would import and call {shown}, which torch's "
            f"weights-only loader does not allow (a pickled object that could run code when "
            f"loaded); nothing in it was run, and only checkpoints of tensors and plain data "
            f"are accepted")


def _size(n: int) -> str:
    if n < 10_000:
        return f"{n} bytes"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _sentence(err: BaseException) -> str:
    """The first sentence of an error message, whole, on one line."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    if not text:
        return type(err).__name__
    match = re.search(r"\.(\s|$)", text)
    text = text[: match.start()] if match else text
    if len(text) > 200:
        text = text[:200].rsplit(" ", 1)[0] + " ..."
    return text


def _torch_reason(err: BaseException) -> str:
    """What torch's weights-only loader objected to, without its advice paragraphs."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return _sentence(ValueError(rest or (lines[i + 1] if i + 1 < len(lines) else "")))
        if "unsupported GLOBAL" in line or "Unsupported global" in line:
            return _sentence(ValueError(line))
    return _sentence(err)


def _printable(head: bytes) -> str | None:
    """``head`` as text if it looks like text (UTF-8, no control bytes but whitespace)."""
    text = head.decode("utf-8", errors="ignore") if head else ""
    if not text or len(text) < 0.9 * len(head.decode("latin-1")):
        return None
    if sum(1 for c in text if not c.isprintable() and c not in "\r\n\t\f\v") > len(text) // 100:
        return None
    return text


def _not_torch_save(path: Path, head: bytes, size: int) -> str:
    """Why a file that is neither a zip archive nor a legacy torch pickle is not a checkpoint."""
    if size == 0:
        return "not a checkpoint: the file is empty (0 bytes; an interrupted download or copy?)"
    looks_pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    try:
        with path.open("rb") as f:
            found = pickle_globals(f)
    except Exception:  # not a (complete) pickle
        if looks_pickled:
            return (f"not a readable checkpoint: truncated or corrupt (a Python pickle of "
                    f"{_size(size)} that breaks off before its end)")
    else:
        unsafe = _unsafe(found)
        if unsafe:
            return unsafe
        if looks_pickled or _printable(head) is None:
            return ("not a checkpoint: a plain Python pickle, not a file written by torch.save "
                    "(which is a zip archive starting with PK\\x03\\x04)")
    if head.startswith(b"\x1f\x8b"):
        return "not a checkpoint: a gzip-compressed file (decompress it first if it holds one)"
    text = _printable(head)
    if text is not None:
        stripped = text.lstrip("\ufeff \t\r\n")
        lower = stripped.lower()
        if lower.startswith("version https://git-lfs"):
            return ("not a checkpoint: a Git LFS pointer file, a placeholder for the real file "
                    "(fetch it with `git lfs pull`)")
        if lower.startswith(("<!doctype html", "<html")) or ("<html" in lower and lower.startswith("<")):
            return (f"not a checkpoint: an HTML page ({_size(size)}), probably an error or "
                    f"sign-in page saved by a failed download; download the file itself again")
        first = stripped.splitlines()[0] if stripped else ""
        first = first if len(first) <= 40 else first[:40] + "..."
        kind = "an XML document" if lower.startswith("<") else "a text file"
        return f"not a checkpoint: {kind} ({_size(size)}, starting {first!r})"
    return (f"not a checkpoint: unrecognised content ({_size(size)} starting with bytes "
            f"{head[:8].hex(' ')}; a torch.save file is a zip archive starting with PK\\x03\\x04 "
            f"or a legacy torch pickle)")


def _zip_members(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except Exception:
        return None


def _pickle_stream(path: Path, head: bytes) -> BinaryIO:
    """The pickled part of a torch.save file, for static inspection: a zip archive's data.pkl,
    or a legacy file itself (magic number, protocol, system info, then the object)."""
    if head.startswith(ZIP_MAGIC):
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            return io.BytesIO(z.read(name))
    return path.open("rb")


def _refused(path: Path, head: bytes, size: int, err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused the pickle of a torch.save file."""
    found: set[str] = set()
    try:
        with _pickle_stream(path, head) as stream:
            for _ in range(4 if head.startswith(LEGACY_MAGIC) else 1):
                found |= pickle_globals(stream)
    except Exception:
        return (f"not a readable checkpoint: truncated or corrupt (its pickled data is damaged: "
                f"{_torch_reason(err)})")
    return _unsafe(found) or (f"refused: torch's weights-only loader does not accept its content "
                              f"({_torch_reason(err)})")


def _damaged(path: Path, head: bytes, size: int, err: BaseException) -> str:
    """Why a torch.save file could not be read at all."""
    if head.startswith(ZIP_MAGIC):
        members = _zip_members(path)
        if members is None:
            return (f"not a readable checkpoint: truncated or corrupt (a zip archive of {_size(size)} "
                    f"without the directory that ends every complete one, so it was cut short: "
                    f"an interrupted download, copy or save?)")
        if any(m.endswith("/constants.pkl") or "/code/" in m for m in members):
            return ("not a checkpoint: a TorchScript archive (torch.jit.save), a compiled program "
                    "rather than weights; save model.state_dict() with torch.save instead")
        if not any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
            return "not a checkpoint: a zip archive without data.pkl, so not written by torch.save"
    elif isinstance(err, EOFError):
        return (f"not a readable checkpoint: truncated or corrupt (a legacy torch.save file of "
                f"{_size(size)} that ends early)")
    return f"not a readable checkpoint: truncated or corrupt ({_sentence(err)})"


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
