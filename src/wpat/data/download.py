"""Checksum-verified downloads of the official dataset files.

A file is streamed to a temporary name beside its destination while its MD5 is computed; only
when the MD5 matches the official value is it renamed into place (atomic on one filesystem), so
an interrupted or corrupted download never leaves a file that later looks valid. MD5 is used
because it is what the datasets' authors publish; it guards against corruption, not tampering.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from wpat.helpers.errors import WpatError

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0  # per blocking socket operation, not for the whole file
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """An official file: its name on disk, the URLs to try in order, and its official MD5."""

    filename: str
    urls: tuple[str, ...]
    md5: str


def fetch(source: Source, directory: Path, timeout: float = TIMEOUT_S) -> Path:
    """Download ``source`` into ``directory`` and return its path.

    Each URL is tried in turn; if none yields a file with the right MD5, raises WpatError
    listing every attempt, and no file (partial or wrong) is left behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / source.filename
    failures = []
    for url in source.urls:
        log.info("downloading %s -> %s", url, destination)
        try:
            _download_verified(url, destination, source.md5, timeout)
            return destination
        except (OSError, ValueError) as error:  # URLError/HTTPError/timeouts are OSErrors
            failures.append(f"{url}: {error}")
    raise WpatError(f"could not download {destination}: {'; '.join(failures)}")


def _download_verified(url: str, destination: Path, md5: str, timeout: float) -> None:
    descriptor, partial = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(descriptor, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise ValueError(f"checksum mismatch: expected md5 {md5}, got {digest.hexdigest()}")
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
