"""Small file-system helpers shared by training and evaluation."""

from __future__ import annotations

import os
from pathlib import Path

from wpat.errors import WpatError


def writable_dir(path: str | os.PathLike, label: str) -> Path:
    """Create ``path`` and prove it writable now, before hours of compute are spent on it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise WpatError(f"{label}: cannot write to {path} ({err.strerror})") from None
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
