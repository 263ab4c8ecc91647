"""One entry point for every dataset: ``load_dataset(name, split)``.

Readers (one module per file format: :mod:`~wpat.data.idx`, :mod:`~wpat.data.cifar`,
:mod:`~wpat.data.svhn`) register a function ``reader(split, root, download)`` under the
dataset's name in :data:`DATASETS`. Every reader returns the whole split as
``(images uint8 [N,C,H,W], labels int64 [N])`` on the CPU, checked against the
:class:`~wpat.data.specs.DatasetSpec`; casting to float and moving to the device is the
:class:`~wpat.data.loader.DeviceLoader`'s job.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from wpat.data.specs import dataset_spec
from wpat.helpers.errors import WpatError
from wpat.helpers.registry import Registry

DATASETS = Registry("dataset")
SPLITS = ("train", "test")

Split = Literal["train", "test"]


def one_line(error: BaseException) -> str:
    """An exception's message on one line (readers' errors go into one-line WpatErrors)."""
    text = " ".join(str(error).split())
    if len(text) > 240:
        text = text[:240].rsplit(" ", 1)[0] + " ..."
    return text or type(error).__name__


def load_dataset(
    name: str,
    split: Split,
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split of dataset ``name`` as ``(uint8 [N,C,H,W], int64 [N])`` CPU tensors.

    Args:
        name: one of ``DATASETS.names()``.
        split: ``"train"`` or ``"test"``.
        root: directory holding the dataset's files, searched first
            (see :mod:`wpat.data.locate` for the full search order).
        download: fetch the official files into the user cache when they are not found.
    """
    dataset_spec(name)  # unknown names fail here with the list of datasets
    if split not in SPLITS:
        raise WpatError(f"dataset {name!r}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return DATASETS.get(name)(split, root=root, download=download)
