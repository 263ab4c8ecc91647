"""Input attacks ``attack(model, x, y) -> x_adv``, built by name from ``ATTACKS``.

Importing this package registers every attack; see :mod:`wpat.attacks.base` for the contract.
"""

from wpat.attacks.autoattack import AutoAttack
from wpat.attacks.base import ATTACKS, NORMS, Attack, build_attack, crafting_mode
from wpat.attacks.cw import CW
from wpat.attacks.fgsm import FGSM
from wpat.attacks.losses import ATTACK_LOSSES, attack_loss, kl_divergence
from wpat.attacks.pgd import PGD
from wpat.attacks.spsa import SPSA

__all__ = [
    "ATTACKS", "ATTACK_LOSSES", "NORMS", "Attack", "CW", "FGSM", "PGD",
    "attack_loss", "build_attack", "crafting_mode", "kl_divergence",
]
