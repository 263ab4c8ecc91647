"""Why a file is not a loadable checkpoint, told apart without running anything in it.

:func:`wpat.checkpoints.files.load_checkpoint` asks here once a file fails: an empty file, an
HTML page from a failed download, a Git LFS pointer, a plain pickle, a TorchScript archive, a
truncated zip, or a pickle that would import code (found by disassembling it statically with
:func:`pickle_globals`) each get their own one-line reason.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # the first pickle of the older format
HEAD_BYTES = 4096  # what is read of a file to recognise it
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


def not_torch_save(path: Path, head: bytes, size: int) -> str:
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


def refused(path: Path, head: bytes, size: int, err: BaseException) -> str:
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


def damaged(path: Path, head: bytes, size: int, err: BaseException) -> str:
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
