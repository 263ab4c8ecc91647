"""Keeping a model as it was across work that changes it: :func:`kept`.

A weight perturbation's search moves the weights and runs train-mode forwards (which update the
BatchNorm running statistics), an attack crafts in a mode of its own, a landscape walks the weights
along directions, a sensitivity measurement holds them at ``w + v``: each must hand the model back
exactly as it found it. They all do it with :func:`kept`, so "exactly" means one thing everywhere:
the kept tensors bitwise (copied back from copies, never ``w + v − v``) and every module's own
train/eval flag (``model.train(mode)`` would flatten deliberately mixed modes).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn


def weights_moved() -> None:
    """Call after changing weights in place: autocast caches the low-precision copy of each
    weight for the rest of its region, and a forward at the moved weights must not reuse the
    copy made before the move (under bf16 the search and the step at w + v would run at w)."""
    if torch.is_autocast_enabled() or torch.is_autocast_enabled("cpu"):
        torch.clear_autocast_cache()


@dataclass
class Kept:
    """What :func:`kept` saved, handed to the block.

    Attributes:
        w: copies of the kept parameters, in the order given (the unperturbed weights a search
            starts from).
        forwarded: a block that runs a forward of the model sets it, so that the kept buffers
            are put back: a train-mode forward updates the BatchNorm running statistics inside
            its kernel, without moving their version counter, so only the block knows.
    """

    w: list[Tensor]
    forwarded: bool = False


@contextmanager
def kept(model: nn.Module, params: Iterable[Tensor] = (), *, buffers: bool = False,
         train: bool | None = None) -> Iterator[Kept]:
    """Let the block change ``model``; on exit, put back what it changed.

    Kept are ``params`` (any of the model's parameters), with ``buffers`` every buffer
    (BatchNorm running statistics, ``num_batches_tracked``), and always every module's train/eval
    flag. ``train`` puts the whole model in train (True) or eval (False) mode inside the block;
    None leaves the caller's mode. On exit, also when the block raises, a kept parameter is
    copied back only if the block changed it in place (its version counter moved), and the
    buffers only if the block set :attr:`Kept.forwarded`: a tensor left alone is not rewritten,
    so a graph built before the block (the training step's forward at ``w``, whose BatchNorm
    backward reads the running statistics) stays usable for backward. ``.grad`` is never touched.
    """
    flags = [(module, module.training) for module in model.modules()]
    params = list(params)
    state = Kept([p.detach().clone() for p in params])
    versions = [p._version for p in params]  # bumped by every in-place change of a parameter
    saved_buffers = [(b, b.clone()) for b in model.buffers()] if buffers else []
    if train is not None:
        model.train(train)
    try:
        yield state
    finally:
        moved = [(p, w) for p, w, version in zip(params, state.w, versions) if p._version != version]
        with torch.no_grad():
            for t, copy in moved + (saved_buffers if state.forwarded else []):
                t.copy_(copy)
        if moved:
            weights_moved()
        for module, flag in flags:
            module.training = flag
