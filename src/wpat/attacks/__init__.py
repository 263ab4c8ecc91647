"""Input attacks ``attack(model, x, y) -> x_adv``, registered in ``ATTACKS`` (see ``Attack``)."""

from wpat.attacks.autoattack import AutoAttack
from wpat.attacks.base import (ATTACKS, BALLS, Attack, WeightGradients, ball, crafting_mode,
                               recording_weight_gradients)
from wpat.attacks.cw import CW
from wpat.attacks.fgsm import FGSM
from wpat.attacks.losses import ATTACK_LOSSES, attack_loss, kl_divergence
from wpat.attacks.pgd import PGD
from wpat.attacks.spsa import SPSA

__all__ = [
    "ATTACKS", "ATTACK_LOSSES", "Attack", "AutoAttack", "BALLS", "CW", "FGSM", "PGD", "SPSA",
    "WeightGradients", "attack_loss", "ball", "crafting_mode", "kl_divergence", "recording_weight_gradients",
]
