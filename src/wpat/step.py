"""One adversarial training step with an optional weight perturbation, and its timing rules.

The step (docs/design.md, "One training step"):

1. the attack crafts ``x_adv`` (and the views' adversarial examples) from input gradients
   only, and the objective prepares what it reads once per ``x_adv``;
2. ``loss_fn(m) = objective.per_example(m, batch)`` (shape [B]);
3. after its warm-up (:func:`perturbation_active`), the weight perturbation computes ``v``;
4. the optimizer steps on ``objective.descent_losses`` at ``w + v``, then ``v`` is subtracted
   again, as the AWP and RWP code does; a perturbation that declares ``descends_from_w`` (SAM)
   takes the gradient at ``w + v`` and the step from ``w``. What else a perturbation declares
   (``search_forward_counts``, ``recraft``, ``attack_gradients``; ``perturb/base.py``) the step
   honours without knowing which method runs.

:func:`schedule_time` says when in the run a batch reads the learning-rate schedule.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor, nn

from wpat import distributed
from wpat.attacks import recording_weight_gradients
from wpat.batchnorm import count_as, restore_running_stats, save_running_stats
from wpat.config import Config, ScheduleConfig
from wpat.objectives import Batch, Objective
from wpat.perturb import WeightPerturbation, held_at, perturbed
from wpat.regularize import l1_penalty


# One function on purpose (about 50 lines of code): it is docs/design.md's "One training step",
# steps 2 to 5, in their order, and the BatchNorm bookkeeping must see all of them.
def train_step(model: nn.Module, batch: Batch, attack: Callable[..., Tensor], objective: Objective,
               perturbation: WeightPerturbation | None, optimizer: torch.optim.Optimizer,
               alternations: int = 1, l1: float = 0.0, weights: Tensor | None = None,
               score_forward: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """One adversarial training step on the clean ``batch`` (``x``, ``y``, the views and
    supplies the objective needs); returns the per-example losses at ``w + v`` and the
    perturbation's statistics (empty without a perturbation).

    ``alternations`` A ≥ 1 (AWP paper §4.2, Fig. 2a): after the first x′ and v, A − 1 more times
    craft x′ against the model at ``w + v`` and continue the search for v from that x′; the
    update uses the last x′ and v. The weights are put back bitwise between alternations.
    ``l1`` adds λ·Σ|w| of the conv/linear weights (at ``w + v``) to the mean loss. ``weights``
    [B] multiply the per-example losses (the extra examples' weight), in the search and the step.

    ``score_forward``: the attack ran in train mode, and each of its results is to be scored by
    one more train-mode forward at the weights it was crafted at, as the authors' AT scripts'
    PGD does (to pick the best restart); that forward changes nothing but the BatchNorm running
    statistics, which take one more update. Where the step runs that very forward anyway -- the
    objective's single forward of ``x_adv`` at ``w`` (AT), when it trains (no perturbation, or
    RWP did not move) or starts the search -- the update is counted once more instead of run
    (``wpat.batchnorm``); otherwise the score costs one forward without a graph. A search
    forward the perturbation declares a training forward (``search_forward_counts``) is
    counted twice when it also stands for the score."""
    declared = perturbation if perturbation is not None else WeightPerturbation  # the step's declared behaviour
    with recording_weight_gradients(model) if declared.attack_gradients else nullcontext() as recorded:
        batch = adversarial(model, batch, attack, objective)
    model.train()
    # AT's loss is one forward of x_adv: at the attacked weights w it is the scripts' scoring forward.
    scored_by_loss = score_forward and objective.single_adversarial_forward
    if score_forward and not scored_by_loss:
        score(model, batch.x_adv)
    raw, v, stats = None, {}, {}
    twice = None  # the running statistics before a forward that stands for the scoring forward too
    if perturbation is not None:
        # The forward at w is the search's first step, and when the search does not move off w
        # (RWP with no example below c_min) it is the training forward too: the step then costs
        # what plain AT costs. Otherwise its BN statistics update is undone, so that only the
        # forward at w + v updates them, as in the authors' code -- unless it stands for their
        # scoring forward, which updates them at w with x_adv exactly as it did, or the method
        # declares it a training forward of its own (SAM's ascent forward).
        saved = save_running_stats(model)
        raw = objective.per_example(model, batch)
        given = {"attack_gradients": recorded} if declared.attack_gradients else {}
        result = perturbation.compute(model, loss_function(objective, batch, weights), losses=weighted(raw, weights),
                                      **given)
        stats = dict(result.stats)
        if result.moved or alternations > 1:
            raw = None
            if declared.search_forward_counts and scored_by_loss:
                count_as(saved, 2)  # the scripts' score of x_adv at w, and the ascent forward (graph used)
            elif not (declared.search_forward_counts or scored_by_loss):
                restore_running_stats(saved)
        elif scored_by_loss:
            twice = saved  # the scripts score x_adv at w, then train on it at w + 0: two forwards
        for _ in range(alternations - 1):
            with held_at(model, result.v):
                batch = adversarial(model, batch, attack, objective)
                if score_forward:
                    score(model, batch.x_adv)
            model.train()
            result = perturbation.compute(model, loss_function(objective, batch, weights), start=result)
            stats["perturb_steps"] = stats["perturb_steps"] + result.stats["perturb_steps"]
            stats["v_over_w"] = result.stats["v_over_w"]
        if result.moved:
            v = result.v
        # else: adding a zero v would also invalidate the graph of the forward at w
    # SAM-type methods take the gradient at w + v and the step from w (put back bitwise); AWP and
    # RWP step at w + v and subtract v after, carrying the update back to w (AWP eq. 11).
    with (held_at if declared.descends_from_w else perturbed)(model, v):
        if declared.recraft and v:
            batch = adversarial(model, batch, attack, objective)  # x' against w + v (MAIR's trainer)
            if score_forward:
                score(model, batch.x_adv)
            model.train()
        if raw is None:
            if scored_by_loss and perturbation is None:
                twice = save_running_stats(model)  # plain AT: the scoring and training forwards are one
            raw = objective.per_example(model, batch)
        optimizer.zero_grad(set_to_none=True)
        descent = weighted(objective.descent_losses(raw), weights)
        (descent.mean() + l1_penalty(model, l1)).backward()
        distributed.average_gradients(model)  # under torchrun: the global batch's gradient
        if not declared.descends_from_w:
            optimizer.step()
    if declared.descends_from_w:
        optimizer.step()
    if twice is not None:  # after the backward, which needs the statistics the forward saw
        count_as(twice, 2)
    return weighted(raw, weights).detach(), stats


def adversarial(model: nn.Module, batch: Batch, attack: Callable[..., Tensor], objective: Objective) -> Batch:
    """``batch`` with the adversarial examples of ``x`` and of every view, crafted in one attack
    call (one batch of all views), and what the objective prepares once per x′."""
    if not batch.views:
        return objective.prepare(replace(batch, x_adv=attack(model, batch.x, batch.y)))
    n = len(batch.views) + 1
    y = batch.y.repeat(n, *[1] * (batch.y.dim() - 1))
    x_adv, *views_adv = attack(model, torch.cat([batch.x, *batch.views]), y).split(len(batch.x))
    return objective.prepare(replace(batch, x_adv=x_adv, views_adv=tuple(views_adv)))


def weighted(losses: Tensor, weights: Tensor | None) -> Tensor:
    return losses if weights is None else losses * weights


def loss_function(objective: Objective, batch: Batch, weights: Tensor | None) -> Callable[..., Tensor]:
    """What a weight perturbation sees of the objective: ``loss_fn(m)``, the per-example
    (weighted) losses of ``m`` on ``batch``, and ``loss_fn(m, index)`` on a subset of it."""
    def loss_fn(m: nn.Module, index: Tensor | None = None) -> Tensor:
        if index is None:
            return weighted(objective.per_example(m, batch), weights)
        return weighted(objective.per_example(m, batch.select(index)), None if weights is None else weights[index])
    return loss_fn


def score(model: nn.Module, x_adv: Tensor) -> None:
    """The AT scripts' scoring forward of PGD's result, in the model's (train) mode and without a
    graph: only its update of the BatchNorm running statistics remains."""
    with torch.no_grad():
        model(x_adv)


def perturbation_active(epoch: int, cfg: Config) -> bool:
    """Whether the weight perturbation runs in (0-based) ``epoch``: after ``perturb.warmup``
    plain epochs, however the schedule numbers its epochs."""
    return epoch >= cfg.perturb.warmup


def schedule_time(epoch: int, step: int, steps_per_epoch: int, s: ScheduleConfig) -> float:
    """The schedule's ``t`` for batch ``step`` of ``epoch`` (both counted from 0 here).

    ``schedule.update``: ``step_start`` reads the schedule at the batch's start, ``e + i/N``;
    ``step_end`` at its end, ``e + (i+1)/N``, as the authors' AT scripts (so the last batch of
    epoch 99 already runs at the lower rate); ``epoch`` once per epoch, ``e``, as their TRADES,
    MART and RST scripts. ``schedule.first_epoch=1`` numbers the first epoch 1, as those
    scripts count, so a milestone at epoch 100 takes effect one epoch earlier than with 0."""
    t = float(epoch + s.first_epoch)
    if s.update == "step_start":
        t += step / steps_per_epoch
    elif s.update == "step_end":
        t += (step + 1) / steps_per_epoch
    return t
