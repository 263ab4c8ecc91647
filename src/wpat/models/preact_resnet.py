"""Pre-activation ResNets: :class:`PreActResNet` and ``preact_resnet18``."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wpat.models.registry import MODELS


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut; ``stride`` downsamples (pixels)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The identity shortcut carries the raw x; a projection sees the activated input.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """A pre-activation ResNet: stem conv3x3, stages of :class:`PreActBlock`, then BN-ReLU,
    global average pooling, linear.

    He, Zhang, Ren, Sun, *Identity Mappings in Deep Residual Networks*, ECCV 2016. A
    pre-activation block computes ``x_{l+1} = s(x_l) + F(x_l)`` with
    ``F = conv3x3 ∘ ReLU ∘ BN ∘ conv3x3 ∘ ReLU ∘ BN`` (BN-ReLU *before* each conv, eq. 3 and
    Fig. 4e of the paper). The shortcut ``s`` is the identity, or a 1x1 strided conv applied to
    the activated input ``ReLU(BN(x_l))`` when the block changes the width or the resolution, as
    in the authors' and the AWP/RWP reference code. The same family, with other widths, depths
    and a kaiming init, is the Wide ResNet (``wide_resnet``), hence the list of stages.

    Args:
        stages: ``(width, num_blocks, stride)`` per stage; only a stage's first block has the
            stride (pixels).
        stem_width: output channels of the stem conv.
        num_classes: outputs of the final linear layer.
        in_channels: input channels (default 3).
    """

    def __init__(
        self,
        stages: Sequence[tuple[int, int, int]],
        *,
        stem_width: int,
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = conv3x3(in_channels, stem_width)
        blocks: list[nn.Module] = []
        width = stem_width
        for out_width, num_blocks, stride in stages:
            for i in range(num_blocks):
                blocks.append(PreActBlock(width, out_width, stride if i == 0 else 1))
                width = out_width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int, in_channels: int = 3) -> PreActResNet:
    """PreAct ResNet-18, the main architecture of both AWP and RWP (He et al., ECCV 2016).

    A :class:`PreActResNet` with a 3x3 stem conv of 64 channels, then stages of 2 blocks each
    with 64, 128, 256, 512 channels and strides 1, 2, 2, 2 — 11,172,170 parameters for 10
    classes. PyTorch's default init, as in the reference code. Global average pooling makes any
    input size work (32x32 → 4x4 before pooling; 28x28 → 4x4 as well).

    Args:
        num_classes: number of classes.
        in_channels: input channels (default 3). No other options.
    """
    stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    return PreActResNet(stages, stem_width=64, num_classes=num_classes, in_channels=in_channels)
