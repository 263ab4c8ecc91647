"""The fast gradient sign method: :class:`FGSM`."""

from __future__ import annotations

from wpat.attacks.base import ATTACKS
from wpat.attacks.pgd import PGD
from wpat.helpers.threat import BNMode, Norm


@ATTACKS.register("fgsm")
class FGSM(PGD):
    """Fast gradient sign method: x' = clip_[0,1](x + ε · sign(∇_x ℓ(f(x), y))).

    ``FGSM(eps)(model, x, y) -> x_adv``. Goodfellow, Shlens, Szegedy, *Explaining and Harnessing
    Adversarial Examples*, ICLR 2015, eq. 3. One L∞ step of size ε from x itself (no random
    start), i.e. :class:`~wpat.attacks.pgd.PGD` with α = ε and one step; the "FGSM" column of AWP
    Table 2 and RWP Table 2. Cost: one forward and one input-only backward.

    Args:
        eps: radius ε, > 0, pixel units of inputs in [0, 1] (papers: 8/255).
        norm: ``Norm.LINF`` / ``"linf"`` (default, the sign of the gradient) or ``Norm.L2`` /
            ``"l2"`` (a step of length ε along the L2-normalised gradient, the "fast gradient
            method" of an L2 threat model).
        loss: an ``ATTACK_LOSSES`` name (default ``"ce"``).
        bn_mode: ``BNMode.TRAIN``, ``BNMode.EVAL`` (or their strings) or None (default, the
            caller's mode).
    """

    def __init__(self, eps: float, *, norm: Norm | str = Norm.LINF, loss: str = "ce",
                 bn_mode: BNMode | str | None = None) -> None:
        super().__init__(eps, eps, 1, norm=norm, random_start=False, loss=loss, bn_mode=bn_mode)
