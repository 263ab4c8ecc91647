"""Input attacks ``attack(model, x, y) -> x_adv``, registered in ``ATTACKS`` (see ``Attack``)."""

from wpat.attacks.autoattack import AutoAttack
from wpat.attacks.base import ATTACKS, BALLS, Attack, ball, crafting_mode
from wpat.attacks.cw import CW
from wpat.attacks.fgsm import FGSM
from wpat.attacks.losses import ATTACK_LOSSES, attack_loss, kl_divergence
from wpat.attacks.pgd import PGD
from wpat.attacks.spsa import SPSA

__all__ = [
    "ATTACKS", "ATTACK_LOSSES", "Attack", "AutoAttack", "BALLS", "CW", "FGSM", "PGD", "SPSA",
    "attack_loss", "ball", "crafting_mode", "kl_divergence",
]
