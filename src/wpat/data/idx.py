"""MNIST and Fashion-MNIST, stored in the IDX format.

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic number -- two zero
bytes, the value type (0x08 = unsigned byte) and the number of dimensions -- then each
dimension as a big-endian uint32, then the values in row-major order. Images are idx3
``[N, 28, 28]`` (magic 0x00000803), labels idx1 ``[N]`` (magic 0x00000801). The files are
distributed gzip-compressed (``.gz``); uncompressed copies are read as well.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch

from wpat.data.datasets import DATASETS, one_line
from wpat.data.download import Source
from wpat.data.locate import locate
from wpat.data.specs import dataset_spec
from wpat.helpers.errors import WpatError

# Official locations; yann.lecun.com now refuses most downloads, so PyTorch's mirror comes first.
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
FILES = {  # split -> (images, labels), without the .gz suffix
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UNSIGNED_BYTE = 0x08


def read_idx(path: Path, ndim: int, kind: str) -> np.ndarray:
    """The uint8 array stored in IDX file ``path``, which must have ``ndim`` dimensions.

    ``kind`` ("image" or "label") only words the error messages.
    """
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    magic = raw[:4]
    if magic != bytes((0, 0, _UNSIGNED_BYTE, ndim)):
        raise WpatError(
            f"{path}: not an IDX {kind} file: magic number {magic.hex() or '(empty)'}, "
            f"expected 0000080{ndim}"
        )
    if len(raw) < header:
        raise WpatError(f"{path}: truncated: expected a {header}-byte header, found {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected, found = math.prod(dims), len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "trailing data"
        raise WpatError(f"{path}: {problem}: expected {expected} {kind} bytes, found {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise WpatError(f"{path}: unreadable or corrupt file ({one_line(error)})") from None


def _source(name: str, filename: str) -> Source:
    gz = f"{filename}.gz"
    return Source(gz, tuple(base + gz for base in MIRRORS[name]), MD5[name][gz])


def _load(
    name: str, split: str, root: str | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    paths = [
        locate(name, (f"{filename}.gz", filename), root, download, _source(name, filename))
        for filename in FILES[split]
    ]
    images = read_idx(paths[0], ndim=3, kind="image")
    labels = read_idx(paths[1], ndim=1, kind="label")
    if len(labels) != len(images):
        raise WpatError(f"{paths[1]}: {len(labels)} labels for the {len(images)} images of {paths[0]}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # copy: arrays over `bytes` are read-only
    y = torch.from_numpy(labels.astype(np.int64))
    return dataset_spec(name).check(x, y, source=f"{paths[0]} / {paths[1].name}")


for _name in MIRRORS:
    DATASETS.register(_name)(partial(_load, _name))
