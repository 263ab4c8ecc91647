"""CW∞, PGD on the Carlini & Wagner margin loss: :class:`CW`."""

from __future__ import annotations

from wpat.attacks.base import ATTACKS
from wpat.attacks.pgd import PGD
from wpat.helpers.threat import BNMode, Norm


@ATTACKS.register("cw")
class CW(PGD):
    """CW∞: PGD on the Carlini & Wagner margin loss.

    ``CW(eps, alpha, steps)(model, x, y) -> x_adv``. Carlini & Wagner, *Towards Evaluating the
    Robustness of Neural Networks*, IEEE S&P 2017, objective f₆ with κ = 0, as the "CW∞" column
    of AWP Table 2 ("L∞ version of CW loss optimized by PGD-100") and RWP Table 2 use it.

    The loss ascended is max_{k≠y} z_k − z_y per example (``"cw"`` in ``ATTACK_LOSSES``).
    Everything else is :class:`~wpat.attacks.pgd.PGD`, with the same arguments and defaults
    except ``loss``:

    Args:
        eps: radius ε, > 0, pixel units of inputs in [0, 1] (papers: 8/255).
        alpha: step size, > 0, pixel units (papers: 2/255).
        steps: iterations, >= 1 (papers: 100).
        norm: ``Norm.LINF`` / ``"linf"`` (default) or ``Norm.L2`` / ``"l2"``.
        random_start: default True; ``init``: ``"uniform"`` (default) or ``"normal"``.
        restarts: independent random starts, the best kept per example (default 1).
        bn_mode: ``BNMode.TRAIN``, ``BNMode.EVAL`` (or their strings) or None (default, the
            caller's mode).
    """

    def __init__(self, eps: float, alpha: float, steps: int, *, norm: Norm | str = Norm.LINF,
                 random_start: bool = True, init: str = "uniform", restarts: int = 1,
                 bn_mode: BNMode | str | None = None) -> None:
        super().__init__(eps, alpha, steps, norm=norm, random_start=random_start, init=init,
                         restarts=restarts, loss="cw", bn_mode=bn_mode)
