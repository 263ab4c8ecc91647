"""Weight loss landscape (Wu, Xia, Wang, NeurIPS 2020, §3 eq. 5, Appendix B, Algorithm 1).

The adversarial loss along random directions in weight space::

    1-D:  g(α)    = ρ(w + α·d)            (AWP Fig. 1, 2c; Fig. 5 repeats it over directions)
    2-D:  g(α, β) = ρ(w + α·d + β·e)      shown as |g(α, β) − g(0, 0)|  (Fig. 6)
    ρ(w)  = (1/n) Σ_i CE(f_w(x'_i), y_i),   x'_i = PGD-K1 against f_w itself

Directions (Algorithm 1, lines 2-7; Li et al., NeurIPS 2018, "filter normalization"): d ~ N(0, I)
and every filter is rescaled to the norm of the same filter of the weights,

    d_{l,j} ← d_{l,j} / ‖d_{l,j}‖_F · ‖w_{l,j}‖_F,

where a filter is a slice along the first dimension (a conv output channel, a row of a linear
weight) of every conv/linear weight (``wpat.perturb.perturbed_parameters``). As in Li et al.'s
``ignore="biasbn"``, one-dimensional parameters (BatchNorm weights and biases, biases) get a zero
direction: they keep their values at every point. ``d`` is drawn from the parameter *shapes* by
a CPU ``torch.Generator``, so one seed gives the same raw direction on every device and for every
checkpoint of an architecture; each checkpoint then normalizes it with its own weights' norms,
as the paper does for each epoch's plot. That is what lets epochs overlay on one figure.

Adversarial examples are crafted afresh at every point, against f_{w+αd} (Algorithm 1, lines
9-14); re-using those crafted against f_w underestimates ρ (§3). The model is in eval mode, so
BatchNorm uses (and keeps) its running statistics. Before each point the torch RNG is re-seeded
with ``seed``: all points share the PGD random starts (so the curve's changes come from the
weights, not the starts) and α = 0 reproduces ``adversarial_losses(..., seed=seed)`` exactly.
The weights are restored bitwise from a copy afterwards, whatever happens.

Arguments common to :func:`landscape_1d` and :func:`landscape_2d`:
    x, y: examples (uint8 0..255 or float in [0, 1]) and labels; Algorithm 1 uses training data.
    attack: ``attack(model, x, y) -> x_adv``; ``wpat.analysis.analysis_attack(cfg)`` is the
        paper's: PGD on CE with the training attack's ε, step size η1 and steps K1 (10).
    alphas, betas: coordinates along d and e, in units of the filter norms (dimensionless; the
        paper plots α ∈ [−1, 1]).
    batch_size: examples per forward (default 500); seed: PGD seed (default 0).

Cost: each point is one attack (K1 forward+backward) and one forward on the n examples; a 2-D
landscape has len(alphas) · len(betas) points.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wpat.measurements.metrics import Attack, attacked_logits
from wpat.helpers.model_state import kept
from wpat.perturb import add_perturbation, perturbed_parameters

Direction = dict[str, Tensor]


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> Direction:
    """A Gaussian direction over the conv/linear weights, each filter scaled to ‖w_{l,j}‖.

    ``generator`` is a CPU generator; drawing from it in parameter order makes the raw
    direction depend only on its seed and the shapes. Parameters absent from the result
    (1-D ones) have a zero direction.
    """
    direction = {}
    for name, w in perturbed_parameters(model):
        d = torch.randn(w.shape, generator=generator).to(w)
        w_norm = w.detach().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-10)  # Li et al.'s guard; ‖d‖ > 0 a.s.
        direction[name] = d * (w_norm / d_norm).view(-1, *[1] * (d.dim() - 1))
    return direction


def adversarial_losses(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, *,
                       batch_size: int = 500, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per-example CE loss and correctness (bool) on ``attack``'s examples against ``model``.

    Eval mode (every module's flag is restored after); the torch RNG is seeded with ``seed``
    inside a fork, so the caller's random stream is left as it was.
    """
    device = next(model.parameters()).device
    losses, correct = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for logits, yb in attacked_logits(model, x, y, attack, batch_size, device):
            losses.append(F.cross_entropy(logits, yb, reduction="none"))
            correct.append(logits.argmax(1) == yb)
    return torch.cat(losses), torch.cat(correct)


def _landscape(model: nn.Module, x: Tensor, y: Tensor, attack: Attack,
               directions: Sequence[Direction], points: Sequence[Sequence[float]],
               batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean adversarial loss and accuracy at w + Σ_k c_k·d_k for each coefficient tuple c."""
    params = dict(model.named_parameters())
    weights = [params[name] for name in directions[0]]
    loss, acc = [], []
    with kept(model, weights) as state:
        for coefficients in points:
            with torch.no_grad():  # from w each time: no rounding drift along the grid
                for p, w_p in zip(weights, state.w):
                    p.copy_(w_p)
            for c, d in zip(coefficients, directions):
                add_perturbation(model, d, float(c))
            losses, correct = adversarial_losses(model, x, y, attack, batch_size=batch_size,
                                                 seed=seed)
            loss.append(losses.mean().item())
            acc.append(correct.float().mean().item())
    return np.array(loss), np.array(acc)


def landscape_1d(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, direction: Direction,
                 alphas: Sequence[float], *, batch_size: int = 500,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """g(α) = ρ(w + α·d) and the adversarial accuracy there, each of shape [len(alphas)]."""
    return _landscape(model, x, y, attack, [direction], [(a,) for a in alphas], batch_size, seed)


def landscape_2d(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, d: Direction,
                 e: Direction, alphas: Sequence[float], betas: Sequence[float], *,
                 batch_size: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """g(α, β) = ρ(w + α·d + β·e) and the adversarial accuracy, each [len(alphas), len(betas)]."""
    grid = [(a, b) for a in alphas for b in betas]
    loss, acc = _landscape(model, x, y, attack, [d, e], grid, batch_size, seed)
    shape = (len(alphas), len(betas))
    return loss.reshape(shape), acc.reshape(shape)
