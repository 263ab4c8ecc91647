"""SPSA, a gradient-free attack: :class:`SPSA`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wpat.attacks.base import ATTACKS, Attack, ball
from wpat.attacks.losses import ATTACK_LOSSES
from wpat.helpers.errors import check, is_count, is_number
from wpat.helpers.threat import BNMode, Norm

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-9  # cleverhans' TensorAdam


@ATTACKS.register("spsa")
class SPSA(Attack):
    """SPSA, a gradient-free attack: ``SPSA(eps)(model, x, y) -> x_adv``.

    Uesato, O'Donoghue, van den Oord, Kohli, *Adversarial Risk and the Dangers of Evaluating
    Against Weak Attacks*, ICML 2018, §3.1 and Algorithm 1, as the "SPSA" column of AWP Table 2
    runs it (Wu et al. 2020, §5.1: 100 iterations, perturbation size 0.001, learning rate 0.01,
    256 samples per gradient estimate), with the update of the authors' own implementation
    (cleverhans' ``SPSA`` / ``SPSAAdam``).

    It only queries the model's logits, so it is blind to masked or obfuscated gradients. At the
    current point x' = x + u each iteration estimates the gradient of the margin loss
    ℓ(x') = max_{k≠y} z_k(x') − z_y(x') (the ``"cw"`` attack loss, ascended) from
    ``samples / 2`` antithetic pairs of Rademacher directions v_i ∈ {−1, +1}^d::

        ĝ = 1/samples · Σ_i [ℓ(x' + δ v_i) − ℓ(x' − δ v_i)] · v_i

    (cleverhans' estimate: δ times the usual finite difference (ℓ₊ − ℓ₋) / 2δ; Adam is invariant
    to that scale up to its ε), then takes one Adam ascent step (β₁ = 0.9, β₂ = 0.999,
    ε = 1e-9, bias corrected, as cleverhans' ``TensorAdam``)::

        m ← β₁ m + (1 − β₁) ĝ,   s ← β₂ s + (1 − β₂) ĝ²,   u ← Π(u + lr · m̂ / (√ŝ + ε))

    where Π projects onto the ε-ball and the box x + u ∈ [0, 1] (the queries x' ± δv may leave
    the box by δ, as in cleverhans). u starts at a random point of the ball (uniform for L∞, as
    cleverhans). An example whose current point is misclassified stops there (cleverhans'
    ``early_stop_loss_threshold=0``, which "guarantees that if a successful attack is found, it
    is returned"), and one misclassified at x is returned as x: SPSA never raises the accuracy
    above the natural one.

    Batched on the device: all (example, direction) pairs of an iteration go through the model
    in forwards of at most ``max_batch`` images, without autograd; directions are drawn on the
    device chunk by chunk, so memory does not grow with the number of samples.

    Args (``eps``, ``delta``, ``lr`` in pixel units of inputs scaled to [0, 1]):
        eps: radius of the threat model, > 0.
        steps: iterations (default 100).
        delta: finite-difference perturbation size δ (default 0.001).
        lr: Adam learning rate (default 0.01).
        samples: model evaluations per gradient estimate, even (default 256, i.e. 128
            directions each taken with + and −, cleverhans' convention).
        norm: ``Norm.LINF`` / ``"linf"`` (default, the papers') or ``Norm.L2`` / ``"l2"``.
        max_batch: most images per forward (default 4096).
        bn_mode: the model's mode while attacking (default ``BNMode.EVAL``; None = the caller's).

    Cost: ``samples + 1`` forwards per iteration for every example not yet broken (25,700 over
    100 iterations at the defaults), one host sync per iteration to drop the broken ones.
    """

    def __init__(self, eps: float, steps: int = 100, *, delta: float = 0.001, lr: float = 0.01,
                 samples: int = 256, norm: Norm | str = Norm.LINF, max_batch: int = 4096,
                 bn_mode: BNMode | str | None = BNMode.EVAL) -> None:
        super().__init__(bn_mode=bn_mode)
        for key, value in (("eps", eps), ("delta", delta), ("lr", lr)):
            check(is_number(value) and value > 0, f"SPSA {key}", value, "a number > 0 (pixel units)")
        for key, value in (("steps", steps), ("max_batch", max_batch)):
            check(is_count(value), f"SPSA {key}", value, "an integer >= 1")
        check(is_count(samples, 2) and samples % 2 == 0, "SPSA samples", samples,
              "an even integer >= 2 (pairs ±δv)")
        self.eps, self.steps, self.delta, self.lr, self.samples = eps, steps, delta, lr, samples
        self.max_batch = max_batch
        self.norm = Norm.parse(norm, "SPSA norm")
        self.ball = ball(self.norm)
        self.loss = ATTACK_LOSSES.get("cw")

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_adv = x.clone()
        # Indices (into x) of the examples still classified correctly; only they are attacked.
        active = (model(x).argmax(1) == y).nonzero().squeeze(1)
        xa, ya = x[active], y[active]
        u = self._project(self.ball.sample_(torch.empty_like(xa), self.eps), xa)
        m, s = torch.zeros_like(u), torch.zeros_like(u)
        for t in range(1, self.steps + 1):
            if len(active) == 0:
                break
            g = self._gradient(model, xa + u, ya)
            m.mul_(BETA1).add_(g, alpha=1 - BETA1)
            s.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
            step = (m / (1 - BETA1 ** t)) / ((s / (1 - BETA2 ** t)).sqrt_() + ADAM_EPS)
            u = self._project(u.add_(step, alpha=self.lr), xa)
            broken = model(xa + u).argmax(1) != ya
            x_adv[active[broken]] = xa[broken] + u[broken]
            # Dropping the broken examples costs one sync per iteration and saves samples
            # forwards for each of them in every later one.
            keep = ~broken
            active, xa, ya, u, m, s = (z[keep] for z in (active, xa, ya, u, m, s))
        x_adv[active] = xa + u
        return x_adv.clamp_(0, 1)

    def _project(self, u: Tensor, x: Tensor) -> Tensor:
        return self.ball.project_(u, self.eps).clamp_(-x, 1 - x)

    def _gradient(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """ĝ at each example of ``x`` (see the class docstring), from ``samples`` forwards each."""
        pairs = self.samples // 2
        total = len(x) * pairs
        chunk = max(1, self.max_batch // 2)
        grad = torch.zeros_like(x)
        for start in range(0, total, chunk):
            # Pair p belongs to example p // pairs; the + and − halves share one forward.
            owner = torch.arange(start, min(start + chunk, total), device=x.device) // pairs
            v = torch.randint(0, 2, (len(owner), *x.shape[1:]), device=x.device, dtype=x.dtype)
            v.mul_(2).sub_(1)
            xi, yi = x[owner], y[owner]
            losses = self.loss(model(torch.cat([xi + self.delta * v, xi - self.delta * v])),
                               torch.cat([yi, yi]), None)
            diff = losses[: len(owner)] - losses[len(owner):]
            grad.index_add_(0, owner, v.mul_(diff.view(-1, *([1] * (x.dim() - 1)))))
        return grad.div_(self.samples)
