"""Batches from a dataset that lives on the device, augmented there.

The whole split is moved to the device once as uint8 (CIFAR-10 train is 150 MiB); each batch is
gathered, cast to float32 in [0,1] and augmented with a few vectorised tensor ops, so there is
no per-sample Python and no host-to-device copy per step.

Order and augmentation are drawn from one ``torch.Generator`` on the device, seeded from
``(seed, epoch)``: a given epoch yields the same batches whenever it is replayed, which is what
resuming a run relies on. Each iteration uses the current epoch and then advances it, so a
plain ``for epoch ...: for x, y in loader`` sees a new order every epoch; ``set_epoch(e)``
jumps to epoch ``e`` (e.g. when resuming).

Augmentations (``augment=``), each applied independently per example:

- ``"none"``.
- ``"flip"``: horizontal flip with probability 0.5.
- ``"crop_flip"``: pad 4 pixels on every side, crop back to H x W at a uniformly random offset
  (0..8 px in each direction), then flip as above -- the standard CIFAR augmentation. The
  padding (``padding=``) is ``"zeros"`` (torchvision's ``RandomCrop(32, padding=4)``, as the
  authors' TRADES and CIFAR-100 scripts) or ``"reflect"`` (the authors' CIFAR-10 AT scripts).

Then, with ``rotation=r > 0`` degrees, a random rotation by an angle uniform in [-r, r] about the
image centre, nearest-neighbour, zeros outside (torchvision's ``RandomRotation(15)`` after crop
and flip in the authors' CIFAR-100 AT scripts).

Then, with ``cutout=L > 0``, one L x L square of each example set to 0, placed inside the image
(:func:`wpat.data.mixing.cutout`, Rice et al.'s Cutout). Last, with ``mix="mixup"`` or
``"cutmix"``, each batch is mixed with a permutation of itself (``wpat.data.mixing.MIXES``) and
the loader yields float soft targets ``[B, num_classes]`` instead of integer labels.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from wpat.data.mixing import MIXES, cutout as random_cutout
from wpat.helpers.errors import WpatError
from wpat.helpers.registry import Registry
from wpat.helpers.seeds import derived_seed

AUGMENTATIONS = Registry("augmentation")
CROP_PADDING = 4  # pixels of zero padding for "crop_flip"


PADDINGS = {"zeros": "constant", "reflect": "reflect"}  # config value -> F.pad mode


@AUGMENTATIONS.register("none")
def no_augmentation(x: torch.Tensor, generator: torch.Generator, padding: str = "zeros") -> torch.Tensor:
    """The batch as it is."""
    return x


@AUGMENTATIONS.register("flip")
def random_flip(x: torch.Tensor, generator: torch.Generator, padding: str = "zeros") -> torch.Tensor:
    """Horizontal flip of each example with probability 0.5."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@AUGMENTATIONS.register("crop_flip")
def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: str = "zeros") -> torch.Tensor:
    """Pad 4 px (``padding``: zeros or reflect), crop H x W at a random offset, flip w.p. 0.5."""
    n, c, h, w = x.shape
    p = CROP_PADDING
    padded_width = w + 2 * p
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode=PADDINGS[padding]).flatten(2)
    top = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator, device=x.device)
    left = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator, device=x.device)
    flip = torch.rand(n, 1, 1, generator=generator, device=x.device) < 0.5
    rows = top + torch.arange(h, device=x.device)[:, None]
    # A flipped crop reads its window's columns right to left: crop and flip in one gather
    # over the flattened padded image (3x faster on CPU than 4-tensor advanced indexing).
    offsets = torch.arange(w, device=x.device)
    cols = left + torch.where(flip, w - 1 - offsets, offsets)
    index = (rows * padded_width + cols).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, index).reshape(n, c, h, w)


def random_rotation(x: torch.Tensor, generator: torch.Generator, degrees: float) -> torch.Tensor:
    """Rotate each example by its own angle, uniform in [-degrees, degrees] (see :func:`rotate`)."""
    angles = (torch.rand(x.shape[0], generator=generator, device=x.device) * 2 - 1) * degrees
    return rotate(x, angles)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate example k by ``degrees[k]`` about the image centre, counter-clockwise for a positive
    angle (PIL's ``Image.rotate``, which torchvision's ``RandomRotation`` calls on CIFAR's PIL
    images); nearest neighbour, zeros outside."""
    angle = degrees.to(x.dtype) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates (x right, y down, in [-1, 1]); a
    # counter-clockwise turn on screen reads its input at the clockwise-turned position.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _check_loader_arguments(x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, drop_last: bool,
                            padding: str, rotation: float, cutout: int, mix: str, mix_alpha: float,
                            num_classes: int | None, views: int) -> None:
    """Refuse :class:`DeviceLoader` arguments it cannot honour, with one line naming the argument."""
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
        raise WpatError(
            f"DeviceLoader: expected uint8 images [N,C,H,W], found {x_uint8.dtype} {list(x_uint8.shape)}"
        )
    if y.shape != (x_uint8.shape[0],) or y.dtype.is_floating_point:
        raise WpatError(
            f"DeviceLoader: expected {x_uint8.shape[0]} integer labels, found {y.dtype} {list(y.shape)}"
        )
    if batch_size < 1:
        raise WpatError(f"DeviceLoader: batch_size must be >= 1, got {batch_size}")
    if drop_last and batch_size > x_uint8.shape[0]:
        raise WpatError(
            f"DeviceLoader: batch_size {batch_size} exceeds the {x_uint8.shape[0]} examples "
            f"and drop_last=True would yield no batch"
        )
    if padding not in PADDINGS:
        raise WpatError(f"DeviceLoader: padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    if not 0 <= rotation <= 180:
        raise WpatError(f"DeviceLoader: rotation must be in [0, 180] degrees, got {rotation!r}")
    _check_cutout(cutout, x_uint8.shape[2:])
    if mix != "none":
        if (isinstance(mix_alpha, bool) or not isinstance(mix_alpha, (int, float))
                or not 0 < mix_alpha < math.inf):
            raise WpatError(f"DeviceLoader: mix_alpha must be a finite number > 0 (the Beta(α, α) "
                            f"parameter), got {mix_alpha!r}")
        if num_classes is None:
            raise WpatError(f"DeviceLoader: mix={mix!r} needs num_classes "
                            f"(the width of its soft targets)")
    if num_classes is not None:
        _check_num_classes(num_classes, y)
    if isinstance(views, bool) or not isinstance(views, int) or views < 1 or (views > 1 and mix != "none"):
        raise WpatError(f"DeviceLoader: views must be an integer >= 1, and 1 with mixing, got {views!r}")


class DeviceLoader:
    """Iterate ``(x float32 [B,C,H,W] in [0,1], y)`` batches on ``device``.

    ``y`` is the int64 labels ``[B]``, or, with ``mix`` "mixup" or "cutmix", float32 soft
    targets ``[B, num_classes]`` (rows of label probabilities λ·onehot(y_a) + (1 − λ)·onehot(y_b),
    summing to 1), which the "ce" attack loss and the AT and TRADES objectives take in place of
    labels.

    Args:
        x_uint8: images, uint8 ``[N,C,H,W]`` (any device; copied to ``device`` once).
        y: integer labels ``[N]``.
        batch_size: examples per batch.
        shuffle: draw a new random order each epoch (else the stored order).
        drop_last: drop the final partial batch, so every batch has the same shape.
        augment: a name in ``AUGMENTATIONS`` ("none", "flip", "crop_flip").
        padding: the crop's padding, "zeros" or "reflect".
        rotation: maximum random rotation in degrees (0: none).
        device: where batches are made and returned.
        seed: with the epoch, determines order, augmentation and mixing.
        cutout: side in pixels of the square Cutout sets to 0 in each example, after crop,
            flip and rotation, 0 <= cutout <= min(H, W) (default 0: off; the AWP paper's and
            Rice et al.'s CIFAR-10 value is 14).
        mix: batch mixing, "none" (default), "mixup" or "cutmix" (a name in ``MIXES``).
        mix_alpha: α > 0 of the Beta(α, α) the mixing weight λ is drawn from (default 1.0;
            the AWP paper's mixup value is 1.4, CutMix's 1.0). Ignored with mix "none".
        num_classes: the width C of the soft targets; required with mixing, optional otherwise
            (if given, every label must lie in [0, C)).
        views: augmented views of each batch's images (default 1). With 2, each batch is
            ``(x, y, x2)``: ``x2`` the same images augmented again (crop, flip, rotation,
            cutout) by draws from a stream of its own, seeded by ``(seed, epoch, 1)``, so ``x``
            is the batch ``views=1`` yields. Not with mixing.
    """

    def __init__(
        self,
        x_uint8: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        augment: str = "none",
        padding: str = "zeros",
        rotation: float = 0.0,
        device: str | torch.device = "cpu",
        seed: int = 0,
        cutout: int = 0,
        mix: str = "none",
        mix_alpha: float = 1.0,
        num_classes: int | None = None,
        views: int = 1,
    ) -> None:
        self._mix = MIXES.get(mix)  # an unknown name first, before the options that depend on it
        _check_loader_arguments(x_uint8, y, batch_size, drop_last, padding, rotation, cutout, mix,
                                mix_alpha, num_classes, views)
        self._augment = AUGMENTATIONS.get(augment)
        self.cutout, self.mix = int(cutout), mix
        self.mix_alpha, self.num_classes = float(mix_alpha), num_classes
        self.padding, self.rotation = padding, float(rotation)
        self.x = x_uint8.to(device)
        self.y = y.to(device=device, dtype=torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.views = views
        self.epoch = 0
        # (epoch, index) of the batch last yielded: the training loop's position, which the
        # objectives read (wpat.objectives.Phase); None before the first batch.
        self.position: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration replay epoch ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        generator = torch.Generator(device=self.x.device)
        generator.manual_seed(_epoch_seed(self.seed, self.epoch))
        # further views draw from streams of their own, so the first view is the batch views=1 gives
        view_generators = [torch.Generator(device=self.x.device).manual_seed(_epoch_seed(self.seed, self.epoch, v))
                           for v in range(1, self.views)]
        epoch = self.epoch
        self.epoch += 1
        n = self.x.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=generator, device=self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        return self._batches(epoch, order, generator, view_generators)

    def _batches(self, epoch: int, order: torch.Tensor, generator: torch.Generator,
                 view_generators: list[torch.Generator]) -> Iterator[tuple[torch.Tensor, ...]]:
        for i in range(len(self)):
            self.position = (epoch, i)
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self._view(self.x[index], generator)
            if not view_generators:
                yield self._mix(x, self.y[index], generator, self.num_classes, self.mix_alpha)
            else:
                yield (x, self.y[index], *(self._view(self.x[index], g) for g in view_generators))

    def _view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 ``images`` as float32 in [0, 1], augmented."""
        x = self._augment(images.to(torch.float32).div_(255), generator, self.padding)
        if self.rotation:
            x = random_rotation(x, generator, self.rotation)
        if self.cutout:
            x = random_cutout(x, generator, self.cutout)
        return x


def _check_cutout(cutout: object, size: torch.Size) -> None:
    largest = min(size)
    if isinstance(cutout, bool) or not isinstance(cutout, int) or not 0 <= cutout <= largest:
        raise WpatError(f"DeviceLoader: cutout must be a whole number of pixels in [0, {largest}] "
                        f"(0: off; the square must fit in the {size[0]}x{size[1]} image), got {cutout!r}")


def _check_num_classes(num_classes: object, y: torch.Tensor) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise WpatError(f"DeviceLoader: num_classes must be an integer >= 1, got {num_classes!r}")
    if len(y) and not (0 <= int(y.min()) and int(y.max()) < num_classes):
        raise WpatError(f"DeviceLoader: labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
                        f"found [{int(y.min())}, {int(y.max())}]")


def _epoch_seed(seed: int, epoch: int, view: int = 0) -> int:
    # A further view's stream is keyed by its number too (the first view's key is the plain pair).
    return derived_seed(seed, epoch) if view == 0 else derived_seed(seed, epoch, view)
