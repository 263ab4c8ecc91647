"""Cutout, mixup and CutMix on a float batch on the device, vectorised, from one generator.

Every random draw comes from the ``torch.Generator`` passed in (the :class:`DeviceLoader`'s
per-epoch generator, seeded from ``(seed, epoch)``), so a replayed epoch gives bitwise the same
batches, and nothing syncs with the host.

- :func:`cutout` masks one square per example (``DeviceLoader(cutout=L)``), after crop, flip and
  rotation, exactly as Rice et al.'s code places and fills it.
- The batch mixings in ``MIXES`` (``DeviceLoader(mix=...)``) combine each example with another of
  the same batch and return *soft targets*: a float ``[B, C]`` tensor of label probabilities
  ``λ·onehot(y_a) + (1 − λ)·onehot(y_b)``. Cross-entropy with a soft target is
  ``−Σ_k t_k log p_k = λ·CE(y_a) + (1 − λ)·CE(y_b)``: Zhang et al.'s and Rice et al.'s
  ``mixup_criterion`` in one term, so the attack and the objective need no special case.

Data pipeline order, as in Rice et al. 2020 (locuslab/robust_overfitting ``train_cifar.py``,
whose transforms are ``[Crop, FlipLR, Cutout]`` on images in [0, 1] before normalization, and
whose ``mixup_data`` mixes the transformed batch): crop/flip → rotation → cutout → mix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wpat.helpers.registry import Registry

MIXES = Registry("mix")


def cutout(x: Tensor, generator: torch.Generator, length: int) -> Tensor:
    """Cutout: set one ``length`` x ``length`` square of every example to 0, all channels.

    DeVries & Taylor, *Improved Regularization of Convolutional Neural Networks with Cutout*,
    2017, in the form Rice et al. 2020 use it (their ``utils.Cutout(h, w)``, from
    davidcpage/cifar10-fast) and the AWP paper copies (Table 4, Fig. 3d: length 14 on CIFAR-10):
    one hole per example, its top-left corner uniform over the positions where the square lies
    *entirely inside* the image (rows 0..H−length, columns 0..W−length), so it is never clipped
    at the border and always covers length² pixels; filled with 0 on the [0, 1] image, i.e.
    before normalization (black), after crop and flip::

        x[:, top:top + length, left:left + length] = 0

    (DeVries & Taylor's own code instead centres the square anywhere and clips it at the border;
    the tuned length 14 is Rice et al.'s, so their placement is the one used here.)

    Args:
        x: float batch ``[B, C, H, W]`` in [0, 1].
        generator: the source of the corners (two ``randint`` draws of B each: rows, then
            columns).
        length: side of the square in pixels, 1 <= length <= min(H, W) (the loader checks it).

    Returns a new tensor; ``x`` is not modified.
    """
    n, _, h, w = x.shape
    top = torch.randint(0, h - length + 1, (n, 1, 1), generator=generator, device=x.device)
    left = torch.randint(0, w - length + 1, (n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    hole = (rows >= top) & (rows < top + length) & (cols >= left) & (cols < left + length)
    return x.masked_fill(hole[:, None], 0.0)


def sample_beta(alpha: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """One draw λ ~ Beta(α, α), a 0-dim float64 tensor on ``device``, as G₁ / (G₁ + G₂) with
    G₁, G₂ ~ Gamma(α, 1) drawn from ``generator`` (``np.random.beta(alpha, alpha)`` in the
    authors' code, which draws from the global NumPy state). float64 keeps G from underflowing
    to 0 for small α; should both ever do so, λ = 1/2."""
    concentration = torch.full((2,), float(alpha), dtype=torch.float64, device=device)
    # torch.distributions' samplers cannot take a generator; the op behind them can.
    g = torch._standard_gamma(concentration, generator=generator)
    total = g.sum()
    return torch.where(total > 0, g[0] / total, torch.full_like(total, 0.5))


def _soft_targets(y: Tensor, perm: Tensor, lam: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """λ·onehot(y) + (1 − λ)·onehot(y[perm]) as ``dtype`` ``[B, num_classes]``."""
    onehot = F.one_hot(y, num_classes).to(dtype)
    return lam * onehot + (1 - lam) * onehot[perm]


@MIXES.register("none")
def no_mix(x: Tensor, y: Tensor, generator: torch.Generator, num_classes: int | None = None,
           alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """The batch and its integer labels as they are (no draw from ``generator``)."""
    return x, y


@MIXES.register("mixup")
def mixup(x: Tensor, y: Tensor, generator: torch.Generator, num_classes: int,
          alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """mixup: each example blended with a partner of the same batch.

    Zhang et al., *mixup: Beyond Empirical Risk Minimization*, ICLR 2018, as Rice et al.'s
    ``mixup_data`` does it: λ ~ Beta(α, α) drawn *once per batch*, then a random permutation π
    of the batch::

        x̃_i = λ·x_i + (1 − λ)·x_π(i)
        ỹ_i = λ·onehot(y_i) + (1 − λ)·onehot(y_π(i))

    ỹ is the soft-target form of their ``mixup_criterion`` λ·CE(y_a) + (1 − λ)·CE(y_b), with
    y_a = y and y_b = y[π]; their attack ascends the same mixed loss. x̃ is clamped to [0, 1]
    (it already lies there up to one rounding).

    Args:
        x: float batch ``[B, C, H, W]`` in [0, 1].
        y: int64 labels ``[B]`` in [0, num_classes).
        generator: the source of λ (two Gamma draws) and then π (``randperm(B)``).
        num_classes: C, the width of the soft targets.
        alpha: α > 0 of Beta(α, α), dimensionless (default 1.0; Rice et al.'s and the AWP
            paper's tuned value on CIFAR-10 is 1.4).

    Returns ``(x̃ float [B, C, H, W], ỹ float [B, num_classes])``.
    """
    lam64 = sample_beta(alpha, generator, x.device)
    perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
    lam = lam64.to(x.dtype)
    mixed = (lam * x + (1 - lam) * x[perm]).clamp_(0, 1)
    return mixed, _soft_targets(y, perm, lam, num_classes, x.dtype)


@MIXES.register("cutmix")
def cutmix(x: Tensor, y: Tensor, generator: torch.Generator, num_classes: int,
           alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """CutMix: a box of each example replaced by the same box of a partner of the same batch.

    Yun et al., *CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
    Features*, ICCV 2019, eq. 1-2, as their code (clovaai/CutMix-PyTorch ``rand_bbox``) does
    it: λ ~ Beta(α, α) and a permutation π drawn once per batch, then one box for the whole
    batch with sides ⌊H·√(1 − λ)⌋ x ⌊W·√(1 − λ)⌋ (area ratio ≈ 1 − λ) centred at a pixel
    (r, c) uniform over the image and clipped at the border::

        rows [clip(r − ⌊h_b/2⌋), clip(r + ⌊h_b/2⌋)),  cols likewise,  clip to [0, H] / [0, W]
        x̃_i = x_i outside the box, x_π(i) inside
        λ'  = 1 − (box area after clipping) / (H·W)
        ỹ_i = λ'·onehot(y_i) + (1 − λ')·onehot(y_π(i))

    so the label weight of the partner is exactly the fraction of pixels taken from it. Every
    batch is mixed (their ``cutmix_prob`` = 1, as for ImageNet; their CIFAR runs mix half the
    batches).

    Args:
        x: float batch ``[B, C, H, W]`` in [0, 1].
        y: int64 labels ``[B]`` in [0, num_classes).
        generator: the source of λ (two Gamma draws), π (``randperm(B)``), then the centre
            row and column (one ``randint`` each).
        num_classes: C, the width of the soft targets.
        alpha: α > 0 of Beta(α, α), dimensionless (default 1.0, Yun et al.'s).

    Returns ``(x̃ float [B, C, H, W], ỹ float [B, num_classes])``.
    """
    n, _, h, w = x.shape
    lam = sample_beta(alpha, generator, x.device)
    perm = torch.randperm(n, generator=generator, device=x.device)
    ratio = torch.sqrt(1 - lam)
    half_h = torch.floor(h * ratio).long() // 2
    half_w = torch.floor(w * ratio).long() // 2
    centre_row = torch.randint(0, h, (), generator=generator, device=x.device)
    centre_col = torch.randint(0, w, (), generator=generator, device=x.device)
    top, bottom = (centre_row - half_h).clamp(0, h), (centre_row + half_h).clamp(0, h)
    left, right = (centre_col - half_w).clamp(0, w), (centre_col + half_w).clamp(0, w)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    box = ((rows >= top) & (rows < bottom))[:, None] & ((cols >= left) & (cols < right))[None, :]
    mixed = torch.where(box, x[perm], x)
    kept = 1 - ((bottom - top) * (right - left)).to(torch.float64) / (h * w)
    return mixed, _soft_targets(y, perm, kept.to(x.dtype), num_classes, x.dtype)
