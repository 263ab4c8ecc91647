"""A fixed, seeded held-out validation subset of a training split."""

from __future__ import annotations

import numbers

import torch

from wpat.helpers.errors import WpatError


def split_validation(
    x: torch.Tensor, y: torch.Tensor, n_val: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``(x, y)`` into ``(x_train, y_train, x_val, y_val)`` with ``n_val`` validation examples.

    The held-out examples are a uniformly random subset chosen by ``seed`` alone (a CPU
    generator, so the subset is the same on every device); both parts keep the original
    relative order. ``n_val = 0`` gives empty validation tensors.
    """
    n = x.shape[0]
    if y.shape[:1] != (n,):
        raise WpatError(f"split_validation: {n} images but labels of shape {list(y.shape)}")
    if isinstance(n_val, bool) or not isinstance(n_val, numbers.Integral) or not 0 <= n_val < n:
        raise WpatError(f"n_val must be an integer in 0..{n - 1} (the split has {n} examples), got {n_val!r}")
    generator = torch.Generator().manual_seed(seed)
    held_out = torch.zeros(n, dtype=torch.bool)
    held_out[torch.randperm(n, generator=generator)[:n_val]] = True
    held_out = held_out.to(x.device)
    return x[~held_out], y[~held_out], x[held_out], y[held_out]

