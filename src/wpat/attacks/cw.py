"""CW∞: PGD on the Carlini & Wagner margin loss (Carlini & Wagner, *Towards Evaluating the
Robustness of Neural Networks*, IEEE S&P 2017, objective f₆ with κ = 0), as the "CW∞" column of
AWP Table 2 ("L∞ version of CW loss optimized by PGD-100") and RWP Table 2 use it.

The loss ascended is max_{k≠y} z_k − z_y per example (``"cw"`` in ``ATTACK_LOSSES``). Everything
else is :class:`~wpat.attacks.pgd.PGD`: ``CW(eps, alpha, steps, **options)`` takes the same
arguments and defaults (``norm``, ``random_start``, ``init``, ``restarts``, ``bn_mode``) except
``loss``.
"""

from __future__ import annotations

from typing import Any

from wpat.attacks.base import ATTACKS
from wpat.attacks.pgd import PGD


@ATTACKS.register("cw")
class CW(PGD):
    def __init__(self, eps: float, alpha: float, steps: int, **pgd_options: Any) -> None:
        super().__init__(eps, alpha, steps, loss="cw", **pgd_options)
