"""SAM-AT: SAM on the adversarial loss as Wei, Zhu and Zhang's code runs it (ICML 2023 workshop)."""

from __future__ import annotations

from typing import Any

from wpat.helpers.errors import check_choice
from wpat.perturb.base import PERTURBATIONS
from wpat.perturb.sam import SAM
from wpat.helpers.passes import PerturbationCost

# Where SAM-AT's ascent gradient comes from: the code's (PGD's weight gradients left in .grad and
# the final loss's), or the final loss's only (SAM on the adversarial loss as its paper writes it).
ASCENT_GRADIENTS = ("attack_path", "final")


@PERTURBATIONS.register("sam-at", cost=lambda options: PerturbationCost(1))
class SAMAT(SAM):
    """SAM with adversarial training as ``weizeming/SAM_AT`` runs it (``train.py --adv --opt SAM``,
    ``utils.py``, davda54's ``sam.py``): Wei, Zhu, Zhang, *Sharpness-Aware Minimization Alone can
    Improve Adversarial Robustness*, ICML 2023 Workshop on New Frontiers in Adversarial Machine
    Learning (arXiv 2305.05392). The paper's method is SAM on the clean loss; ``--adv`` runs SAM
    on the PGD loss, the combination this class reproduces.

    :class:`SAM`'s step (every parameter with a gradient, global L2 norm, step from ``w`` restored
    bitwise, two BatchNorm updates per step after the attack's, the same ``x′`` for both
    forwards), with two differences the code makes:

    - **the ascent gradient includes the attack's weight gradients.** Their PGD calls
      ``loss.backward()`` on the batch-mean cross-entropy at each of its K iterates, which fills
      the weights' ``.grad`` too, and nothing zeroes it before SAM's first step, so::

          g = Σ_{k<K} ∇_w CE_mean(x + δ_k) + ∇_w CE_mean(x + δ_K)     (all at w, train mode)
          v = ρ · g / (‖g‖₂ + 1e-12)

      (``ascent_grad="attack_path"``, the default). wpat's PGD adds those gradients to a
      recording from the same backward it takes for δ (:class:`wpat.attacks.WeightGradients`;
      ``.grad`` stays empty), so the path costs the weight-gradient kernels of K backwards and
      no forward. ``ascent_grad="final"`` is SAM on the final ``x′`` only, as the paper writes
      SAM (then only the 1e-12 differs from :class:`SAM`).
    - the denominator term is davda54's 1e-12 (MAIR's is 1e-16).

    The code's PGD runs in train mode (``model.train()`` once per epoch) with no scoring forward:
    ``attack.bn_mode=train attack.script_forwards=false``, K + 2 BatchNorm updates per step.

    Args:
        rho: ρ ≥ 0, the absolute L2 radius of ``v`` (weight units; default 0.05, ``--rho``).
        ascent_grad: ``"attack_path"`` (default, the code) or ``"final"``.
        params: ``"all"`` (default, the code: every parameter) or ``"weights"`` (conv/linear
            weights only), as :class:`SAM`.

    The attack path is defined for a cross-entropy attack (AT, MART): with another attack loss
    (TRADES' KL) ``ascent_grad=attack_path`` is refused, ``final`` is allowed.

    Statistics: ``v_over_w``, ``sam_grad_norm`` (‖g‖₂ with the path's gradients), as :class:`SAM`.
    """

    norm_eps = 1e-12  # davda54's sam.py, which SAM_AT imports

    def __init__(self, rho: float = 0.05, ascent_grad: str = "attack_path", params: str = "all") -> None:
        check_choice("SAMAT ascent_grad", ascent_grad, ASCENT_GRADIENTS)
        super().__init__(rho, params, recraft=False)
        self.ascent_grad = ascent_grad
        self.attack_gradients = ascent_grad == "attack_path"

    def refusal(self, objective: Any) -> str | None:
        if self.attack_gradients and objective.attack_loss != "ce":
            return (f"ascent_grad=attack_path adds the weight gradients of a cross-entropy PGD, as SAM-AT's "
                    f"code; this objective's attack ascends {objective.attack_loss!r} "
                    f"(perturb.sam-at.ascent_grad=final is SAM on its loss)")
        return None
