"""The gradient-ascent search shared by AWP, AWP-LSC and RWP.

All three run the same loop on the weights (AWP eq. 10 with K2 steps; RWP eq. 8, Algorithm 1):

    v = 0, D = 0
    for k in 1..steps:
        ℓ = loss_fn(model at w + v), train mode             # per-example losses [B]
        m = select(ℓ)                                       # which examples count (all for AWP)
        g = ∇_w  (1/B) Σ_i m_i ℓ_i                          # mean over the WHOLE batch
        D += g
        v = rescale(D, w)                                   # per layer (AWP) or global (RWP)

``D`` sums the raw ascent steps. The authors take each step with a plain-SGD proxy (lr 0.01)
and rescale the difference of the weights; the learning rate multiplies every step alike and
cancels in the rescaling, so summing gradients is the same computation without a proxy copy or
a state-dict reload. One forward+backward per step: the forward that gives ℓ (and so the
selection) also gives the gradient; the training loop hands in its own forward at ``w`` as the
first step (``compute(..., losses=...)``), and when RWP selects nothing there it trains on that
same forward. Subclasses choose ``select`` and ``rescale``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from wpat.helpers import distributed
from wpat.helpers.errors import check, is_count
from wpat.helpers.model_state import kept
from wpat.perturb.base import (LossFn, Perturbation, WeightPerturbation, check_size, global_norm,
                               move_to, per_example, perturbed_parameters)


class MaskedAscent(WeightPerturbation):
    """Base of the ascent searches (AWP, AWP-LSC, RWP); see the module docstring for the loop.

    Class attributes a subclass may set:
    ``selected_stat`` -- the statistic's name for the fraction of the batch selected at step 1;
    ``stop_when_empty`` -- stop once no example is selected (every later step would add a zero
    gradient, so ``v`` would not change: the exit is exact but costs a host sync per step);
    ``subset`` -- take the gradient with ``loss_fn(model, index=selected)`` (see ``RWP``).
    """

    selected_stat: str | None = None
    stop_when_empty: bool = False
    subset: bool = False

    def __init__(self, gamma: float, steps: int, norm: str = "l2") -> None:
        owner = type(self).__name__
        self.p = check_size(owner, gamma, norm)
        check(is_count(steps), f"{owner} steps", steps, "an integer >= 1")
        self.gamma = float(gamma)
        self.steps = steps
        self.norm = norm

    def select(self, losses: Tensor) -> Tensor | None:
        """Boolean mask [B] of the examples whose loss is ascended; ``None`` means all."""
        return None

    def rescale(self, d: Sequence[Tensor], w: Sequence[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def compute(self, model: nn.Module, loss_fn: LossFn, losses: Tensor | None = None,
                start: Perturbation | None = None) -> Perturbation:
        names, params = zip(*perturbed_parameters(model))
        stats: dict[str, Tensor] = {}
        d: list[Tensor] | None = None
        v: list[Tensor] | None = None
        if start is not None and start.ascent is not None:
            check(losses is None, f"{type(self).__name__} losses", "a tensor",
                  "None when continuing from start")
            d, v = [start.ascent[n] for n in names], [start.v[n] for n in names]
        updates = 0
        # Train mode, and back to the caller's weights, buffers and modes after (bitwise).
        with kept(model, params, buffers=True, train=True) as state:
            w = state.w
            for k in range(self.steps):
                if v is not None:
                    move_to(params, w, v)
                if k or losses is None:
                    state.forwarded = True
                    with torch.set_grad_enabled(not self.subset):
                        losses = per_example(loss_fn(model))
                else:
                    losses = per_example(losses)
                mask = self.select(losses.detach())
                if k == 0 and self.selected_stat is not None:
                    stats[self.selected_stat] = mask.float().mean()
                    distributed.average_([stats[self.selected_stat]])
                # Host sync, once per step: an exact early exit saves up to `steps` backwards.
                # Under torchrun the exit is decided over the global batch.
                if self.stop_when_empty and not bool(distributed.any_rank(mask.any())):
                    break
                state.forwarded |= self.subset  # the subset gradient runs its own forward
                g = self._gradient(model, loss_fn, params, losses, mask)
                distributed.average_(g)  # the gradient of the global batch's mean loss
                d = g if d is None else [d_l + g_l for d_l, g_l in zip(d, g)]
                v = self.rescale(d, w)
                updates += 1
        moved = v is not None
        if v is None:
            v = d = [torch.zeros_like(p) for p in params]
        # torch.full, not torch.tensor: filling on the device needs no host-to-device copy.
        stats["perturb_steps"] = torch.full((), updates, device=params[0].device, dtype=torch.float32)
        stats["v_over_w"] = global_norm(v, self.p) / global_norm(w, self.p)
        return Perturbation(dict(zip(names, v)), stats, moved, ascent=dict(zip(names, d)))

    def _gradient(self, model: nn.Module, loss_fn: LossFn, params: Sequence[nn.Parameter],
                  losses: Tensor, mask: Tensor | None) -> list[Tensor]:
        """∇ of (1/B) Σ_i m_i ℓ_i with respect to ``params``; fills no ``.grad``."""
        batch = losses.shape[0]
        if self.subset:
            index = mask.nonzero().squeeze(1)
            objective = per_example(loss_fn(model, index=index)).sum() / batch
        elif mask is None:
            objective = losses.mean()
        else:
            objective = (losses * mask).mean()
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        # A weight outside the loss's graph gets no ascent, as in the proxy step.
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
