"""AWP, adversarial weight perturbation (Wu, Xia, Wang, NeurIPS 2020)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from wpat.perturb.ascent import MaskedAscent
from wpat.perturb.base import PERTURBATIONS, rescale_per_layer
from wpat.helpers.passes import PerturbationCost


@PERTURBATIONS.register("awp", cost=lambda options: PerturbationCost(options["steps"]))
class AWP(MaskedAscent):
    """Adversarial weight perturbation (Wu, Xia, Wang, *Adversarial Weight Perturbation Helps
    Robust Generalization*, NeurIPS 2020, §4 eq. 10, Appendix D).

    The weights are pushed up the gradient of the mean per-example loss, one layer at a time::

        v_l = γ · ‖w_l‖ / (‖g_l‖ + 1e-20) · g_l,    g = ∇_w (1/B) Σ_i ℓ_i(w)

    computed in train mode on every trainable weight with more than one dimension. This is the
    authors' proxy computation (one plain-SGD step of a model copy on −mean(ℓ), the weight
    difference rescaled per layer) without the copy: the proxy's learning rate cancels.

    Args:
        gamma: relative size γ ≥ 0, ‖v_l‖ = γ‖w_l‖ (dimensionless; default 0.01, the paper's AT
            setting; 0.005 for TRADES, MART and RST).
        steps: ascent steps K2 ≥ 1 (default 1: every one of the authors' AWP scripts takes one
            step). With K2 > 1 every step is taken at w + v, the raw gradients are summed and
            the sum is rescaled per layer each time (the layer-wise reading of eq. 10's
            projected iteration; the paper's Fig. 2a ablation).
        norm: how the size is measured, ``"l2"`` (default, the Frobenius norm as the authors'
            code) or ``"l1"``: ‖v_l‖₁ = γ‖w_l‖₁ (the paper's Fig. 2b comparison).

    Statistics: ``v_over_w`` (‖v‖/‖W‖ in the size norm, global), ``perturb_steps``.
    """

    def __init__(self, gamma: float = 0.01, steps: int = 1, norm: str = "l2") -> None:
        super().__init__(gamma, steps, norm)

    def rescale(self, d: Sequence[Tensor], w: Sequence[Tensor]) -> list[Tensor]:
        return rescale_per_layer(d, w, self.gamma, self.p)
