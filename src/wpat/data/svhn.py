"""SVHN, the Street View House Numbers in cropped-digit format (Netzer et al., 2011).

http://ufldl.stanford.edu/housenumbers/ distributes ``train_32x32.mat`` (73,257 digits) and
``test_32x32.mat`` (26,032) as MATLAB files holding ``X``, uint8 ``[32, 32, 3, N]``
(H x W x C x N), and ``y``, ``[N, 1]`` with values 1..10 where 10 stands for the digit 0.
The reader returns ``[N, 3, 32, 32]`` images and labels 0..9 (10 -> 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from wpat.data.datasets import DATASETS, one_line
from wpat.data.download import Source
from wpat.data.locate import locate
from wpat.data.specs import dataset_spec
from wpat.helpers.errors import WpatError

_URL = "http://ufldl.stanford.edu/housenumbers/"
SOURCES = {
    "train": Source("train_32x32.mat", (_URL + "train_32x32.mat",), "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": Source("test_32x32.mat", (_URL + "test_32x32.mat",), "eb5a983be6a315427106f1b164d9cef3"),
}


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N,3,32,32], labels int64 [N] in 0..9)`` from an official SVHN .mat file."""
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as error:  # scipy reports corrupt files with many exception types
        raise WpatError(f"{path}: not a readable MATLAB file, truncated or corrupt ({one_line(error)})") from None
    images, labels = mat.get("X"), mat.get("y")
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[:3] == (32, 32, 3)):
        found = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else "none"
        raise WpatError(f"{path}: expected 'X' of uint8 [32,32,3,N], found {found}")
    if not (isinstance(labels, np.ndarray) and labels.size == images.shape[3]):
        raise WpatError(f"{path}: expected 'y' with {images.shape[3]} labels, one per image in 'X'")
    labels = labels.reshape(-1)
    if labels.size and (labels.min() < 1 or labels.max() > 10 or np.any(labels != np.round(labels))):
        raise WpatError(f"{path}: labels in 'y' must be integers in 1..10 (10 = digit 0)")
    return images.transpose(3, 2, 0, 1), labels.astype(np.int64) % 10


@DATASETS.register("svhn")
def load_svhn(
    split: str, root: str | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    source = SOURCES[split]
    path = locate("svhn", (source.filename,), root, download, source)
    images, labels = read_svhn_mat(path)
    x = torch.from_numpy(np.ascontiguousarray(images))
    y = torch.from_numpy(labels)
    return dataset_spec("svhn").check(x, y, source=str(path))
