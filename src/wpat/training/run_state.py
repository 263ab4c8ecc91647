"""Where a training run stands, and the checkpoints that record it.

:class:`RunState` is what the loop carries from one epoch to the next: epochs completed, batches
completed of the next one (a mid-epoch ``last.pt``), the best epoch so far and the history of
epoch records. The loop never changes one in place; each epoch returns a new one.

A checkpoint is either *weights only* (``best.pt``, ``ema_*.pt``, ``epoch-NNN.pt``: the model,
the config and the run state, for evaluation and analysis) or *resumable* (``last.pt``: the
same plus the optimizer, every rank's random generators, the extra stream's position, the
weight average and, in the middle of an epoch, its partial statistics). The keys are those of
every wpat version so far, so an older ``last.pt`` resumes (tests/fixtures/main-resume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from wpat.helpers import distributed
from wpat.checkpoints.files import FORMAT, rng_state, set_rng_state
from wpat.configuration.config import Config
from wpat.training.parts import Parts, seed_everything


def no_best() -> dict[str, Any]:
    return {"metric": -1.0, "epoch": 0}


@dataclass(frozen=True)
class RunState:
    """Attributes:
        epoch: epochs completed.
        step: batches completed of epoch ``epoch + 1`` (0 at an epoch's end).
        best: ``metric``/``epoch``/``selected_by`` of the best checkpoint, and ``ema_metric``/
            ``ema_epoch`` of the weight average's.
        history: one record per completed epoch.
        epoch_stats: the partial sums of a mid-epoch checkpoint's ``step`` batches.
    """

    epoch: int = 0
    step: int = 0
    best: dict[str, Any] = field(default_factory=no_best)
    history: tuple[dict[str, Any], ...] = ()
    epoch_stats: dict[str, Any] | None = None


def weights_only(cfg: Config, model: nn.Module, state: RunState, kind: str) -> dict[str, Any]:
    """A checkpoint for evaluation and analysis: no optimizer or RNG state."""
    return {
        "format": FORMAT,
        "kind": kind,
        "config": cfg.to_dict(),
        "model_name": cfg.model.name,
        "dataset": cfg.data.name,
        "model": model.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best": dict(state.best),
        "history": list(state.history),
    }


def resumable(parts: Parts, state: RunState) -> dict[str, Any]:
    """Everything ``resume`` needs. Called on every rank: it gathers each rank's generators."""
    ranks = distributed.gather(rng_state())
    ckpt = {**weights_only(parts.cfg, parts.model, state, "last"),
            "optimizer": parts.optimizer.state_dict(), "rng": ranks[0]}
    if parts.world.size > 1:
        ckpt["rng_ranks"] = ranks
    if parts.extra is not None:
        ckpt["extra_stream"] = parts.extra.state()
    if parts.ema is not None:
        ckpt["ema"] = parts.ema.state()
    if state.epoch_stats is not None:
        ckpt["epoch_stats"] = state.epoch_stats
    return ckpt


def restore(parts: Parts, ckpt: dict[str, Any]) -> RunState:
    """Load a resumable checkpoint into ``parts`` (weights, optimizer, average, extra stream,
    generators) and return the run state it records."""
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.ema is not None:
        parts.ema.load_state(ckpt["ema"])
    if parts.extra is not None and "extra_stream" in ckpt:
        parts.extra.load_state(ckpt["extra_stream"])
    state = RunState(epoch=int(ckpt["epoch"]), step=int(ckpt.get("step", 0)), best=dict(ckpt["best"]),
                     history=tuple(ckpt["history"]), epoch_stats=ckpt.get("epoch_stats"))
    ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if len(ranks) == parts.world.size:
        set_rng_state(ranks[parts.world.rank])
    else:  # another number of ranks: fresh per-rank streams, from where the run stands
        seed_everything(parts.cfg.run.seed + 1000 * (state.epoch * 100_003 + state.step) + parts.world.rank)
    return state
