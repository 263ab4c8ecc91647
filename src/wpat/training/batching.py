"""How a training batch is composed: labelled examples, then extra ones (docs/design.md, "One
training step", step 1).

``data.batch_size`` is the global batch. With extra data (``data.extra``, RST), ``round(B ·
data.extra_fraction)`` of it come from the extra stream and the rest from the labelled loader;
under ``torchrun`` each rank keeps its contiguous share of both parts. :func:`extra_batch_size`
is that count, computed in one place; :func:`check_extra_data` is the configuration check the
validation layer runs (``experiment.build_components``) before any data is read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wpat.configuration.config import Config
from wpat.data import ExtraStream
from wpat.helpers.distributed import World
from wpat.helpers.errors import WpatError
from wpat.objectives import Batch, Supplies


def extra_batch_size(cfg: Config) -> int:
    """The number of extra examples in each global batch (0 without extra data)."""
    return round(cfg.data.batch_size * cfg.data.extra_fraction)


def check_extra_data(cfg: Config) -> None:
    """Extra data keeps its own labels: it does not combine with a class subset. (A preset may
    leave ``data.extra`` for the user to name; the stream refuses to start without it.)"""
    if extra_batch_size(cfg) and cfg.data.classes is not None:
        raise WpatError("data.classes: extra data keeps its own labels; it cannot be combined with a class subset")


def check_shares(cfg: Config, world: World) -> None:
    """The global batch, and its extra part, divide into one equal share per rank."""
    n_extra = extra_batch_size(cfg)
    if cfg.data.batch_size % world.size or n_extra % world.size:
        raise WpatError(f"data.batch_size: {cfg.data.batch_size} (the global batch, {n_extra} of it extra "
                        f"data) does not divide into {world.size} equal shares, one per rank")


def compose_batch(world: World, loaded: tuple[Tensor, ...], extra: ExtraStream | None, extra_weight: float,
                  supplies: Supplies) -> tuple[Batch, Tensor | None]:
    """This rank's share of the global batch the loader yielded (``x``, ``y`` and any further
    views): labelled examples, then extra ones, with the objective's ``supplies``; and the
    per-example loss weights when the extra examples weigh differently (``extra_weight`` ≠ 1)."""
    x, y, *views = (world.share(t) for t in loaded)
    if extra is None:
        return Batch(x, y, views=tuple(views), supplies=supplies), None
    # every rank draws the global extra batch and keeps its share, as one process would
    x_extra, y_extra = extra.next_batch()
    x_extra, y_extra = world.share(x_extra), world.share(y_extra)
    if y.dtype.is_floating_point:  # mixed (soft) targets for the labelled part
        y_extra = torch.nn.functional.one_hot(y_extra, y.shape[1]).to(y.dtype)
    weights = None
    if extra_weight != 1:
        weights = torch.cat([torch.ones(len(x), device=x.device),
                             torch.full((len(x_extra),), extra_weight, device=x.device)])
    return Batch(torch.cat([x, x_extra]), torch.cat([y, y_extra]), supplies=supplies), weights
