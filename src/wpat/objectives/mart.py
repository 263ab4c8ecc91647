"""MART: :class:`MART`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wpat.attacks.losses import is_soft
from wpat.helpers.errors import WpatError, check, is_finite
from wpat.objectives.base import OBJECTIVES, Batch, Objective
from wpat.helpers.threat import BNMode
from wpat.helpers.passes import ObjectiveCost


@OBJECTIVES.register("mart", cost=lambda options, base: ObjectiveCost(2))  # adversarial and clean
class MART(Objective):
    """MART: a boosted cross-entropy plus a KL weighted by how misclassified the clean input is.

    Wang et al., *Improving Adversarial Robustness Requires Revisiting Misclassified Examples*,
    ICLR 2020; AWP paper eq. 3, exactly as MART's code computes it::

        ℓ_i = BCE(f(x'_i), y_i) + λ · KL(f(x_i) ‖ f(x'_i)) · (1 − p_y(x_i))
        BCE = −log p_y(x') − log(1.0001 − max_{k≠y} p_k(x'))
        KL  = Σ_k p_k(x) (log p_k(x) − log(p_k(x') + 1e-12))

    with p = softmax. The constants 1.0001, 1e-12 and the 1.0000001 the code uses in place of 1
    in the weight keep the logs finite; they are the authors'. Gradients flow through both
    forwards, including the weight (1 − p_y(x)).

    Args:
        lam: weight λ of the misclassification-aware KL (the code's ``beta``), a finite
            number >= 0 (default 6.0, the papers').

    Training attack as in MART's code: PGD on cross-entropy from x + 0.001 · N(0, 1), with the
    model in eval mode.

    Mixed targets: MART is not defined for mixup or CutMix. Its loss needs the true class's
    probability p_y and the margin against the best other class, which soft targets do not
    give; ``per_example`` refuses them with a one-line WpatError.
    """

    attack_loss = "ce"
    attack_init = "normal"
    attack_bn_mode = BNMode.EVAL
    soft_targets = False

    def __init__(self, lam: float = 6.0) -> None:
        check(is_finite(lam) and lam >= 0, "MART lam", lam, "a finite number >= 0")
        self.lam = lam

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        x, x_adv, y = batch.x, batch.x_adv, batch.y
        if is_soft(y):
            raise WpatError(f"MART is not defined for mixup/CutMix: its loss needs the true class's "
                            f"probability and margin, which soft targets {list(y.shape)} do not give "
                            f"(use data.mix none, or the at or trades objective)")
        logits_clean = model(x).float()
        logits_adv = model(x_adv).float()
        p_clean = F.softmax(logits_clean, dim=1)
        p_adv = F.softmax(logits_adv, dim=1)
        # The code takes the runner-up of argsort; the largest wrong-class probability is the same.
        p_wrong = p_adv.scatter(1, y[:, None], 0.0).max(dim=1).values
        bce = F.cross_entropy(logits_adv, y, reduction="none") - torch.log(1.0001 - p_wrong + 1e-12)
        kl = F.kl_div(torch.log(p_adv + 1e-12), p_clean, reduction="none").sum(dim=1)
        p_true = p_clean.gather(1, y[:, None]).squeeze(1)
        return bce + self.lam * kl * (1.0000001 - p_true)
