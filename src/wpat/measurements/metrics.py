"""Measurements shared by training, evaluation and analysis (one implementation each).

- :func:`attacked_logits`, :func:`correct`, :func:`accuracy`: an eval-mode model on clean or
  attacked batches.
- :data:`LSC_EDGES`, :func:`lsc_histogram`: the loss-stationary-condition bins of the RWP paper
  (Fig. 1c) and the per-bin counts of a batch of per-example losses, on the losses' device.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from wpat.attacks.base import crafting_mode
from wpat.helpers.progress import Progress
from wpat.helpers.threat import BNMode

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]

# Loss-stationary-condition bins of the RWP paper (Fig. 1c): [0, 0.5), [0.5, 1), ..., [5, inf) nats.
LSC_EDGES: tuple[float, ...] = tuple(0.5 * i for i in range(11)) + (math.inf,)


def lsc_inner_edges(edges: Sequence[float] = LSC_EDGES, device: torch.device | str = "cpu") -> Tensor:
    """The bin boundaries between the first and the last edge, as the tensor
    :func:`lsc_histogram` searches (made once by a caller that bins every step)."""
    return torch.tensor(list(edges[1:-1]), dtype=torch.float32, device=device)


def lsc_histogram(losses: Tensor, edges: Sequence[float] = LSC_EDGES, inner: Tensor | None = None) -> Tensor:
    """Counts of ``losses`` in each bin [edges[k], edges[k+1]) (a loss equal to an edge goes
    up), as a float tensor on the losses' device, with no host synchronisation (``index_add_``,
    not ``bincount``, whose length is read on the host). ``inner``: :func:`lsc_inner_edges`."""
    if inner is None:
        inner = lsc_inner_edges(edges, losses.device)
    bins = torch.bucketize(losses.detach().float(), inner, right=True)
    counts = torch.zeros(len(edges) - 1, device=losses.device)
    return counts.index_add_(0, bins, torch.ones(len(bins), device=losses.device))


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 images (0..255) to float in [0, 1]; float input is returned as float."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of the model's parameters (``default`` for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device(default))


def attacked_logits(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None = None,
                    batch_size: int = 500, device: torch.device | str | None = None,
                    desc: str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of ``(logits, labels)`` of eval-mode ``model`` on ``x`` or ``attack``'s examples.

    ``x`` may be uint8 (0..255) or float in [0, 1], on any device; batches go to ``device``
    (default: the model's). Every module's train/eval flag is restored once the batches are
    consumed. ``desc`` reports progress under that name (a bar on a terminal, plain lines in a
    log).
    """
    device = device or model_device(model, x.device)
    starts = range(0, len(x), batch_size)
    progress = Progress(desc, total=len(x), unit="img") if desc is not None else None
    with crafting_mode(model, BNMode.EVAL):
        for start in starts:
            xb = to_unit_float(x[start:start + batch_size].to(device))
            yb = y[start:start + batch_size].to(device)
            if attack is not None:
                xb = attack(model, xb, yb)
            with torch.no_grad():
                logits = model(xb)
            if progress is not None:
                progress.advance(len(xb))
            yield logits, yb
    if progress is not None:
        progress.close()


def correct(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None = None,
            batch_size: int = 500, device: torch.device | str | None = None,
            desc: str | None = None) -> Tensor:
    """Per example, whether ``model`` classifies ``x`` (or ``attack``'s example of it) as ``y``:
    bool flags on ``device`` (default: the model's); see :func:`attacked_logits`."""
    device = device or model_device(model, x.device)
    flags = [logits.argmax(1) == yb
             for logits, yb in attacked_logits(model, x, y, attack, batch_size, device, desc)]
    return torch.cat(flags) if flags else torch.empty(0, dtype=torch.bool, device=device)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None = None,
             batch_size: int = 500, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in [0, 1] of eval-mode ``model`` on ``(x, y)``, on ``attack``'s examples
    if given (NaN for no examples); see :func:`attacked_logits`."""
    if len(x) == 0:
        return float("nan")
    return correct(model, x, y, attack, batch_size, device).sum().item() / len(x)
