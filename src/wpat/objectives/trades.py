"""TRADES: :class:`TRADES`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wpat.attacks.losses import kl_divergence
from wpat.objectives.base import OBJECTIVES, Objective, require_non_negative
from wpat.threat import BNMode


@OBJECTIVES.register("trades")
class TRADES(Objective):
    """TRADES: natural cross-entropy plus β times the KL between clean and adversarial outputs.

    Zhang et al., *Theoretically Principled Trade-off between Robustness and Accuracy*,
    ICML 2019; AWP paper eq. 2::

        ℓ_i = CE(f(x_i), y_i) + β · KL(f(x_i) ‖ f(x'_i))
        KL  = Σ_k p_k(x) (log p_k(x) − log p_k(x')),   p = softmax

    with gradients through both the clean and the adversarial logits. The authors'
    ``F.kl_div(..., reduction="sum") / B`` is the batch mean of this per-example KL.

    Args:
        beta: weight β of the KL, a finite number >= 0 (default 6.0, the papers'); it trades
            natural accuracy for robustness.

    Training attack as in TRADES' and AWP's TRADES code: PGD ascending the same KL from
    x + 0.001 · N(0, 1), with the model in eval mode. The clean and adversarial batches go
    through the model in two separate forwards, so in train mode each gets its own BatchNorm
    batch statistics, as in the authors' code.
    """

    attack_loss = "kl"
    attack_init = "normal"
    attack_bn_mode = BNMode.EVAL

    def __init__(self, beta: float = 6.0) -> None:
        require_non_negative("TRADES", "beta", beta)
        self.beta = beta

    def per_example(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        logits_clean = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits_clean.float(), y, reduction="none")
        return natural + self.beta * kl_divergence(logits_clean, logits_adv)
