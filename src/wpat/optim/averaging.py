"""An exponential moving average of the weights (Gowal et al. 2020; Rebuffi et al. 2021).

After every optimizer step, ``ema ← d·ema + (1 − d)·w`` for every parameter and floating-point
buffer (BatchNorm running statistics too, so the averaged model is usable as it is, in eval mode);
integer buffers (``num_batches_tracked``) are copied. The decay ramps up as
``d_t = min(decay, (1 + t) / (10 + t))`` over the first updates (t = updates so far), so the
average does not remember the random initialisation for long. Under a weight perturbation the
average is taken of ``w``, after ``v`` has been subtracted again, never of ``w + v``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from wpat.helpers.errors import WpatError


class WeightAverage:
    """The averaged copy of ``model``.

    Args:
        model: the model being trained (its current weights start the average).
        decay: d in (0, 1), e.g. 0.995 (per step).
        warmup: ramp the decay up as (1 + t) / (10 + t) (default True).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0 < decay < 1:
            raise WpatError(f"run.ema: {decay!r} is invalid; expected a decay in (0, 1), e.g. 0.995")
        self.decay, self.warmup = float(decay), warmup
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for avg, new in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(new.detach(), alpha=1 - d)
            else:
                avg.copy_(new)
        self.updates += 1

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
