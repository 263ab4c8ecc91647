"""Projected gradient descent (ascent) on the input, L∞ or L2: :class:`PGD`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wpat.attacks.base import ATTACKS, Attack, Ball, ball
from wpat.attacks.losses import ATTACK_LOSSES, is_soft
from wpat.helpers.batchnorm import count_as, save_running_stats
from wpat.helpers.errors import check, is_count, is_number
from wpat.helpers.registry import Registry
from wpat.helpers.threat import BNMode, Norm

STARTS = Registry("random start")


@STARTS.register("uniform")
def _uniform_start(geometry: Ball, delta: Tensor, eps: float) -> Tensor:
    """δ₀ drawn from the ball: uniform in the L∞ ball; for L2 a Gaussian direction with a radius
    uniform in [0, ε] (Rice et al.'s code, which the AWP authors build on)."""
    return geometry.sample_(delta, eps)


@STARTS.register("normal")
def _normal_start(geometry: Ball, delta: Tensor, eps: float) -> Tensor:
    """δ₀ = 0.001 · N(0, 1) whatever ε, as the TRADES and MART codes start their attacks."""
    # A tiny jitter, independent of ε; it only has to move off δ = 0, where the gradient of the
    # KL vanishes.
    return delta.normal_(0.0, 0.001)


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected gradient descent (here: ascent) on the input, L∞ or L2.

    ``PGD(eps, alpha, steps)(model, x, y) -> x_adv``. Madry et al., *Towards Deep Learning
    Models Resistant to Adversarial Attacks*, ICLR 2018: the inner maximisation of the
    saddle-point problem (2.1) by the PGD update of §2.1; the x' of AWP paper eq. 1 and RWP eq. 1.

    Each of ``steps`` iterations takes one forward and one input-only backward::

        L∞:  δ ← Π(δ + α · sign(∇_δ ℓ))
        L2:  δ ← Π(δ + α · ∇_δ ℓ / ‖∇_δ ℓ‖₂)         (per example)

    where ℓ is the per-example attack loss (summed over the batch before differentiating, so one
    example's step does not depend on the batch size) and Π projects onto the ε-ball (clamp for
    L∞, rescaling onto the sphere for L2) and then onto the box x + δ ∈ [0, 1]. For L2 the box
    clamp only shrinks coordinates towards 0, so the result stays in the ball.

    Args (``eps`` and ``alpha`` in pixel units of inputs scaled to [0, 1]):
        eps: radius ε of the threat model, > 0 (papers: 8/255 L∞, 128/255 L2).
        alpha: step size, > 0 (papers: 2/255 L∞, 15/255 L2).
        steps: iterations, >= 1 (papers: 10 for training, 20 for testing).
        norm: ``Norm.LINF`` / ``"linf"`` (default) or ``Norm.L2`` / ``"l2"``.
        random_start: start from a random δ₀ (default True) drawn by ``init``.
        init: ``"uniform"`` (default) draws δ₀ uniformly in the L∞ ball, or, for L2, a Gaussian
            direction with a radius uniform in [0, ε]; ``"normal"`` draws δ₀ = 0.001 · N(0, 1)
            whatever ε, as the TRADES and MART codes do.
        restarts: independent random starts (default 1); per example the result of the best run
            is kept, where a misclassified result beats a correctly classified one and ties are
            broken by the higher attack loss. With ``restarts`` > 1 every run costs one extra
            forward to score it (in the crafting mode, so in train mode it also updates the BN
            running statistics).
        loss: the name of a per-example attack loss in ``ATTACK_LOSSES`` (default ``"ce"``).
        bn_mode: the model's mode while crafting, ``BNMode.TRAIN``, ``BNMode.EVAL`` (or their
            strings) or None (default, the caller's mode); see :class:`~wpat.attacks.base.Attack`.
        mixup_forwards: 1 (default) or 2: the BatchNorm updates each step's forward counts for
            when the targets are soft (mixup, CutMix) and the model is in train mode. Rice et al.'s
            attack, which the AWP and RWP AT scripts copy, computes each step's logits twice with
            mixup, so its running statistics take two updates per step; 2 reproduces them with
            one forward (``wpat.helpers.batchnorm.count_as``).

    Cost: ``steps`` forwards and input-only backwards per run, plus one forward for the clean
    logits if the loss reads them (``"kl"``) and one per run to score restarts.
    """

    def __init__(self, eps: float, alpha: float, steps: int, *, norm: Norm | str = Norm.LINF,
                 random_start: bool = True, init: str = "uniform", restarts: int = 1,
                 loss: str = "ce", bn_mode: BNMode | str | None = None, mixup_forwards: int = 1) -> None:
        super().__init__(bn_mode=bn_mode)
        owner = type(self).__name__
        for key, value in (("eps", eps), ("alpha", alpha)):
            check(is_number(value) and value > 0, f"{owner} {key}", value, "a number > 0 (pixel units)")
        for key, value in (("steps", steps), ("restarts", restarts)):
            check(is_count(value), f"{owner} {key}", value, "an integer >= 1")
        check(restarts == 1 or random_start, f"{owner} restarts", restarts,
              "1 unless random_start=True (without it every run is the same)")
        check(mixup_forwards in (1, 2) and not isinstance(mixup_forwards, bool), f"{owner} mixup_forwards",
              mixup_forwards, "1 or 2")
        self.mixup_forwards = mixup_forwards
        self.eps, self.alpha, self.steps, self.restarts = eps, alpha, steps, restarts
        self.norm = Norm.parse(norm, f"{owner} norm")
        self.ball = ball(self.norm)
        self.start = STARTS.get(init) if random_start else None
        self.loss = ATTACK_LOSSES.get(loss)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x = x.float()  # deltas and projections stay fp32 whatever the batch's dtype
        logits_clean = None
        if self.loss.needs_clean:
            with torch.no_grad():
                logits_clean = model(x)
        # The box x + δ ∈ [0, 1] as per-coordinate bounds on δ, built once for every step.
        low, high = -x, 1 - x
        best = self._run(model, x, y, logits_clean, low, high)
        if self.restarts > 1:
            best_loss, best_wrong = self._score(model, x + best, y, logits_clean)
            for _ in range(self.restarts - 1):
                delta = self._run(model, x, y, logits_clean, low, high)
                loss, wrong = self._score(model, x + delta, y, logits_clean)
                better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
                best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), delta, best)
                best_loss = torch.where(better, loss, best_loss)
                best_wrong |= wrong
        # x + δ can exceed the box by one rounding error.
        return (x + best).clamp_(0, 1)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, logits_clean: Tensor | None,
             low: Tensor, high: Tensor) -> Tensor:
        """One attack from one (random) start; returns δ."""
        delta = torch.zeros_like(x)
        if self.start is not None:
            self.start(self.ball, delta, self.eps)
            self.ball.project_(delta, self.eps)
        delta.clamp_(low, high).requires_grad_(True)
        twice = self.mixup_forwards == 2 and is_soft(y)
        for _ in range(self.steps):
            saved = save_running_stats(model) if twice else None
            loss = self.loss(model(x + delta), y, logits_clean)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            if saved is not None:  # after the backward, which needs the statistics the forward saw
                count_as(saved, 2)
            with torch.no_grad():
                self.ball.ascend_(delta, grad, self.alpha)
                self.ball.project_(delta, self.eps)
                delta.clamp_(low, high)
        return delta.detach()

    @torch.no_grad()
    def _score(self, model: nn.Module, x_adv: Tensor, y: Tensor,
               logits_clean: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-example (attack loss, misclassified) at the end of a run, to compare restarts."""
        logits = model(x_adv)
        return self.loss(logits, y, logits_clean), logits.argmax(dim=1) != y
