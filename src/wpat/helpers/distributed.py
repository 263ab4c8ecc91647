"""Data-parallel training across processes (torchrun), with global-batch weight perturbation.

``torchrun --nproc_per_node N -m wpat train CONFIG`` starts N processes; each holds the whole
model, draws the same global batch (``data.batch_size`` stays the global batch, so a preset means
the same at any number of ranks) and trains on its contiguous share of it. Nothing is wrapped in
``DistributedDataParallel``: the few places where ranks must agree reduce explicitly, so the
weight perturbation's searches (``torch.autograd.grad``) and the attacks (input gradients, no
synchronisation) stay plain PyTorch:

- the update: after the backward, every gradient is averaged over the ranks;
- AWP/RWP: each ascent step's gradient is averaged over the ranks, RWP's "no example below
  ``c_min``" exit is decided over all ranks, and the statistics are averaged; the weights being
  the same everywhere, every rank computes the same ``v`` -- what one process computes on the
  global batch (per-example losses averaged over the global batch of equal shares);
- evaluation: every rank attacks its shard of the test set, correct counts are summed;
- rank 0 alone writes logs, metrics and checkpoints.

A process started without torchrun (no ``WORLD_SIZE`` > 1 in the environment) is a world of one,
and every function here is then the identity. Backends: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from wpat.helpers.errors import WpatError


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, x: Tensor) -> Tensor:
        """This rank's contiguous share of a global batch (the batch size divides evenly)."""
        if self.size == 1:
            return x
        per_rank = x.shape[0] // self.size
        return x[self.rank * per_rank:(self.rank + 1) * per_rank]

    def shard(self, x: Tensor) -> Tensor:
        """This rank's shard of an evaluation set (every size-th example, from rank)."""
        return x if self.size == 1 else x[self.rank::self.size]


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current() -> World:
    return World(dist.get_rank(), dist.get_world_size()) if active() else World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> World:
    """Join the process group torchrun describes (once); a world of one without torchrun."""
    if not launched_by_torchrun():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return current()


@contextmanager
def session() -> Iterator[None]:
    """The span of one run: a process group joined inside it (by :func:`init`) is destroyed on
    the way out, after the run ends or fails with a :class:`WpatError`.

    A process that exits with its group alive can abort while Python shuts down (SIGABRT,
    "terminate called without an active exception"): gloo's worker threads still hold work
    whose tensors need the interpreter that is being torn down. torchrun then reports the run
    as failed although it finished. After any other exception (an interrupt, a crash in a
    collective) the group is left to the process's exit, as destroying it while a peer waits in
    a collective could hang. A group the caller had joined before is the caller's to destroy.
    """
    joined_before = dist.is_available() and dist.is_initialized()

    def leave() -> None:
        if not joined_before and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    try:
        yield
    except WpatError:  # a user error, raised outside any collective
        leave()
        raise
    leave()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun on GPUs, each process takes the GPU of its local rank."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def average_(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` in place over the ranks (one flattened all-reduce)."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast_(tensors: Sequence[Tensor], source: int = 0) -> None:
    """Copy ``tensors`` of rank ``source`` to every rank, in place."""
    if not active():
        return
    for t in tensors:
        dist.broadcast(t, src=source)


def any_rank(flag: Tensor) -> Tensor:
    """Whether ``flag`` (a 0-d bool tensor) holds on any rank."""
    if not active():
        return flag
    value = flag.to(torch.int32).clone()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.bool()


def total(count: Tensor) -> Tensor:
    """The sum of ``count`` over the ranks."""
    if not active():
        return count
    count = count.clone()
    dist.all_reduce(count)
    return count


def gather(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (a one-element list without torchrun)."""
    if not active():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_gradients(model: torch.nn.Module) -> None:
    """Average every parameter's ``.grad`` over the ranks (the data-parallel update)."""
    average_([p.grad for p in model.parameters() if p.grad is not None])
