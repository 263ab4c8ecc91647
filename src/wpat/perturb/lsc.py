"""AWP-LSC[p, q): AWP restricted to one loss band (Yu et al., IJCAI 2022)."""

from __future__ import annotations

from torch import Tensor

from wpat.perturb.awp import AWP
from wpat.helpers.errors import check, is_number
from wpat.perturb.base import PERTURBATIONS
from wpat.helpers.passes import PerturbationCost


@PERTURBATIONS.register("awp-lsc", cost=lambda options: PerturbationCost(options["steps"]))
class LSCRangeAWP(AWP):
    """AWP on one loss-stationary group (Yu et al., IJCAI 2022, §3 eq. 7, Fig. 1c).

    The Loss Stationary Condition groups adversarial examples by their loss. AWP-LSC[p, q) runs
    :class:`~wpat.perturb.AWP` (per-layer rescaling, train mode) on the loss

        (1/B) Σ_i ℓ_i · [p ≤ ℓ_i < q]

    -- a mean over the WHOLE batch, only the examples in the band contributing. The band is
    decided afresh at every ascent step. With no example in the band the perturbation is zero.

    Args:
        gamma: relative size γ ≥ 0 of the perturbation per layer (default 0.01, as AWP).
        low, high: the band [p, q) of per-example loss (nats for cross-entropy), 0 ≤ p < q;
            ``high`` may be ``inf``. The paper's figure uses p = 0 and q ∈ {0.5, 1.0, ..., 3.0}.
        steps: ascent steps ≥ 1 (default 1).
        norm: the size norm, ``"l2"`` (default) or ``"l1"``, as AWP.

    Statistics: ``lsc_frac_in_range`` (fraction of the batch in the band at step 1),
    ``v_over_w``, ``perturb_steps``.
    """

    selected_stat = "lsc_frac_in_range"

    def __init__(self, gamma: float = 0.01, low: float = 0.0, high: float = float("inf"),
                 steps: int = 1, norm: str = "l2") -> None:
        check(is_number(low) and low >= 0, "LSCRangeAWP low", low, "a number >= 0")
        check(is_number(high) and high > low, "LSCRangeAWP high", high, f"a number > low={low!r}")
        super().__init__(gamma, steps, norm)
        self.low = float(low)
        self.high = float(high)

    def select(self, losses: Tensor) -> Tensor:
        return (losses >= self.low) & (losses < self.high)
