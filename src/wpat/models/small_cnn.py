"""A small, fast CNN for CPU-scale runs: :class:`SmallCNN` and ``small_cnn``."""

from __future__ import annotations

import torch
from torch import nn

from wpat.helpers.errors import WpatError
from wpat.models.registry import MODELS

HIDDEN = 128  # width of the hidden linear layer


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class SmallCNN(nn.Module):
    """A small, fast CNN for 28x28 (Fashion-MNIST) and 32x32 inputs, for CPU-scale runs.

    Shaped like the SmallCNN of the TRADES code (Zhang et al., ICML 2019) used on MNIST, with
    batch normalization added so that the BN-mode choices of the training step (train vs. eval
    while attacking) are exercised as on the papers' networks::

        [conv3x3(w)-BN-ReLU] x2, maxpool 2 | [conv3x3(2w)-BN-ReLU] x2, maxpool 2 |
        adaptive avg-pool to 4x4 | linear(2w·16 → 128)-ReLU | linear(128 → num_classes)

    The 4x4 pooling makes the flatten size independent of the input size (28x28 → 7x7 → 4x4,
    32x32 → 8x8 → 4x4). Parameters for 10 classes and one input channel: 197,674 at
    ``width=32``, 83,418 at ``width=16``. PyTorch's default init.

    Args:
        num_classes: number of classes.
        in_channels: input channels (default 3).
        width: channel count ``w`` of the first stage, the second has ``2w`` (default 32).
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, width),
            *conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *conv_bn_relu(width, 2 * width),
            *conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * width * 16, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 3, *, width: int = 32) -> SmallCNN:
    """A :class:`SmallCNN` (TRADES' MNIST SmallCNN with BatchNorm) for CPU-scale runs.

    Args:
        num_classes: number of classes.
        in_channels: input channels (default 3).
        width: channels of the first stage, an integer >= 1 (default 32; the second stage has
            twice as many). 197,674 parameters at 32, 83,418 at 16 (10 classes, one channel).
    """
    if width < 1:
        raise WpatError(f"small_cnn: width={width} is invalid; expected an integer >= 1")
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)
