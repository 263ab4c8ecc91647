"""``.npz`` archives read by row range with bounded memory, and written in chunks.

:func:`npz_arrays` opens the arrays of an ``.npz`` without loading them: each is an object with
``shape``, ``dtype`` and ``read(start, stop, out=None)``, which returns rows ``[start, stop)``
(along the first axis) as a fresh NumPy array, or fills ``out`` (C-contiguous, as many elements,
any shape; cast if its dtype differs) and returns it. ``np.load(mmap_mode="r")`` cannot memory-map an array inside
a ``.npz``, so the members are located directly:

- an uncompressed (stored) member's data sits at a fixed offset inside the zip file: its local
  header is read to find that offset, and rows are read with positioned reads into a new buffer
  (:class:`StoredArray`). The file's pages stay in the OS page cache, not in the process: a
  memory map would add every page it touched to the process's resident memory, growing with the
  file, which is what the streaming loader must avoid.
- a compressed (deflated, ``np.savez_compressed``) member cannot be addressed by offset: it is
  read through :mod:`zipfile`, which decompresses from the start of the member and seeks forward
  by decompressing and discarding in chunks of at most 16 MiB (:class:`DeflatedArray`). Memory
  stays bounded; time per random read grows with the position, so a large compressed file should
  be rewritten uncompressed once (:class:`NpzWriter`).

The ``.npy`` header is parsed with NumPy's own header reader (a literal, never evaluated code);
object arrays are refused. :class:`NpzWriter` writes arrays into an uncompressed ``.npz``
chunk by chunk (the same zip64 layout as ``np.savez``), to a temporary file renamed into place
when complete, so a crash never leaves half an archive under the final name.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from wpat.helpers.errors import WpatError
from wpat.helpers.fs import atomic_file

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length
_LOCAL_MAGIC = b"PK\x03\x04"


def _read_header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the ``.npy`` header at the current position of ``f``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            shape, fortran, dtype = fmt._read_array_header(f, version)  # 3.0: utf-8 field names
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise WpatError(f"{where}: not a readable .npy array ({str(err).splitlines()[0]})") from None
    if dtype.hasobject:
        raise WpatError(f"{where}: holds Python objects (dtype {dtype}); only numeric arrays are read")
    if fortran and len(shape) > 1:
        raise WpatError(f"{where}: stored in Fortran order; re-save it with np.ascontiguousarray")
    return tuple(shape), fortran, dtype


class _Rows:
    """Shared shape logic: rows of ``shape[1:]`` elements of ``dtype``."""

    def __init__(self, where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.where, self.shape, self.dtype = where, shape, dtype
        self.row_bytes = int(math.prod(shape[1:])) * dtype.itemsize
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def _check(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """``out`` (checked), or a new array for rows [start, stop)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"{self.where}: rows [{start}, {stop}) outside [0, {len(self)})")
        if out is None:
            return np.empty((stop - start, *self.shape[1:]), self.dtype)
        wanted = (stop - start) * (self.row_bytes // self.dtype.itemsize)
        if out.size != wanted or not out.flags.c_contiguous:
            raise ValueError(f"{self.where}: out holds {out.size} elements, the rows {wanted}")
        return out

    def close(self) -> None:
        pass


class StoredArray(_Rows):
    """An array stored uncompressed at byte ``offset`` of ``path``, read by positioned reads."""

    def __init__(self, path: Path, offset: int, where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        super().__init__(where, shape, dtype)
        self.path, self.offset = path, offset
        self._file = None

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        out = self._check(start, stop, out)
        if out.dtype != self.dtype:
            out[...] = self.read(start, stop).reshape(out.shape)
            return out
        view, done = memoryview(out).cast("B"), 0
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "rb", buffering=0)
            self._file.seek(self.offset + start * self.row_bytes)
            while done < len(view):
                got = self._file.readinto(view[done:])
                if not got:
                    raise WpatError(f"{self.where}: the file ends early (truncated?)")
                done += got
        return out

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class DeflatedArray(_Rows):
    """An array in a compressed zip member, read by decompressing (see the module docstring)."""

    def __init__(self, path: Path, member: str, data_start: int, where: str,
                 shape: tuple[int, ...], dtype: np.dtype) -> None:
        super().__init__(where, shape, dtype)
        self.path, self.member, self.data_start = path, member, data_start
        self._zip = self._stream = None

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        out = self._check(start, stop, out)
        with self._lock:
            if self._stream is None:
                self._zip = zipfile.ZipFile(self.path)
                self._stream = self._zip.open(self.member)
            self._stream.seek(self.data_start + start * self.row_bytes)
            raw = self._stream.read((stop - start) * self.row_bytes)
        if len(raw) != (stop - start) * self.row_bytes:
            raise WpatError(f"{self.where}: the member ends early (truncated?)")
        out[...] = np.frombuffer(raw, self.dtype).reshape(out.shape)  # casts if needed
        return out

    def close(self) -> None:
        with self._lock:
            for f in (self._stream, self._zip):
                if f is not None:
                    f.close()
            self._zip = self._stream = None


class MemoryArray(_Rows):
    """An array already in memory (a pickle's), behind the same ``read`` interface."""

    def __init__(self, array: np.ndarray, where: str) -> None:
        super().__init__(where, tuple(array.shape), array.dtype)
        self.array = array

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        out = self._check(start, stop, out)
        out[...] = self.array[start:stop].reshape(out.shape)
        return out


def npz_arrays(path: str | os.PathLike) -> dict[str, _Rows]:
    """The arrays of the ``.npz`` at ``path`` by name (without ``.npy``), none of them loaded."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise WpatError(f"{path}: not a readable .npz archive ({err})") from None
    arrays: dict[str, _Rows] = {}
    with archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            where = f"{path}: array {name!r}"
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                magic, name_len, extra_len = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
                if magic != _LOCAL_MAGIC:
                    raise WpatError(f"{where}: damaged zip entry (no local header)")
                raw.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
                shape, _, dtype = _read_header(raw, where)
                array: _Rows = StoredArray(path, raw.tell(), where, shape, dtype)
                if array.offset + len(array) * array.row_bytes > path.stat().st_size:
                    raise WpatError(f"{where}: the file ends before the array does (truncated?)")
            else:
                try:
                    with archive.open(info) as member:
                        shape, _, dtype = _read_header(member, where)
                        start = member.tell()
                except (zipfile.BadZipFile, NotImplementedError) as err:
                    raise WpatError(f"{where}: cannot read the member ({err})") from None
                array = DeflatedArray(path, info.filename, start, where, shape, dtype)
            arrays[name] = array
    return arrays


class NpzWriter:
    """Write an uncompressed ``.npz`` array by array, each in chunks; atomic on success.

        with NpzWriter("out.npz") as w:
            w.write("image", (n, 32, 32, 3), np.uint8, chunks_of_images)
            w.write("label", (n,), np.int64, [labels])

    The chunks of one array are concatenated along the first axis and must add up to ``shape``.
    The file appears under ``path`` only when the ``with`` block ends without an exception.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = atomic_file(self.path)
        self.zip = zipfile.ZipFile(self._file.__enter__(), "w", zipfile.ZIP_STORED, allowZip64=True)

    def write(self, name: str, shape: tuple[int, ...], dtype, chunks: Iterable[np.ndarray]) -> None:
        dtype = np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        rows = 0
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                if chunk.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"{name}: chunk of shape {chunk.shape} for an array of shape {shape}")
                f.write(memoryview(chunk).cast("B"))
                rows += len(chunk)
        if rows != shape[0]:
            raise ValueError(f"{name}: {rows} rows written, {shape[0]} declared")

    def __enter__(self) -> "NpzWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.zip.close()
        self._file.__exit__(kind, value, tb)  # renamed into place only without an exception
