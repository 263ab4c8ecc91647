"""ReBAT's objective: adversarial training pulled towards the weight average, :class:`ReBAT`."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from wpat.attacks.losses import cross_entropy_per_example, kl_divergence
from wpat.helpers.errors import check, is_finite
from wpat.objectives.base import OBJECTIVES, Batch, Objective
from wpat.helpers.threat import BNMode
from wpat.helpers.passes import ObjectiveCost


# AT plus the average's forward of x' (counted over the whole run; it runs from run.ema_start)
@OBJECTIVES.register("rebat", cost=lambda options, base: ObjectiveCost(1, forwards=1))
class ReBAT(Objective):
    """AT plus the BoAT regularizer towards the weight average (ReBAT).

    Wang, Li, Yang, Lin, Wang, *Balance, Imbalance, and Rebalance: Understanding Robust
    Overfitting from a Minimax Game Perspective*, NeurIPS 2023; code ``PKU-ML/ReBAT``
    (``train_cifar_wa.py``, ``utils.py``)::

        ℓ_i = CE(f_w(x'_i), y_i) + β · KL(f_w̄(x'_i) ‖ f_w(x'_i))
        KL(p̄ ‖ p) = Σ_k p̄_k (log p̄_k − log p_k),   p = softmax

    where w̄ is the run's weight average (``needs`` "average") and x' the training attack's
    example, the same for both models. The average's logits are computed once per x′ without
    gradients (``prepare``); the gradient flows through the trained model's logits only. The
    batch mean of ℓ is the code's ``robust_loss + beta * F.kl_div(log_softmax(out),
    softmax(out_wa), reduction="batchmean")``; the direction is the code's (the average's
    prediction is the target).

    The ReBAT recipe is this objective with the weight average it reads (docs/reproduction.md):
    ``run.ema=0.999 run.ema_start=105 run.ema_ramp=false`` -- the average is an exact copy of
    the weights before epoch 105 and decays by 0.999 per step after, and BoAT is on exactly
    while it averages (the objective gets no average before, so ℓ is AT's), as the code gates
    both by ``--warmup-epochs``; the smaller learning-rate decay (``--lr-factor f``: the
    piecewise schedule's ``decay`` = 1/f); and for ReBAT++ the stronger attack from epoch 100
    (``attack.later_from`` with ``attack.later_eps``/``attack.later_steps``).

    Args:
        beta: weight β of the KL, a finite number >= 0 (default 1.0, the code's default and its
            PreAct ResNet-18 runs; its WRN-34-10 + CutMix run uses 2.0).

    The code's guard is kept: when the batch mean of the KL is not below 1e10 (or is NaN), the
    KL term is left out for that batch (under RWP's ``subset`` search: for the examples the
    search evaluates). Checking it costs one device-to-host copy per call.

    Where wpat departs from the code (docs/reproduction.md): the average's forward runs in eval
    mode (the code's ``model_wa`` happens to be in train mode during epoch 105, the first epoch
    of BoAT, and in eval mode after its first evaluation); the code's ``--use-reg-schedule``
    (β from the learning rate, off in every run of its README) is not offered; its clean
    train-mode forward after each step (logging, inherited from Rice et al.) is not run.

    Training attack as in the code (Rice et al.'s ``attack_pgd``): PGD on cross-entropy from a
    uniform random start, crafted in train mode; one forward of x' (AT's), which with
    ``attack.script_forwards`` also stands for the code's forward scoring the attack's result.
    Mixed targets (the code's CutMix run) are soft targets of the cross-entropy; the KL reads
    no labels.
    """

    attack_loss = "ce"
    attack_init = "uniform"
    attack_bn_mode = BNMode.TRAIN
    single_adversarial_forward = True
    needs = ("average",)

    GUARD = 1e10  # the code's `if reg_loss < 1e10`

    def __init__(self, beta: float = 1.0) -> None:
        check(is_finite(beta) and beta >= 0, "ReBAT beta", beta, "a finite number >= 0")
        self.beta = float(beta)

    def prepare(self, batch: Batch) -> Batch:
        average = batch.supplies.average
        if average is None or self.beta == 0:  # before the average starts: plain AT
            return batch
        with torch.no_grad():
            logits = average(batch.x_adv)
        return replace(batch, context={**batch.context, "average": logits})

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch.x_adv)
        natural = cross_entropy_per_example(logits, batch.y)
        if "average" not in batch.context:
            return natural
        kl = kl_divergence(batch.context["average"], logits)
        if not bool(kl.detach().mean() < self.GUARD):  # NaN fails the comparison too, as in the code
            return natural
        return natural + self.beta * kl
