"""A small, fast CNN for 28x28 (Fashion-MNIST) and 32x32 inputs, for CPU-scale runs.

Shaped like the SmallCNN of the TRADES code (Zhang et al., ICML 2019) used on MNIST, with batch
normalization added so that the BN-mode choices of the training step (train vs. eval while
attacking) are exercised as on the papers' networks:

    [conv3x3(w)-BN-ReLU] x2, maxpool 2 | [conv3x3(2w)-BN-ReLU] x2, maxpool 2 |
    adaptive avg-pool to 4x4 | linear(2w·16 → 128)-ReLU | linear(128 → num_classes)

``small_cnn(num_classes, in_channels=3, *, width=32)``: ``width`` is the channel count ``w`` of
the first stage (the second has ``2w``). The 4x4 pooling makes the flatten size independent of
the input size (28x28 → 7x7 → 4x4, 32x32 → 8x8 → 4x4). Parameters for 10 classes and one
input channel: 197,674 at ``width=32``, 83,418 at ``width=16``. PyTorch's default init.
"""

from __future__ import annotations

import torch
from torch import nn

from wpat.errors import WpatError

HIDDEN = 128  # width of the hidden linear layer


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class SmallCNN(nn.Module):
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


def small_cnn(num_classes: int, in_channels: int = 3, *, width: int = 32) -> SmallCNN:
    if width < 1:
        raise WpatError(f"small_cnn: width={width} is invalid; expected an integer >= 1")
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)
