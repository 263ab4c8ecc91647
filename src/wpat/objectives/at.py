"""Standard adversarial training: :class:`AT`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wpat.objectives.base import OBJECTIVES, Objective
from wpat.threat import BNMode


@OBJECTIVES.register("at")
class AT(Objective):
    """Standard adversarial training: ℓ_i = CE(f(x'_i), y_i).

    Madry et al., *Towards Deep Learning Models Resistant to Adversarial Attacks*, ICLR 2018,
    eq. 2.1; AWP paper eq. 1. No options; one forward (the adversarial batch).

    Training attack as in the AWP authors' AT code (after Rice et al. 2020): PGD on
    cross-entropy from a uniform random start, crafted with the model in train mode.
    """

    attack_loss = "ce"
    attack_init = "uniform"
    attack_bn_mode = BNMode.TRAIN

    def per_example(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x_adv).float(), y, reduction="none")
