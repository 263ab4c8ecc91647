"""Averages of the trained weights, kept next to the model: the run's "weight average".

Two kinds, chosen by ``run.average``; the training loop sees one interface (:class:`Average`):
``update(model, epoch)`` after every optimizer step, ``end_epoch(model, epoch)`` after the last
step of every epoch (before the evaluation), ``active(epoch)`` and ``state()``/``load_state()``.
Epochs are counted from 0, as the loop counts them. The average is always of ``w``, after a
weight perturbation's ``v`` has been subtracted again, never of ``w + v``.

- ``ema`` (:class:`WeightAverage`, Gowal et al. 2020; Rebuffi et al. 2021): after every step
  ``ema ← d·ema + (1 − d)·w`` for every parameter and floating-point buffer (BatchNorm running
  statistics too, so the average is usable as it is, in eval mode); integer buffers
  (``num_batches_tracked``) are copied. With ``run.ema_ramp`` the decay ramps up as
  ``d_t = min(d, (1 + t) / (10 + t))`` over its first t updates, so the average soon forgets the
  random initialisation. Before ``run.ema_start`` the average is an exact copy of the weights
  after every step, and the decay applies from that epoch on: ReBAT's ``--warmup-epochs``
  (decay 0 before epoch 105, 0.999 after, no ramp), DKL's in-loop average (0.9996 from epoch 150).
- ``swa`` (:class:`StochasticWeightAverage`, Izmailov et al. 2018, as Chen et al. 2021 use it
  against robust overfitting): at the end of epoch ``run.swa_start`` and of every
  ``run.swa_every``-th epoch after it, the parameters join an equal-weight running mean,
  ``swa ← swa + (w − swa)/(n + 1)``, and the BatchNorm running statistics are recomputed by one
  pass over the training set (:func:`recalibrate_batchnorm`). Before ``run.swa_start`` the
  average is a copy of the weights at each epoch's end.

Under ``torchrun`` every rank holds the same average: the parameters are the same on every
rank, and the SWA BatchNorm pass runs over the whole training set on each.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Union

import torch
from torch import Tensor, nn

from wpat.helpers.batchnorm import tracking_modules
from wpat.configuration.config import RunConfig
from wpat.helpers.errors import WpatError
from wpat.helpers.model_state import kept

# The batches of a BatchNorm pass after (0-based) epoch e: ``batches(e)``.
BatchSource = Callable[[int], Iterable[Tensor]]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode that no optimizer or autograd touches."""
    average = copy.deepcopy(model).eval()
    for p in average.parameters():
        p.requires_grad_(False)
    return average


@torch.no_grad()
def copy_weights(average: nn.Module, model: nn.Module) -> None:
    """Every tensor of ``model``'s state into ``average``, bit for bit."""
    for avg, new in zip(average.state_dict().values(), model.state_dict().values()):
        avg.copy_(new)


class WeightAverage:
    """The exponential moving average of ``model`` (``run.average=ema``).

    Args:
        model: the model being trained (its current weights start the average).
        decay: d in (0, 1) per step, e.g. 0.999 (``run.ema``).
        start: the first epoch (0-based) whose steps decay (``run.ema_start``, default 0);
            before it the average is set to the weights after every step.
        ramp: ramp the decay up as (1 + t)/(10 + t) over the first t decaying updates
            (``run.ema_ramp``, default True).
    """

    def __init__(self, model: nn.Module, decay: float, *, start: int = 0, ramp: bool = True) -> None:
        if not 0 < decay < 1:
            raise WpatError(f"run.ema: {decay!r} is invalid; expected a decay in (0, 1), e.g. 0.995")
        if start < 0:
            raise WpatError(f"run.ema_start: {start!r} is invalid; expected an epoch >= 0")
        self.decay, self.start, self.ramp = float(decay), int(start), bool(ramp)
        self.model = frozen_copy(model)
        self.updates = 0  # decaying updates so far (those from epoch ``start`` on)

    def active(self, epoch: int) -> bool:
        """Whether in (0-based) ``epoch`` the average averages, rather than copies, the weights."""
        return epoch >= self.start

    def current_decay(self) -> float:
        if not self.ramp:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int) -> None:
        """After a step of (0-based) ``epoch``: average, or before ``start`` copy, the weights."""
        if not self.active(epoch):
            copy_weights(self.model, model)
            return
        d = self.current_decay()
        for avg, new in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(new.detach(), alpha=1 - d)
            else:
                avg.copy_(new)
        self.updates += 1

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """Nothing: the moving average changes at every step only."""

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


class StochasticWeightAverage:
    """The equal-weight average of ``model``'s parameters at epoch ends (``run.average=swa``).

    Chen et al.'s ``main_adv.py`` (``--swa``): after epoch ``start`` and every ``every``-th
    epoch after it, ``moving_average(swa, model, 1/(n + 1))`` over the parameters only, then
    ``bn_update`` over the training set (:func:`recalibrate_batchnorm`).

    Args:
        model: the model being trained.
        start: the first epoch (0-based) whose end is averaged (``run.swa_start``; the authors'
            ``--swa_start`` 55). Before it the average is the weights (parameters and buffers)
            at each epoch's end, as the authors log the model's accuracies as the average's.
        every: average every ``every`` epochs from ``start`` on (``run.swa_every``; their
            ``--swa_c_epochs`` 1).
        batches: ``batches(epoch)``, the clean augmented training batches of the BatchNorm pass
            after ``epoch``; a model without BatchNorm needs none.
    """

    def __init__(self, model: nn.Module, *, start: int, every: int = 1, batches: BatchSource | None = None) -> None:
        if start < 0:
            raise WpatError(f"run.swa_start: {start!r} is invalid; expected an epoch >= 0")
        if every < 1:
            raise WpatError(f"run.swa_every: {every!r} is invalid; expected a number of epochs >= 1")
        self.start, self.every, self.batches = int(start), int(every), batches
        self.model = frozen_copy(model)
        self.averaged = 0  # the number of epochs' weights in the average

    def active(self, epoch: int) -> bool:
        """Whether in (0-based) ``epoch`` the average is one of earlier epochs' weights (from the
        epoch after ``start`` on), rather than a copy of the weights."""
        return epoch > self.start

    def update(self, model: nn.Module, epoch: int) -> None:
        """Nothing: stochastic weight averaging collects the weights at epoch ends only."""

    @torch.no_grad()
    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """After the last step of (0-based) ``epoch``: before ``start`` the weights; from it on,
        every ``every``-th epoch, one more term of the average and the BatchNorm pass."""
        if epoch < self.start:
            copy_weights(self.model, model)
            return
        if (epoch - self.start) % self.every:
            return
        share = 1.0 / (self.averaged + 1)  # the first term (n = 0) is the weights themselves
        for avg, new in zip(self.model.parameters(), model.parameters()):
            avg.mul_(1.0 - share).add_(new.detach() * share)
        self.averaged += 1
        if tracking_modules(self.model):
            if self.batches is None:
                raise WpatError("stochastic weight averaging of a model with BatchNorm needs training "
                                "batches for its BatchNorm pass")
            recalibrate_batchnorm(self.model, self.batches(epoch))

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "averaged": self.averaged}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.averaged = int(state["averaged"])


Average = Union[WeightAverage, StochasticWeightAverage]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> None:
    """Recompute ``model``'s BatchNorm running statistics over ``batches``, as the SWA code's
    ``bn_update``: running means reset to 0 and variances to 1, then train-mode forwards with
    momentum b/(n + b) for a batch of b after n examples, so each statistic ends as the
    example-weighted mean of the batches' means (and unbiased variances).
    ``num_batches_tracked`` counts on, as theirs. The modules' momenta and train/eval flags
    are put back afterwards."""
    modules = tracking_modules(model)
    momenta = [m.momentum for m in modules]
    for m in modules:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    seen = 0
    try:
        with kept(model, train=True):
            for x in batches:
                b = x.shape[0]
                for m in modules:
                    m.momentum = b / (seen + b)
                model(x)
                seen += b
    finally:
        for m, momentum in zip(modules, momenta):
            m.momentum = momentum


def keeps_average(run: RunConfig) -> bool:
    """Whether a run of these settings keeps a weight average (``run.ema`` > 0, or SWA)."""
    return run.average == "swa" or run.ema > 0


def build_average(run: RunConfig, model: nn.Module, batches: BatchSource | None = None) -> Average | None:
    """The weight average ``run.average`` names with its ``run.*`` settings, or None without one;
    ``batches`` feed SWA's BatchNorm pass."""
    if run.average == "swa":
        return StochasticWeightAverage(model, start=run.swa_start, every=run.swa_every, batches=batches)
    if run.ema > 0:
        return WeightAverage(model, run.ema, start=run.ema_start, ramp=run.ema_ramp)
    return None
