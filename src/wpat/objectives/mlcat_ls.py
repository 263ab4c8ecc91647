"""MLCAT by loss scaling: :class:`MLCATLossScaling`."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from wpat.helpers.errors import check, is_finite
from wpat.objectives.base import OBJECTIVES, Objective, Wrapper
from wpat.helpers.passes import ObjectiveCost


@OBJECTIVES.register("mlcat-ls", cost=lambda options, base: base(options["base"]))  # the base's loss, rescaled
class MLCATLossScaling(Wrapper):
    """Minimum-loss-constrained adversarial training, loss-scaling realization (MLCAT_LS).

    Yu, Han, Shen, Yu, Gong, Gong, Liu, *Understanding Robust Overfitting of Adversarial
    Training and Beyond*, ICML 2022 (arXiv 2206.08675); code
    ``ChaojianYu/Understanding-Robust-Overfitting``, ``train_step4_scale_15.py``. The paper
    learns the large-loss adversarial examples as usual and raises the loss of those below a
    minimum value c. The code scales each loss below c by c/ℓ_i and minimises the batch mean::

        s_i = c / ℓ_i  if ℓ_i < c,  else 1
        L   = (1/B) Σ_i ℓ_i · s_i                    (every example counts in B)

    **What the code's gradient is.** Its factor ``1.5 / robust_loss`` is not detached (the
    ``.cuda().type(...)`` after it are differentiable no-ops), so for ℓ_i < c the term
    ℓ_i · c/ℓ_i is the constant c: value c, gradient c/ℓ_i·∇ℓ_i − ℓ_i·c/ℓ_i²·∇ℓ_i = 0. The update
    is therefore (1/B) Σ_{ℓ_i ≥ c} ∇ℓ_i: the examples below c are removed from a mean over the
    whole batch, exactly the update of the authors' data-ablation script
    ``train_step2_remove_0_15.py``. wpat follows the code by default: ``descent_losses`` gives
    c, with no gradient, to every example below c (the code's two terms cancel up to float
    rounding, so its gradient there is a rounding residue, not exactly 0).

    ``detach_factor=True`` is the other reading of the equation, a constant factor: the
    examples below c then weigh c/ℓ_i > 1 in the update, gradient (c/ℓ_i)·∇ℓ_i. It changes the
    step substantially (the small-loss examples are up-weighted instead of dropped). The paper's
    own equation could not be checked here, only its abstract ("increase the loss of the
    small-loss data"); see docs/reproduction.md.

    **ℓ_i = 0 exactly** (float32 rounds the cross-entropy to 0 once the true class's logit
    leads every other by about 17): the code computes 0 · (c/0) = 0 · inf = NaN, and the NaN
    reaches the mean, every gradient and, through the SGD step, every weight. wpat gives such an
    example the value c and no gradient in both modes (in ``detach_factor`` mode c/ℓ_i has no
    finite value there).

    **What the weight perturbation and the log see.** The scaling is ``descent_losses``: only
    the optimizer's loss at ``w + v`` is scaled. A weight perturbation (``perturb.name=awp``,
    ``rwp``, ``mlcat-wp``) searches on the base objective's losses, and the logged training loss
    and loss histogram are the base's unscaled losses. The script logs the fraction rescaled and
    a histogram of the *scaled* losses (every rescaled example at 1.5); the presets set
    ``run.lsc_threshold: 1.5``, so ``lsc_frac_below`` is that fraction.

    Args:
        objectives: supplied by the assembly (``needs`` "objectives").
        base: the objective whose per-example losses are scaled (default ``at``, the code's;
            ``trades`` or ``mart`` compare c with their whole per-example loss, a combination the
            authors never ran).
        threshold: the minimum loss c, a finite number >= 0 in the loss's units (nats for
            cross-entropy; default 1.5, the code's only setting). 0 scales nothing (plain base).
        detach_factor: False (default, the code): the examples below c contribute value c and
            zero gradient. True: the factor c/ℓ_i is a constant, gradient (c/ℓ_i)·∇ℓ_i.

    The comparison is ℓ_i < c; the code tests fl(c/ℓ_i) > 1, which differs only for a loss within
    one float rounding of c. Cost: that of the base objective (no extra forward or backward).
    """

    def __init__(self, objectives: Callable[[str], Objective], base: str = "at", threshold: float = 1.5,
                 detach_factor: bool = False) -> None:
        check(is_finite(threshold) and threshold >= 0, "MLCAT-LS threshold", threshold, "a finite number >= 0")
        check(isinstance(detach_factor, bool), "MLCAT-LS detach_factor", detach_factor, "true or false")
        super().__init__(objectives, base)
        self.threshold = float(threshold)
        self.detach_factor = detach_factor

    def descent_losses(self, losses: Tensor) -> Tensor:
        losses = self.base.descent_losses(losses)
        below = losses < self.threshold
        floor = torch.full_like(losses, self.threshold)
        if not self.detach_factor:
            # ℓ·(c/ℓ) with the factor differentiated is the constant c.
            return torch.where(below, floor, losses)
        zero = losses == 0
        # c/ℓ from the values only; a zero loss divides by 1 here and takes the floor below, so
        # no inf ever enters the graph (0·inf would be NaN, also in the unselected branch's backward).
        factor = self.threshold / torch.where(zero, torch.ones_like(losses), losses.detach())
        scaled = losses * torch.where(below, factor, torch.ones_like(losses))
        return torch.where(below & zero, floor, scaled)
