"""CIFAR-10 and CIFAR-100 in the official "python version" layout (Krizhevsky, 2009).

https://www.cs.toronto.edu/~kriz/cifar.html distributes ``cifar-10-python.tar.gz`` holding
``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``, and ``cifar-100-python.tar.gz``
holding ``cifar-100-python/train`` and ``test``. Each is a Python-2 pickle of a dict with
byte-string keys: ``b"data"``, a uint8 array ``[N, 3072]`` (the 1024 red, then green, then blue
values of each 32x32 image, row-major), and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``
(CIFAR-100, the 100-class labels), lists of ints.

Either the extracted folder or the ``.tar.gz`` itself is read. The archive is never extracted:
the wanted members are read into memory by exact name, so no member path can write anywhere.
Pickles are loaded by an unpickler that can build only numpy arrays, dtypes and byte strings;
any other global (``os.system``, ``builtins.eval``, ...) is refused before anything runs.
"""

from __future__ import annotations

import io
import pickle
import posixpath
import tarfile
import zlib
from codecs import encode as codecs_encode
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from wpat.data.datasets import DATASETS, one_line
from wpat.data.download import Source
from wpat.data.locate import locate
from wpat.data.specs import dataset_spec
from wpat.helpers.errors import WpatError


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches and which key holds its labels."""

    folder: str
    archive: Source
    batches: dict[str, tuple[str, ...]]  # split -> batch files inside `folder`
    label_key: bytes


LAYOUTS = {
    "cifar10": CifarLayout(
        folder="cifar-10-batches-py",
        archive=Source(
            "cifar-10-python.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            "c58f30108f718f92721af3b95e74349a",
        ),
        batches={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        label_key=b"labels",
    ),
    "cifar100": CifarLayout(
        folder="cifar-100-python",
        archive=Source(
            "cifar-100-python.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
        batches={"train": ("train",), "test": ("test",)},
        label_key=b"fine_labels",
    ),
}

# The only callables a CIFAR pickle may reach. numpy moved `_reconstruct` from numpy.core to
# numpy._core in 2.0; taking it from ndarray.__reduce__ finds it under either version.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes under protocol 2 as _codecs.encode(str, "latin1"); harmless.
    ("_codecs", "encode"): codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only numpy arrays, lists and bytes are allowed"
            ) from None


def read_batch(raw: bytes, source: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N,3,32,32], labels int64 [N])`` from one pickled batch named ``source``."""
    try:
        # encoding="bytes" keeps Python-2 str keys and array payloads as bytes, as written.
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can raise almost any exception type
        raise WpatError(f"{source}: not a valid CIFAR batch pickle ({one_line(error)})") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32 and isinstance(labels, list) and len(labels) == len(data)):
        raise WpatError(
            f"{source}: expected a dict with b'data' (uint8 [N,3072]) and {label_key!r} "
            f"(list of N ints), found {_found(batch, label_key)}"
        )
    try:
        labels_array = np.array(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise WpatError(f"{source}: {label_key!r} must hold integers") from None
    return data.reshape(-1, 3, 32, 32), labels_array


def _found(batch: object, label_key: bytes) -> str:
    """What a batch pickle holds instead, for the error message."""
    if not isinstance(batch, dict):
        return f"a {type(batch).__name__}"
    data, labels = batch.get(b"data"), batch.get(label_key)
    parts = [f"b'data' {data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray)
             else "no b'data' array"]
    parts.append(f"{len(labels)} {label_key.decode()}" if isinstance(labels, list)
                 else f"no {label_key!r} list")
    return ", ".join(parts)


def _read_members(archive: Path, names: list[str]) -> dict[str, bytes]:
    """The bytes of the archive members ``names``, found in one sequential pass."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = posixpath.normpath(member.name)
                if name in names and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise WpatError(f"{archive}: corrupt or truncated archive ({one_line(error)})") from None
    missing = [name for name in names if name not in found]
    if missing:
        raise WpatError(f"{archive}: missing {', '.join(missing)}")
    return found


def _read_file(path: Path, folder: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise WpatError(
            f"{path}: cannot read this batch of the official {folder} folder ({error.strerror or one_line(error)})"
        ) from None


def _load(
    name: str, split: str, root: str | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    layout = LAYOUTS[name]
    path = locate(name, (layout.folder, layout.archive.filename), root, download, layout.archive)
    if path.is_dir():
        batches = [
            read_batch(_read_file(path / batch, layout.folder), str(path / batch), layout.label_key)
            for batch in layout.batches[split]
        ]
    else:
        members = [f"{layout.folder}/{batch}" for batch in layout.batches[split]]
        contents = _read_members(path, members)
        batches = [
            read_batch(contents.pop(member), f"{path}:{member}", layout.label_key)
            for member in members
        ]
    x = torch.from_numpy(np.concatenate([images for images, _ in batches]))
    y = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
    return dataset_spec(name).check(x, y, source=str(path))


for _name in LAYOUTS:
    DATASETS.register(_name)(partial(_load, _name))
