"""Where dataset files are looked for, and fetching them when asked to.

Search order for dataset ``<name>`` (the first directory holding a candidate wins):

1. ``root`` given by the caller (the directory that holds the files);
2. ``$WPAT_DATA/<name>``;
3. the user cache, ``$XDG_CACHE_HOME/wpat/<name>`` (default ``~/.cache/wpat/<name>``);
4. system-wide copies, e.g. Debian's ``/usr/share/datasets/fashion-mnist``;
5. with ``download=True``, the official file is downloaded into the user cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from wpat.data.download import Source, fetch
from wpat.helpers.errors import WpatError

SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}


def cache_dir(name: str) -> Path:
    """The per-user download directory of dataset ``name``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wpat" / name


def search_dirs(name: str, root: str | os.PathLike | None) -> list[Path]:
    """The directories searched for dataset ``name``, in order."""
    dirs = [Path(root).expanduser()] if root is not None else []
    if os.environ.get("WPAT_DATA"):
        dirs.append(Path(os.environ["WPAT_DATA"]).expanduser() / name)
    dirs.append(cache_dir(name))
    dirs.extend(Path(d) for d in SYSTEM_DIRS.get(name, ()))
    return dirs


def locate(
    name: str,
    candidates: Sequence[str],
    root: str | os.PathLike | None,
    download: bool,
    source: Source,
) -> Path:
    """Path of the first existing ``candidates`` entry (file or directory) in the search dirs.

    Candidates are alternative forms of the same data (e.g. ``.gz`` or uncompressed); when none
    exists, ``source`` is downloaded into the cache if ``download``, else WpatError explains
    where it looked and how to fix it.
    """
    dirs = search_dirs(name, root)
    for directory in dirs:
        for candidate in candidates:
            if (directory / candidate).exists():
                return directory / candidate
    if download:
        return fetch(source, cache_dir(name))
    raise WpatError(
        f"dataset {name!r}: {' or '.join(candidates)} not found in "
        f"{', '.join(map(str, dirs))}; point data.root (root= in Python) at the folder with the "
        f"files, set $WPAT_DATA (files in $WPAT_DATA/{name}), or set data.download=true"
    )
