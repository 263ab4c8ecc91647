"""Consistency regularization between two attacked augmentations: :class:`Consistency`."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wpat.helpers.errors import WpatError, check, check_choice, is_finite
from wpat.objectives.base import OBJECTIVES, Batch, Objective, Wrapper
from wpat.helpers.threat import BNMode
from wpat.helpers.passes import ObjectiveCost


def js_divergence(logits_1: Tensor, logits_2: Tensor, temperature: float) -> Tensor:
    """Per-example Jensen-Shannon divergence of softmax(z₁/T) and softmax(z₂/T), ``[B]``::

        JS = ½ [KL(p₁ ‖ m) + KL(p₂ ‖ m)],   m = ½ (p₁ + p₂),   log m from max(m, 1e-8)

    as the authors' ``_jensen_shannon_div`` computes it (its ``batchmean`` is the mean of this),
    with gradients through p₁, p₂ and m."""
    p1 = F.softmax(logits_1.float() / temperature, dim=1)
    p2 = F.softmax(logits_2.float() / temperature, dim=1)
    log_m = (0.5 * (p1 + p2)).clamp(min=1e-8).log()
    kl_1 = F.kl_div(log_m, p1, reduction="none").sum(dim=1)
    kl_2 = F.kl_div(log_m, p2, reduction="none").sum(dim=1)
    return 0.5 * (kl_1 + kl_2)


@OBJECTIVES.register("consistency", cost=lambda options, base: base(options["base"]).times(2))  # the base on both views
class Consistency(Wrapper):
    """Consistency regularization: the base objective on two augmentations of each image,
    both attacked, plus a Jensen-Shannon divergence between the two adversarial predictions.

    Tack, Yu, Jeong, Kim, Hwang, Shin, *Consistency Regularization for Adversarial Robustness*,
    AAAI 2022, as its code trains it (``alinlab/consistency-adversarial``,
    ``training/adv_train/adv_{train,trades,mart}_consistency.py``). Per image i with views
    x¹_i, x²_i (independent draws of the same augmentation, one label)::

        ℓ_i = ½ (ℓ_base(x¹_i, x¹'_i) + ℓ_base(x²_i, x²'_i)) + λ · JS_T(f(x¹'_i), f(x²'_i))

    where ℓ_base is the base objective's per-example loss (AT: CE(f(x'), y); TRADES:
    CE(f(x), y) + β·KL(f(x) ‖ f(x')); MART: its loss) and JS_T the Jensen-Shannon divergence
    of the temperature-T softmaxes (:func:`js_divergence`). The mean over the batch is the
    code's loss: its base loss over the 2B images of both views plus λ·JS over the B pairs.
    The two views go through the model together (one batch of 2B, so BatchNorm normalizes
    them with joint statistics, as the code), and the consistency term reuses the base's own
    forward of the adversarial pair.

    Args:
        objectives: supplied by the assembly.
        base: the objective regularized, ``at``, ``trades`` or ``mart`` (default ``at``); its
            options are its own (``objective.trades.beta``, default 6.0 as the code's
            ``--beta``). With ``trades``, ``objective.trades.clean_forwards=1`` and
            ``objective.trades.clean_first=true`` give the code's two forwards, clean then
            adversarial.
        lam: weight λ of the consistency term, a finite number >= 0 (default 1.0, the code's
            ``--lam``).
        temperature: T > 0 of the consistency softmaxes (default 0.5, the code's ``--T``; below 1
            it sharpens the predictions).

    Training attack: the base's (cross-entropy from a uniform start for AT, the KL from
    x + 0.001·N(0, 1) for TRADES, the cross-entropy from that start for MART), always crafted
    in eval mode as the code does (its AT attack runs inside ``EvalBN``), on both views in one
    call; in eval mode that is attacking each view on its own.

    Where wpat differs from the code: the views are what wpat's
    loader draws on the device (crop, flip, rotation, cutout placed inside the image): the
    code's ``autoaug`` (AutoAugment + a 16-pixel Cutout clipped at the border) and ``ccg``
    (ColorJitter, grayscale) augmentations are not available (docs/reproduction.md).
    """

    # the recipe of the default base, AT, as the code crafts it; __init__ takes the base's
    attack_loss = "ce"
    attack_init = "uniform"
    attack_bn_mode = BNMode.EVAL
    needs = ("objectives", "views")
    BASES = ("at", "trades", "mart")  # the bases the authors' code regularizes

    def __init__(self, objectives: Callable[[str], Objective], base: str = "at", lam: float = 1.0,
                 temperature: float = 0.5) -> None:
        check_choice("Consistency base", base, self.BASES)
        check(is_finite(lam) and lam >= 0, "Consistency lam", lam, "a finite number >= 0")
        check(is_finite(temperature) and temperature > 0, "Consistency temperature", temperature,
              "a finite number > 0")
        super().__init__(objectives, base)
        self.attack_bn_mode = BNMode.EVAL  # every consistency script crafts in eval mode
        self.single_adversarial_forward = False  # its forward is of both views' examples
        self.lam, self.temperature = float(lam), float(temperature)

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        (view,), (view_adv,) = batch.views, batch.views_adv
        pair = Batch(torch.cat([batch.x, view]), torch.cat([batch.y, batch.y]),
                     x_adv=torch.cat([batch.x_adv, view_adv]), supplies=batch.supplies, phase=batch.phase)
        losses, logits_adv = self.base_losses_and_logits(model, pair)
        n = len(batch.x)
        first, second = logits_adv.split(n)
        return 0.5 * (losses[:n] + losses[n:]) + self.lam * js_divergence(first, second, self.temperature)

    def base_losses_and_logits(self, model: nn.Module, pair: Batch) -> tuple[Tensor, Tensor]:
        """The base's per-example losses on ``pair`` and the logits of its forward of
        ``pair.x_adv``, kept by a forward hook rather than computed again."""
        seen: list[Tensor] = []

        def keep(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if inputs and inputs[0] is pair.x_adv:
                seen.append(output)

        handle = model.register_forward_hook(keep)
        try:
            losses = self.base.per_example(model, pair)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise WpatError(f"objective 'consistency': base {type(self.base).__name__} forwarded the adversarial "
                            f"examples {len(seen)} times; it needs one forward of them")
        return losses, seen[0]
