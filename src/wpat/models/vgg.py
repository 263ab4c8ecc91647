"""VGG-19 with batch normalization for small images: :class:`VGG` and ``vgg19``."""

from __future__ import annotations

import torch
from torch import nn

from wpat.models.registry import MODELS

# Conv widths; "M" is a 2x2 max-pool.
VGG19_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG(nn.Module):
    """A VGG network with batch normalization for small images.

    Simonyan & Zisserman, *Very Deep Convolutional Networks for Large-Scale Image Recognition*,
    ICLR 2015; BN after every conv as in Ioffe & Szegedy 2015. Each conv is 3x3 (padding 1,
    with bias) followed by BN-ReLU; each "M" a 2x2 max-pool that rounds up (``ceil_mode``),
    which changes nothing for 32x32 inputs (32 → 1) and lets 28x28 inputs reach 1x1 too
    (28 → 14 → 7 → 4 → 2 → 1) instead of an empty map. Then one linear layer to
    ``num_classes`` (the CIFAR variant, without the ImageNet 4096-wide classifier).

    Args:
        cfg: conv widths in order, ``"M"`` for a max-pool (e.g. ``VGG19_CFG``).
        num_classes: number of classes.
        in_channels: input channels (default 3).
    """

    def __init__(self, cfg: list[int | str], *, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(width, int(item), 3, padding=1),
                           nn.BatchNorm2d(int(item)), nn.ReLU()]
                width = int(item)
        self.features = nn.Sequential(*layers)
        # A no-op on the 1x1 maps of 32x32 inputs; keeps larger inputs working.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("vgg19")
def vgg19(num_classes: int, in_channels: int = 3) -> VGG:
    """VGG-19 with BN (configuration E), which AWP (appendix, Fig. 11) and RWP use on CIFAR-10.

    Sixteen 3x3 convs in blocks of 64, 64 | 128, 128 | 256 x4 | 512 x4 | 512 x4 channels, each
    block followed by a 2x2 max-pool, then one linear layer 512 → ``num_classes`` — 20,040,522
    parameters for 10 classes. PyTorch's default init. See :class:`VGG`.

    Args:
        num_classes: number of classes.
        in_channels: input channels (default 3). No other options.
    """
    return VGG(VGG19_CFG, num_classes=num_classes, in_channels=in_channels)
