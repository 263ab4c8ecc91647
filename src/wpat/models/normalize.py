"""Per-channel input normalization as the first layer of every model.

Models take inputs in [0, 1] and standardise them themselves, ``(x - mean) / std`` per channel,
so that attacks can work in pixel space (clamp to [0, 1], project onto the ε-ball) and the
model can be handed as is to AutoAttack or RobustBench, which expect exactly that.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from wpat.helpers.errors import WpatError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` are buffers of shape [1, C, 1, 1].

    They are buffers, not parameters, so they follow ``.to(device)``, are saved in checkpoints
    and are never trained or weight-perturbed.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], in_channels: int | None = None
    ) -> None:
        super().__init__()
        mean, std = list(mean), list(std)
        in_channels = len(mean) if in_channels is None else in_channels
        if len(mean) != in_channels or len(std) != in_channels:
            raise WpatError(
                f"model normalization: mean {mean} and std {std} must each have "
                f"in_channels={in_channels} values"
            )
        if min(std) <= 0:
            raise WpatError(f"model normalization: std {std} must be > 0 in every channel")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
