"""Standard adversarial training: :class:`AT`."""

from __future__ import annotations

from torch import Tensor, nn

from wpat.attacks.losses import cross_entropy_per_example
from wpat.objectives.base import OBJECTIVES, Batch, Objective
from wpat.helpers.threat import BNMode
from wpat.helpers.passes import ObjectiveCost


@OBJECTIVES.register("at", cost=lambda options, base: ObjectiveCost(1))
class AT(Objective):
    """Standard adversarial training: ℓ_i = CE(f(x'_i), y_i).

    Madry et al., *Towards Deep Learning Models Resistant to Adversarial Attacks*, ICLR 2018,
    eq. 2.1; AWP paper eq. 1. No options; one forward (the adversarial batch), which in train mode
    also stands for the AT scripts' forward scoring the attack's result (``score_forward``).

    Training attack as in the AWP authors' AT code (after Rice et al. 2020): PGD on
    cross-entropy from a uniform random start, crafted with the model in train mode.

    Mixed targets (mixup, CutMix): ``y`` may be soft targets t = λ·onehot(y_a) + (1 − λ)·onehot(y_b)
    ``[B, C]``; ℓ_i is then the soft cross-entropy −Σ_k t_ik log p_k(x'_i) =
    λ·CE(f(x'_i), y_a,i) + (1 − λ)·CE(f(x'_i), y_b,i), Rice et al.'s ``mixup_criterion``, and the
    attack ascends the same loss, as their mixup does. The weight perturbations work on these
    per-example losses, so AWP and RWP are well defined with mixed targets (RWP's c_min compares
    each example's soft cross-entropy). The AWP authors' code does not allow it (it asserts that
    mixup is off when AWP is on); wpat defines it on the per-example losses instead.
    """

    attack_loss = "ce"
    attack_init = "uniform"
    attack_bn_mode = BNMode.TRAIN
    single_adversarial_forward = True

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        return cross_entropy_per_example(model(batch.x_adv), batch.y)
