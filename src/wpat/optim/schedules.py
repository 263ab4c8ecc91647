"""Learning-rate schedules: built by name, each maps the epochs done ``t`` to a learning rate.

``SCHEDULES.build(name, epochs=T, **options)`` returns a callable ``schedule(t, lr)``, where
``t`` is the number of epochs done, fractional, in [0, T], and ``lr`` the base learning rate.
When ``t`` is sampled (before every batch, or once per epoch, and from which epoch count) is the
training loop's business (``schedule.update``, ``schedule.first_epoch``; see
``wpat.training.loop.schedule_time``).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from wpat.helpers.errors import check, is_count, is_number
from wpat.helpers.registry import Registry

SCHEDULES = Registry("schedule")


@dataclass(frozen=True)
class Schedule:
    """Base: ``epochs`` T ≥ 1, the length of the run."""

    epochs: int

    def __post_init__(self) -> None:
        check(is_count(self.epochs), f"{type(self).__name__} epochs", self.epochs, "an integer >= 1")

    def __call__(self, t: float, lr: float) -> float:
        raise NotImplementedError


@SCHEDULES.register("piecewise")
@dataclass(frozen=True)
class Piecewise(Schedule):
    """Step decay: ``lr · decay^k`` once ``t`` has reached k milestones.

    Both papers and Rice et al. 2020: ``lr`` divided by 10 at epochs 100 and 150 of 200.

    Args:
        epochs: T, the run's length in epochs.
        milestones: increasing fractions of T in (0, 1) (default 0.5, 0.75). A milestone
            counts once its epoch has started (``t ≥ m·T``), as "divided at the 100th epoch".
        decay: the factor at each milestone, in (0, 1] (default 0.1).
    """

    milestones: tuple = (0.5, 0.75)
    decay: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        ms = list(self.milestones) if isinstance(self.milestones, (list, tuple)) else [None]
        check(all(is_number(m) and 0 < m < 1 for m in ms) and ms == sorted(ms), "Piecewise milestones",
              self.milestones, "increasing fractions of the epochs in (0, 1)")
        check(is_number(self.decay) and 0 < self.decay <= 1, "Piecewise decay", self.decay, "a number in (0, 1]")

    def __call__(self, t: float, lr: float) -> float:
        passed = bisect.bisect_right([m * self.epochs for m in self.milestones], t)
        return lr * self.decay**passed


@SCHEDULES.register("cosine")
@dataclass(frozen=True)
class Cosine(Schedule):
    """Cosine annealing ``lr/2 · (1 + cos(π t / T))`` (AWP paper, Appendix C.1; RST's code).

    Args:
        epochs: T, the run's length in epochs.
    """

    def __call__(self, t: float, lr: float) -> float:
        return 0.5 * lr * (1 + math.cos(math.pi * t / self.epochs))


@SCHEDULES.register("cyclic")
@dataclass(frozen=True)
class Cyclic(Schedule):
    """One cycle: linear from 0 up to ``lr`` at ``peak·T``, then linear down to 0 at T.

    AWP paper, Appendix C.1 peaks at 0.2 at epoch 80 of 200 (``optim.lr=0.2``, ``peak=0.4``).

    Args:
        epochs: T, the run's length in epochs.
        peak: the fraction of T at which the rate peaks, in (0, 1) (default 0.4).
    """

    peak: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        check(is_number(self.peak) and 0 < self.peak < 1, "Cyclic peak", self.peak, "a fraction in (0, 1)")

    def __call__(self, t: float, lr: float) -> float:
        top = self.peak * self.epochs
        if t <= top:
            return lr * t / top
        return lr * max(0.0, (self.epochs - t) / (self.epochs - top))


@SCHEDULES.register("linear")
@dataclass(frozen=True)
class Linear(Schedule):
    """Linear decay from ``lr`` at t = 0 to 0 at T.

    Args:
        epochs: T, the run's length in epochs.
    """

    def __call__(self, t: float, lr: float) -> float:
        return lr * max(0.0, 1 - t / self.epochs)


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant(Schedule):
    """The base learning rate throughout.

    Args:
        epochs: T, the run's length in epochs (unused by the rate).
    """

    def __call__(self, t: float, lr: float) -> float:
        return lr
