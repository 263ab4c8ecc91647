"""BatchNorm running statistics: save and restore them, and count one forward as several.

The authors' AT scripts run train-mode forwards that wpat does not need (docs/design.md,
"BatchNorm running statistics"): the forward with which their PGD scores its final example,
and with mixup a second forward of every PGD step. Such a forward sees the same weights and the
same inputs as a forward wpat runs anyway, so it computes the same batch statistics; its only
effect is one more update of the running statistics. wpat applies that update without the
forward. After a train-mode forward has moved a module's running statistic from ``r0`` to
``r1``, ``n`` identical forwards would have left

    momentum m:                 r_n = r0 + (r1 − r0) · (1 − (1 − m)^n) / m
    cumulative (momentum None): r_n = r0 + (r1 − r0) · n (t + 1) / (t + n)

where ``t`` is ``num_batches_tracked`` before the forward, which ends ``n`` higher instead of 1.
Both follow from the update ``r ← r + f · (s − r)`` with the same batch statistic ``s`` each
time (``f = m``, or ``1 / (t + 1)`` for the cumulative average), the variance using the same
unbiased batch variance as the forward did.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class Saved(NamedTuple):
    """One module's running statistics before a forward."""

    module: _BatchNorm
    mean: Tensor
    var: Tensor
    count: Tensor


def tracking_modules(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm modules of ``model`` that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


@torch.no_grad()
def save_running_stats(model: nn.Module) -> list[Saved]:
    """Copies of every BatchNorm module's running mean, variance and ``num_batches_tracked``."""
    return [Saved(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in tracking_modules(model)]


@torch.no_grad()
def restore_running_stats(saved: list[Saved]) -> None:
    """Put the running statistics back as :func:`save_running_stats` found them."""
    for m, mean, var, count in saved:
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)


@torch.no_grad()
def count_as(saved: list[Saved], times: int) -> None:
    """Make the one train-mode forward run since ``saved`` count as ``times`` identical forwards.

    Call it once the forward's graph has been used: the forward keeps its running statistics
    for the backward, which refuses tensors changed in place after it. Modules in eval mode
    were not updated by the forward and are left alone.
    """
    for m, mean, var, count in saved:
        if not m.training:
            continue
        if m.momentum is None:
            t = count.to(mean.dtype)
            factor = times * (t + 1) / (t + times)
        else:  # (the limit as m → 0 is n; with m = 0 the statistics do not move anyway)
            f = (1 - (1 - m.momentum) ** times) / m.momentum if m.momentum else float(times)
            factor = torch.tensor(f, dtype=mean.dtype, device=mean.device)
        m.running_mean.copy_(torch.lerp(mean, m.running_mean, factor))
        m.running_var.copy_(torch.lerp(var, m.running_var, factor))
        m.num_batches_tracked.add_(times - 1)
