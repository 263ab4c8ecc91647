"""RWP, robust weight perturbation (Yu et al., IJCAI 2022)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from wpat.perturb.ascent import MaskedAscent
from wpat.helpers.errors import check, is_number
from wpat.perturb.base import PERTURBATIONS, rescale_global
from wpat.helpers.passes import PerturbationCost


@PERTURBATIONS.register("rwp", cost=lambda options: PerturbationCost(None))  # its steps are logged
class RWP(MaskedAscent):
    """Robust weight perturbation (Yu et al., *Robust Weight Perturbation for Adversarial
    Training*, IJCAI 2022, §4 eq. 8, Algorithm 1).

    Only adversarial examples whose loss is still below ``c_min`` push the weights; the steps are
    accumulated and the sum is rescaled GLOBALLY (all perturbed tensors as one vector)::

        v = 0, D = 0
        for k in 1..K2:
            I_i = [ℓ_i(w + v) < c_min]                 (strict, as the authors' code)
            if no I_i: stop                            (Algorithm 1's break)
            D += ∇ (1/B) Σ_i I_i ℓ_i(w + v)            (mean over the whole batch)
            v = γ · ‖W‖ / (‖D‖ + 1e-20) · D

    in train mode, on every trainable weight with more than one dimension. Once no example is
    selected the gradient is zero and v would not change again, so stopping is exact; it costs
    one host sync per step (``bool(mask.any())``) and saves every remaining backward. With
    ``c_min = inf`` and ``steps = 1`` this is AWP with one global instead of per-layer rescaling.

    Args:
        gamma: relative size γ ≥ 0, ‖v‖ = γ‖W‖ (dimensionless; default 0.01; 0.005 for TRADES).
        c_min: minimum loss value ≥ 0 (nats for cross-entropy; default 1.7, the paper's CIFAR-10
            and SVHN value; 4.0 for CIFAR-100; ``inf`` selects every example, 0 none).
        steps: K2 ≥ 1 (default 10, the paper's value).
        subset: if True, the forward that selects the examples runs without a graph and the
            gradient is taken by a second forward+backward on the selected examples only,
            through ``loss_fn(model, index=LongTensor)``. Cheaper when few examples are
            selected, but BN batch statistics then come from the subset, so the result differs
            from the authors'. Default False: exact.
        norm: how the size is measured, ``"l2"`` (default, as the authors' code) or ``"l1"``:
            ‖v‖₁ = γ‖W‖₁ over the whole model.
        early_exit: stop once no example is below ``c_min`` (default True). The result is the
            same either way; False runs all K2 steps, as the authors' code, with no host
            synchronisation inside the step (for CUDA graphs and asynchronous GPUs).

    Statistics: ``rwp_frac_below`` (fraction with ℓ < c_min at step 1, at w), ``perturb_steps``
    (steps that updated v), ``v_over_w`` (‖v‖/‖W‖ in the size norm).
    """

    selected_stat = "rwp_frac_below"
    stop_when_empty = True

    def __init__(self, gamma: float = 0.01, c_min: float = 1.7, steps: int = 10,
                 subset: bool = False, norm: str = "l2", early_exit: bool = True) -> None:
        check(is_number(c_min) and c_min >= 0, "RWP c_min", c_min, "a number >= 0 (inf allowed)")
        check(isinstance(early_exit, bool), "RWP early_exit", early_exit, "true or false")
        check(not (subset and not early_exit), "RWP subset", subset, "false when early_exit is false "
              "(the subset's size is read on the host)")
        super().__init__(gamma, steps, norm)
        self.stop_when_empty = early_exit
        self.c_min = float(c_min)
        self.subset = bool(subset)

    def select(self, losses: Tensor) -> Tensor:
        return losses < self.c_min

    def rescale(self, d: Sequence[Tensor], w: Sequence[Tensor]) -> list[Tensor]:
        return rescale_global(d, w, self.gamma, self.p)
