"""TRADES: :class:`TRADES`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wpat.attacks.losses import cross_entropy_per_example, kl_divergence
from wpat.helpers.errors import check, is_count, is_finite
from wpat.objectives.base import OBJECTIVES, Batch, Objective
from wpat.helpers.threat import BNMode
from wpat.helpers.passes import ObjectiveCost


# the adversarial and the clean forward-backward, a statistics-only third clean forward with
# clean_forwards 2, and the clean forward that gives the attack's KL its target
@OBJECTIVES.register("trades", cost=lambda options, base: ObjectiveCost(
    2, forwards=int(options["clean_forwards"]) - 1, attack_forwards=1))
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
        clean_forwards: train-mode forwards of the clean batch after the adversarial one, 1 or
            2 (default 2). The AWP and RWP TRADES scripts run adversarial, clean (the KL's
            target), clean (the cross-entropy): three forwards, so the BatchNorm running
            statistics take the clean batch twice. The two clean outputs are equal, so wpat
            computes both terms from the first and runs the second without a graph, only for
            its running-statistics update. The RST script runs one clean forward: 1.
        clean_first: run the (first) clean forward before the adversarial one (default false:
            adversarial first, as the AWP, RWP and RST TRADES scripts). Consistency
            regularization's TRADES code runs clean, then adversarial: true. Each train-mode
            forward normalizes with its own batch, so the order changes only the BatchNorm
            running statistics (which the next step's eval-mode attack reads).

    Training attack as in TRADES' and AWP's TRADES code: PGD ascending the same KL from
    x + 0.001 · N(0, 1), with the model in eval mode. The clean and adversarial batches go
    through the model in separate forwards, so in train mode each gets its own BatchNorm
    batch statistics, as in the authors' code (docs/design.md, "Reference semantics").

    Mixed targets (mixup, CutMix): ``y`` may be soft targets ``[B, C]``; the natural term is then
    the soft cross-entropy λ·CE(f(x), y_a) + (1 − λ)·CE(f(x), y_b). The KL and its attack read
    no labels.
    """

    attack_loss = "kl"
    attack_init = "normal"
    attack_bn_mode = BNMode.EVAL

    def __init__(self, beta: float = 6.0, clean_forwards: int = 2, clean_first: bool = False) -> None:
        check(is_finite(beta) and beta >= 0, "TRADES beta", beta, "a finite number >= 0")
        check(is_count(clean_forwards) and clean_forwards <= 2, "TRADES clean_forwards", clean_forwards, "1 or 2")
        check(isinstance(clean_first, bool), "TRADES clean_first", clean_first, "true or false")
        self.beta = beta
        self.clean_forwards = clean_forwards
        self.clean_first = clean_first

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        if self.clean_first:
            logits_clean = model(batch.x)
            logits_adv = model(batch.x_adv)
        else:
            logits_adv = model(batch.x_adv)
            logits_clean = model(batch.x)
        if self.clean_forwards == 2 and model.training:
            with torch.no_grad():  # the authors' third forward: its BN statistics update only
                model(batch.x)
        natural = cross_entropy_per_example(logits_clean, batch.y)
        return natural + self.beta * kl_divergence(logits_clean, logits_adv)
