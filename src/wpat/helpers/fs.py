"""Small file-system helpers shared by training and evaluation."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import yaml

from wpat.helpers.errors import WpatError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# A plain open() would create files with 0o666 minus the umask; mkstemp makes them 0o600, which
# would hide checkpoints and reports from the rest of a team's group on a shared cluster.
FILE_MODE = 0o666 & ~_umask()


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


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file to write that replaces ``path`` only when the block ends without an exception.

    It is a temporary file in the same directory, flushed and fsync'ed, then renamed over
    ``path``; the rename is made durable too where the filesystem allows. A crash or a full disk
    at any moment leaves the old file or the new one, never half of one, and no temporary file.
    The file gets the permissions ``open()`` would give it (0o666 less the umask).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # not every filesystem allows fsync on a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never half."""
    with atomic_file(path, "w") as f:
        f.write(text)


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block, so that
    two processes reading, changing and replacing the same file take turns instead of one
    losing the other's change. Where the platform has no ``fcntl`` (Windows) it does not lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_yaml_mapping(path: Path, kind: str, expected: str) -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file: ``{}``). A file that cannot be read or
    parsed is "not a readable ``kind``", one that holds something else is refused with
    ``expected``: each one line, as :class:`WpatError`."""
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise WpatError(f"{path}: not a readable {kind} ({err.__class__.__name__})") from None
    if not isinstance(tree, dict):
        raise WpatError(f"{path}: {expected}")
    return tree
