"""What wpat knows about each dataset: classes, image shape, normalization and augmentation.

The mean/std are the usual per-channel statistics of each training set on [0,1] pixels; the
models apply them internally, so data stays in [0,1] everywhere else. ``augment`` names the
default training augmentation (see :mod:`wpat.data.loader`): CIFAR uses the random crop with
4-px zero padding plus horizontal flip of both papers' code; SVHN and (Fashion-)MNIST use none,
since flipping digits changes their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wpat.helpers.errors import WpatError


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset.

    Args:
        name: registry name, e.g. ``"cifar10"``.
        num_classes: labels are ``0 .. num_classes - 1``.
        shape: one image as ``(C, H, W)``.
        mean, std: per-channel normalization statistics on [0,1] pixels (length C).
        augment: default training augmentation name.
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str

    def check(self, x: torch.Tensor, y: torch.Tensor, source: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` if they are a valid split of this dataset; else raise naming ``source``."""
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != self.shape:
            raise WpatError(
                f"{source}: expected uint8 images of shape [N,{','.join(map(str, self.shape))}], "
                f"found {x.dtype} {list(x.shape)}"
            )
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise WpatError(
                f"{source}: expected {x.shape[0]} int64 labels, found {y.dtype} {list(y.shape)}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise WpatError(
                f"{source}: labels must lie in 0..{self.num_classes - 1}, "
                f"found {int(y.min())}..{int(y.max())}"
            )
        return x, y


SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "none"),
        DatasetSpec("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), "none"),
        DatasetSpec(
            "cifar10", 10, (3, 32, 32),
            (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), "crop_flip",
        ),
        DatasetSpec(
            "cifar100", 100, (3, 32, 32),
            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip",
        ),
        DatasetSpec(
            "svhn", 10, (3, 32, 32),
            (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "none",
        ),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; WpatError listing the known datasets otherwise."""
    try:
        return SPECS[name]
    except KeyError:
        raise WpatError(
            f"unknown dataset {name!r}; valid choices: {', '.join(sorted(SPECS))}"
        ) from None
