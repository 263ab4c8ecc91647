"""AWP: adversarial weight perturbation (Wu, Xia, Wang, NeurIPS 2020, §4 eq. 10, Appendix D).

The weights are pushed up the gradient of the mean per-example loss, one layer at a time::

    v_l = γ · ‖w_l‖ / (‖g_l‖ + 1e-20) · g_l,    g = ∇_w (1/B) Σ_i ℓ_i(w)

computed in train mode on every trainable weight with more than one dimension. This is the
authors' proxy computation (one plain-SGD step of a model copy on −mean(ℓ), weight difference
rescaled per layer) without the copy: the proxy's learning rate cancels.

Arguments:
    gamma: relative size γ ≥ 0 of the perturbation, ‖v_l‖ = γ‖w_l‖ (dimensionless; default
        0.01, the paper's AT setting; 0.005 for TRADES/RST).
    steps: ascent steps K2 ≥ 1 (default 1, the paper's setting, §5.2). With K2 > 1 every step
        is taken at w + v, the raw gradients are summed, and the sum is rescaled per layer each
        time -- the layer-wise reading of the projected iteration of eq. 10.

``stats``: ``"v_over_w"`` (‖v‖/‖W‖, global), ``"steps"``.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from wpat.perturb.ascent import MaskedAscent
from wpat.perturb.base import PERTURBATIONS, rescale_per_layer


@PERTURBATIONS.register("awp")
class AWP(MaskedAscent):
    def __init__(self, gamma: float = 0.01, steps: int = 1) -> None:
        super().__init__(gamma, steps)

    def rescale(self, d: Sequence[Tensor], w: Sequence[Tensor]) -> list[Tensor]:
        return rescale_per_layer(d, w, self.gamma)
