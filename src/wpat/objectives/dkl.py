"""DKL: TRADES with the decoupled KL divergence and a class-wise prior, :class:`DKL`."""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wpat.helpers import distributed
from wpat.attacks.losses import cross_entropy_per_example, require_labels
from wpat.helpers.errors import WpatError, check, is_finite
from wpat.objectives.base import OBJECTIVES, Batch, Objective, Phase
from wpat.helpers.threat import BNMode
from wpat.helpers.passes import ObjectiveCost


def dkl_divergence(logits_adv: Tensor, logits_clean: Tensor, class_weights: Tensor, alpha: float, beta: float,
                   gamma: float) -> Tensor:
    """The per-example decoupled KL of the authors' ``dkl_loss`` (temperature 1), ``[B]``::

        α · sce_i + β · mse_i
        sce_i = −Σ_k softmax(z_i)_k · log softmax(z'_i)_k          (z detached here)
        mse_i = ¼ Σ_jk a_ij a_ik ((z_ij − z_ik) − (z'_ij − z'_ik))² · B / Σ_b (Σ_j a_bj)²

    with z the clean and z' the adversarial logits, a = ``class_weights``^γ (no gradient).
    The code divides the batch's weighted sum by the batch's total weight Σ_b (Σ_j a_bj)²;
    that normaliser, times B, makes the mean over the batch equal the code's batch loss
    (with γ = 1 and rows of the prior summing to 1 it is 1). The pairwise sum is computed as
    ½ S Σ_j a_j (d_j − d̄)², d = z − z', S = Σ_j a_j, d̄ = Σ_j a_j d_j / S: the same value in
    O(C) rather than O(C²), without the cancellation of the expanded square.
    """
    z, z_adv = logits_clean.float(), logits_adv.float()
    with torch.no_grad():
        a = class_weights.float().pow(gamma)
        total = a.sum(dim=1)
        normaliser = len(a) / total.square().sum()
    d = z - z_adv
    centre = (a * d).sum(dim=1, keepdim=True) / total[:, None]
    mse = 0.5 * total * (a * (d - centre).square()).sum(dim=1) * normaliser
    sce = -(F.softmax(z.detach(), dim=1) * F.log_softmax(z_adv, dim=1)).sum(dim=1)
    return alpha * sce + beta * mse


def class_prior(sums: Tensor, previous: Tensor | None) -> Tensor:
    """Each class's row of ``sums`` (the summed softened clean predictions of its training
    examples over an epoch) scaled to sum to 1. A class that had no example keeps its previous
    row (uniform at first), where the authors' code would divide by zero."""
    rows = sums.sum(dim=1, keepdim=True)
    fallback = previous if previous is not None else torch.full_like(sums, 1 / sums.shape[1])
    return torch.where(rows > 0, sums / rows.clamp_min(torch.finfo(sums.dtype).tiny), fallback.to(sums))


@OBJECTIVES.register("dkl", cost=lambda options, base: ObjectiveCost(2, attack_forwards=1))  # as TRADES with one clean forward
class DKL(Objective):
    """DKL: TRADES' KL replaced by the decoupled KL with class-wise global weights (the paper's
    IKL/GKL adversarial training).

    Cui, Tian, Zhong, Qi, Yu, Zhang, *Decoupled Kullback-Leibler Divergence Loss*, NeurIPS 2024
    (arXiv 2305.13948), as its code trains it (``jiequancui/DKL``,
    ``DKLv2/Adv-training-dkl/train_dkl_cifar10.py``: ``dkl_loss``, ``perturb_input``,
    ``train``)::

        ℓ_i = CE(z_i, y_i) + α · sce_i + β · mse_i           z = f(x), z' = f(x')
        sce_i = −Σ_k softmax(z_i)_k · log softmax(z'_i)_k    (z detached)
        mse_i = ¼ Σ_jk w_j w_k ((z_j − z_k) − (z'_j − z'_k))²   w = (prior[y_i])^γ

    (see :func:`dkl_divergence` for the batch normaliser with γ ≠ 1). The KL of two softmaxes
    equals a weighted MSE of their logit differences plus a soft-label cross-entropy; the code
    lets the MSE's gradient reach both logits (the clean ones too: "breaking the asymmetry") and
    weighs it with a class-wise prior instead of each example's own prediction ("global
    information"). The prior's row for class c is the mean over the previous epoch's training
    examples of class c of softmax(z / T), z their clean logits at the training forward (at
    ``w + v`` under a weight perturbation, in train mode): uniform 1/C in the first epoch,
    rebuilt when the next epoch starts. It and the running sums are the objective's state
    (``last.pt``, mid-epoch too). A class absent from an epoch keeps its previous row (the code
    would divide by zero).

    Args:
        alpha: weight α of the soft-label cross-entropy, a finite number >= 0 (default 4.0, the
            code's default and its CIFAR-10 run).
        beta: weight β of the weighted MSE, a finite number >= 0 (default 20.0, likewise; the
            ¼ inside the MSE is the code's).
        gamma: exponent γ on the class prior, a finite number > 0 (default 1.0; the second run
            of the authors' CIFAR-10 script tries 0.2).
        temperature: T > 0 of the softened predictions the prior averages (default 4.0, the
            code's ``--T``; the loss itself runs at temperature 1, as the code calls it).
        eps_ramp: grow the training attack's ε and step size linearly over the run, ε·e/E in
            (1-based) epoch e of E, as the code (default True); False keeps ``attack.eps``
            throughout.

    Training attack as the code's ``perturb_input``: eval mode, start x + 0.001·N(0, 1),
    ``attack.steps`` sign steps on the soft-label cross-entropy towards the clean prediction,
    which has the gradient of TRADES' KL (``"kl"``). The code's ``--train_budget high`` (its
    CIFAR-10 run) takes 5 steps of ε_e/2 in every epoch: ``attack.steps=5``,
    ``attack.alpha`` = ``attack.eps``/2, scaled with ε by the ramp. wpat projects the start
    into the ε-ball and the box before the first step; the code does not (with ε_1 = ε/200 <
    0.001 the first epochs' first step starts from a different point).

    The code trains it with AWP (γ 5e-3 from epoch 10, its ``utils_awp.TradesAWP``, whose
    ascent loss is −(CE + dkl_loss): wpat's ``perturb.name=awp`` ascends this objective's own
    per-example loss, the same thing) and a weight average (see docs/reproduction.md). It reads
    labels: mixup and CutMix are refused.
    """

    attack_loss = "kl"
    attack_init = "normal"
    attack_bn_mode = BNMode.EVAL
    soft_targets = False

    def __init__(self, alpha: float = 4.0, beta: float = 20.0, gamma: float = 1.0, temperature: float = 4.0,
                 eps_ramp: bool = True) -> None:
        for key, value in (("alpha", alpha), ("beta", beta)):
            check(is_finite(value) and value >= 0, f"DKL {key}", value, "a finite number >= 0")
        for key, value in (("gamma", gamma), ("temperature", temperature)):
            check(is_finite(value) and value > 0, f"DKL {key}", value, "a finite number > 0")
        check(isinstance(eps_ramp, bool), "DKL eps_ramp", eps_ramp, "true or false")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.temperature, self.eps_ramp = float(temperature), eps_ramp
        self.prior: Tensor | None = None  # [C, C], row c for the examples of class c; None: uniform
        self.sums: Tensor | None = None  # this epoch's summed softened predictions, by class
        self.epoch: int | None = None  # the epoch ``sums`` belong to
        self.observed: tuple[Tensor, Tensor] | None = None  # labels and clean logits of the last forward

    def attack_at(self, attack: Callable[..., Tensor], phase: Phase | None) -> Callable[..., Tensor]:
        if not self.eps_ramp or phase is None:
            return attack
        share = (phase.epoch + 1) / phase.epochs
        ramped = copy.copy(attack)
        ramped.eps, ramped.alpha = attack.eps * share, attack.alpha * share
        return ramped

    def prepare(self, batch: Batch) -> Batch:
        require_labels(batch.y, "objective 'dkl'", "its class prior is chosen by each example's class")
        if batch.phase is not None and batch.phase.epoch != self.epoch:
            # the first step of an epoch: last epoch's sums become the prior it trains with
            if self.sums is not None:
                self.prior = class_prior(self.sums, self.prior)
            self.sums, self.epoch = None, batch.phase.epoch
        return batch

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        logits_adv = model(batch.x_adv)  # adversarial first, as the code
        logits_clean = model(batch.x)
        classes = logits_clean.shape[1]
        if self.prior is None:
            weights = torch.full((len(batch.y), classes), 1 / classes, device=logits_clean.device)
        else:
            weights = self.prior.to(logits_clean.device)[batch.y]
        self.observed = (batch.y, logits_clean.detach())
        return (cross_entropy_per_example(logits_clean, batch.y)
                + dkl_divergence(logits_adv, logits_clean, weights, self.alpha, self.beta, self.gamma))

    def descent_losses(self, losses: Tensor) -> Tensor:
        # Called once per step on the training forward's losses: its clean predictions join
        # the epoch's sums (over every rank's share under torchrun).
        if self.observed is None or len(self.observed[0]) != len(losses):
            raise WpatError("objective 'dkl': the training forward's predictions were not observed "
                            "(descent_losses must follow per_example on the same batch)")
        y, logits = self.observed
        with torch.no_grad():
            soft = F.softmax(logits.float() / self.temperature, dim=1)
            added = distributed.total(F.one_hot(y, soft.shape[1]).to(soft).t() @ soft)
            self.sums = added if self.sums is None else self.sums.to(added) + added
        self.observed = None
        return losses

    def state(self) -> dict[str, Any]:
        return {"prior": self.prior, "sums": self.sums, "epoch": self.epoch}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.prior, self.sums, self.epoch = state["prior"], state["sums"], state["epoch"]
