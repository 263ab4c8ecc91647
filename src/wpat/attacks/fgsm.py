"""Fast gradient sign method (Goodfellow, Shlens, Szegedy, *Explaining and Harnessing
Adversarial Examples*, ICLR 2015, eq. 3): x' = clip_[0,1](x + ε · sign(∇_x ℓ(f(x), y))).

One L∞ step of size ε from x itself (no random start), i.e. PGD with α = ε and one step; the
"FGSM" column of AWP Table 2 and RWP Table 2.

Arguments: ``eps`` (> 0, pixel units in [0, 1]), ``loss`` (an ``ATTACK_LOSSES`` name, default
``"ce"``), ``bn_mode`` (``"train"``, ``"eval"`` or None = the caller's mode).
"""

from __future__ import annotations

from wpat.attacks.base import ATTACKS
from wpat.attacks.pgd import PGD


@ATTACKS.register("fgsm")
class FGSM(PGD):
    def __init__(self, eps: float, *, loss: str = "ce", bn_mode: str | None = None) -> None:
        super().__init__(eps, eps, 1, random_start=False, loss=loss, bn_mode=bn_mode)
