"""Learning-rate schedules, evaluated per iteration from the fractional epoch.

Each schedule maps ``t`` (epochs done, fractional, in [0, T]) to a learning rate:

- ``piecewise``: ``lr`` divided by 10 (``decay``) at each milestone (50 % and 75 % of the
  epochs by default: epochs 100 and 150 of 200, as in both papers and Rice et al. 2020).
- ``cosine``: ``lr/2 · (1 + cos(π t / T))`` (AWP paper, Appendix C.1).
- ``cyclic``: linear from 0 up to ``lr`` at ``peak·T``, then linear down to 0 (AWP paper,
  Appendix C.1, which peaks at 0.2 at epoch 80 of 200: set ``optim.lr=0.2``).
- ``linear``: linear from ``lr`` down to 0.
- ``constant``: ``lr``.
"""

from __future__ import annotations

import bisect
import math

from wpat.config import ScheduleConfig
from wpat.registry import Registry

SCHEDULES = Registry("schedule")


@SCHEDULES.register("piecewise")
def piecewise(t: float, lr: float, s: ScheduleConfig) -> float:
    # A milestone counts once its epoch has started, matching "divided at the 100th epoch".
    passed = bisect.bisect_right([m * s.epochs for m in s.milestones], t)
    return lr * s.decay**passed


@SCHEDULES.register("cosine")
def cosine(t: float, lr: float, s: ScheduleConfig) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * t / s.epochs))


@SCHEDULES.register("cyclic")
def cyclic(t: float, lr: float, s: ScheduleConfig) -> float:
    top = s.peak * s.epochs
    if t <= top:
        return lr * t / top
    return lr * max(0.0, (s.epochs - t) / (s.epochs - top))


@SCHEDULES.register("linear")
def linear(t: float, lr: float, s: ScheduleConfig) -> float:
    return lr * max(0.0, 1 - t / s.epochs)


@SCHEDULES.register("constant")
def constant(t: float, lr: float, s: ScheduleConfig) -> float:
    return lr


def learning_rate(t: float, lr: float, s: ScheduleConfig) -> float:
    """The learning rate after ``t`` epochs (fractional) under schedule ``s``."""
    return SCHEDULES.get(s.name)(t, lr, s)
