"""The training loop: adversarial training with an optional weight perturbation.

:func:`train` and :func:`resume` build a run's parts (:mod:`wpat.training.parts`) and its state
(:mod:`wpat.training.run_state`) and hand both to :func:`fit`, which runs :func:`train_epoch` until the
schedule ends or early stopping stops it. Each batch is one :func:`wpat.training.step.train_step`
(docs/design.md, "One training step"). Each epoch ends with natural and PGD-20 accuracy on the
test set and on a fixed training subset (their difference is the robust generalization gap),
the RWP paper's loss-stationary statistics, every statistic of the perturbation, and two
checkpoints: ``last.pt`` (everything needed to resume) and ``best.pt`` (highest test PGD-20
accuracy, or validation accuracy with ``run.select=val``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from wpat.helpers import distributed
from wpat.training.batching import compose_batch
from wpat.checkpoints.files import is_wpat_checkpoint, load_checkpoint, save_atomic
from wpat.checkpoints.run_dir import RunDir
from wpat.configuration.config import Config, config_from_dict, dump_config, run_over, stopped_early
from wpat.helpers.errors import WpatError
from wpat.helpers.fs import writable_dir
from wpat.measurements.metrics import correct
from wpat.helpers.progress import After, Progress
from wpat.helpers.seeds import derived_seed
from wpat.optim.regularize import scheduled_groups
from wpat.training.run_log import EpochStats, EventLog, format_epoch, write_metrics
from wpat.training.run_state import RunState, restore, resumable, weights_only
from wpat.training.step import perturbation_active, schedule_time, train_step
from wpat.training.parts import Parts, build_parts


# The evaluation's stream key beside the run seed and the epoch ("eval" in ASCII), apart from the
# data loader's keys (seed, epoch) and (seed, epoch, view) for views 1, 2, ...
EVALUATION_STREAM = 0x6576616C


def stale_events(run: RunDir) -> list[Path]:
    """The event files a new run in ``run`` replaces: those of a start that never reached a
    checkpoint (they hold no epoch). A directory holding a run, or a run's results, is refused."""
    if "last" in run.checkpoints():
        raise WpatError(f"{run.path} already holds a run; resume it with `wpat train --resume {run.path}` "
                        f"or choose another run.name=...")
    results = run.results()
    if results:
        raise WpatError(f"{run.path} holds a run's results ({', '.join(p.name for p in results)}) but no "
                        f"last.pt to resume from; move them away or choose another run.name=...")
    return run.event_files()


def train(cfg: Config) -> dict[str, Any]:
    """Train a new run described by ``cfg``; returns the best/last summary. A directory holding
    only the start of a run that never reached a checkpoint (killed in its first epoch) is
    started again, its event files replaced."""
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    stale = stale_events(RunDir(run_dir))
    with distributed.session():
        parts = build_parts(cfg)  # reads the data first: a missing dataset leaves no empty run dir
        if parts.world.main:
            writable_dir(run_dir, "run.out_dir")
            if stale:
                print(f"{run_dir}: starting again a run that never reached a checkpoint "
                      f"(its {len(stale)} event file(s) removed)")
            for path in stale:
                path.unlink(missing_ok=True)
            dump_config(cfg, run_dir / "config.yaml")
        return fit(parts, RunState(), run_dir)


def resume(run_dir: str | os.PathLike, progress: bool | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its ``last.pt``; the result equals an uninterrupted run."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and RunDir(run_dir).never_checkpointed():
        raise WpatError(f"{run_dir}: the run never reached a checkpoint (it stopped in its first epoch), "
                        f"so there is nothing to resume; start it again with `{RunDir(run_dir).restart_command()}`")
    path = run_dir / "last.pt" if run_dir.is_dir() else run_dir
    ckpt = load_checkpoint(path)
    if not is_wpat_checkpoint(ckpt) or ckpt.get("kind") != "last":
        raise WpatError(f"{path}: not a resumable wpat checkpoint (expected a run's last.pt)")
    cfg = config_from_dict(ckpt["config"])
    if progress is not None:
        cfg.run.progress = progress
    with distributed.session():
        parts = build_parts(cfg, fresh=False)
        return fit(parts, restore(parts, ckpt), path.parent)


def fit(parts: Parts, state: RunState, run_dir: Path) -> dict[str, Any]:
    """Train from ``state`` until the schedule's end or early stopping; returns the summary."""
    cfg, world = parts.cfg, parts.world
    first = state.epoch
    eval_seconds: float | None = None  # the last evaluation's length, for the run's ETA
    events = EventLog(run_dir, state.epoch + 1) if cfg.run.tensorboard and world.main else None
    try:
        while not run_over(cfg, state.epoch, state.best["epoch"]):  # a resumed run may have stopped
            record = train_epoch(parts, state, run_dir, eval_seconds)
            if evaluates(state.epoch + 1, cfg):
                eval_started = time.perf_counter()
                record.update(evaluate(parts, state.epoch + 1))
                eval_seconds = time.perf_counter() - eval_started
            state = next_state(cfg, state, record)
            save_epoch(parts, state, run_dir)
            if events is not None:
                events.add(record)
            if cfg.run.progress and world.main:
                print(format_epoch(record), file=sys.stderr, flush=True)
    finally:
        if events is not None:
            events.close()
        if parts.extra is not None:
            parts.extra.close()
    if state.epoch > first and stopped_early(cfg, state.epoch, state.best["epoch"]) and world.main:
        print(f"early stopping after epoch {state.epoch}: no better {state.best['selected_by']} "
              f"for {cfg.run.patience} epochs; best is epoch {state.best['epoch']}")
    return summary(parts, state, run_dir)


def train_epoch(parts: Parts, state: RunState, run_dir: Path, eval_seconds: float | None) -> dict[str, Any]:
    """Train epoch ``state.epoch + 1`` from its batch ``state.step`` on; returns the epoch's
    record (learning rate, time, training statistics), before evaluation. ``eval_seconds``,
    the last evaluation's length, goes into the progress lines' ETA of the whole run."""
    cfg, epoch, steps = parts.cfg, state.epoch, parts.steps_per_epoch
    parts.loader.set_epoch(epoch)
    if parts.extra is not None:  # the extra stream's position follows from (epoch, step)
        parts.extra.seek(epoch, state.step * parts.extra.batch_size)
    active = parts.perturbation is not None and perturbation_active(epoch, cfg)
    attack, supplies = parts.attack_in(epoch), parts.supplies_in(epoch)
    stats = EpochStats(parts.device, parts.c_min)
    if state.epoch_stats is not None:  # resuming in the middle of this epoch
        stats.load_state(state.epoch_stats, sums=parts.world.main)
    started = time.perf_counter() - stats.seconds
    # A resumed epoch re-draws the batches it had done (same order and augmentation, from the
    # epoch's seed) and skips them.
    batches = itertools.islice(enumerate(parts.loader), state.step, steps)
    progress = Progress(f"epoch {epoch + 1}/{cfg.schedule.epochs}", steps, initial=state.step,
                        images_per_unit=cfg.data.batch_size, enabled=cfg.run.progress and parts.world.main,
                        after=run_after(epoch, steps, cfg, eval_seconds))
    for i, loaded in batches:
        batch, weights = compose_batch(parts.world, loaded, parts.extra, cfg.data.extra_weight, supplies)
        lr = parts.schedule(schedule_time(epoch, i, steps, cfg.schedule), cfg.optim.lr)
        set_lr(parts.optimizer, lr, cfg.optim.lr_groups)
        with torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=cfg.run.amp):
            losses, perturb_stats = train_step(parts.forward_model, batch, attack, parts.objective,
                                               parts.perturbation if active else None, parts.optimizer,
                                               cfg.perturb.alternations, cfg.optim.l1, weights,
                                               score_forward=parts.score_forward)
        if parts.ema is not None:
            parts.ema.update(parts.model, epoch)
        stats.add(losses, perturb_stats)
        progress.advance()
        if cfg.run.checkpoint_every and (i + 1) % cfg.run.checkpoint_every == 0 and i + 1 < steps:
            stats.seconds = time.perf_counter() - started
            save_mid_epoch(parts, replace(state, step=i + 1), stats, run_dir)
    progress.close()
    # Each rank's BatchNorm running statistics saw its own shares: averaged, every rank
    # evaluates and rank 0 saves one model.
    distributed.average_([b for b in parts.model.buffers() if b.is_floating_point()])
    if parts.ema is not None:  # SWA averages here (and recomputes its BatchNorm statistics)
        parts.ema.end_epoch(parts.model, epoch)
    seconds = time.perf_counter() - started
    record = {"epoch": epoch + 1, "lr": lr, "perturb_active": active, "seconds": round(seconds, 3),
              "images_per_s": round(steps * cfg.data.batch_size / seconds, 1), **stats.summary()}
    if not math.isfinite(record["train_loss"]):
        raise WpatError(f"the training loss became {record['train_loss']} in epoch {epoch + 1}; "
                        f"stopped, the last good checkpoint is kept in {run_dir} "
                        f"(lower optim.lr or the perturbation's gamma)")
    return record


def set_lr(optimizer: torch.optim.Optimizer, lr: float, lr_groups: str) -> None:
    """The schedule's rate for the next step, in the parameter groups ``optim.lr_groups`` names."""
    for group in scheduled_groups(optimizer, lr_groups):
        group["lr"] = lr


def evaluates(epoch: int, cfg: Config) -> bool:
    """Whether the run evaluates after (1-based) ``epoch``: every ``eval.every`` and the last."""
    return epoch % cfg.eval.every == 0 or epoch == cfg.schedule.epochs


def run_after(epoch: int, steps_per_epoch: int, cfg: Config, eval_seconds: float | None) -> After:
    """What the run does after (0-based) ``epoch``'s steps, for its ETA: the later epochs' steps,
    its evaluations (this epoch's included) as long as the last one measured. A minimum while
    an evaluation is due but none was measured yet, or while the weight perturbation is still to
    start (its epochs are slower than this one)."""
    later = range(epoch + 1, cfg.schedule.epochs)
    n_evals = sum(evaluates(e + 1, cfg) for e in (epoch, *later))
    slower_later = cfg.perturb.name != "none" and not perturbation_active(epoch, cfg) and \
        any(perturbation_active(e, cfg) for e in later)
    return After(units=steps_per_epoch * len(later), seconds=n_evals * (eval_seconds or 0.0),
                 lower_bound=(n_evals > 0 and eval_seconds is None) or slower_later)


def evaluate(parts: Parts, epoch: int) -> dict[str, float]:
    """The model's accuracies after (1-based) ``epoch``, and the weight average's next to them
    under the same attack. With ``eval.own_rng`` the attack's random starts come from a generator
    seeded by the run's seed and the epoch, and the global generators are left as they were, so
    how often and on how many images a run evaluates does not change what it trains."""
    with _evaluation_rng(parts.cfg, epoch):
        metrics = measure(parts, parts.model)
        if parts.ema is not None:
            metrics.update({f"ema_{k}": v for k, v in measure(parts, parts.ema.model).items()})
    return metrics


@contextlib.contextmanager
def _evaluation_rng(cfg: Config, epoch: int) -> Iterator[None]:
    """Where the evaluation after ``epoch`` draws: the global generators, as the authors' scripts,
    or with ``eval.own_rng`` a stream of its own, the global generators restored afterwards."""
    if not cfg.eval.own_rng:
        yield
        return
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(derived_seed(cfg.run.seed, epoch, EVALUATION_STREAM))
        yield


def measure(parts: Parts, model: nn.Module) -> dict[str, float]:
    s, attack = parts.splits, parts.test_attack
    metrics = {
        "test_nat_acc": accuracy(parts, model, s.x_test, s.y_test, None),
        "test_pgd_acc": accuracy(parts, model, s.x_test, s.y_test, attack),
        "train_nat_acc": accuracy(parts, model, *parts.train_eval, None),
        "train_pgd_acc": accuracy(parts, model, *parts.train_eval, attack),
    }
    metrics["robust_gap"] = metrics["train_pgd_acc"] - metrics["test_pgd_acc"]
    if len(s.x_val):
        metrics["val_nat_acc"] = accuracy(parts, model, s.x_val, s.y_val, None)
        metrics["val_pgd_acc"] = accuracy(parts, model, s.x_val, s.y_val, attack)
    return metrics


def accuracy(parts: Parts, model: nn.Module, x: Tensor, y: Tensor, attack: Callable[..., Tensor] | None) -> float:
    """Accuracy over all of ``x``; under torchrun each rank attacks its shard and the correct
    counts are summed (counts, not averages of averages)."""
    world = parts.world
    flags = correct(model, world.shard(x), world.shard(y), attack, parts.cfg.eval.batch_size)
    hits = distributed.total(flags.sum())
    return int(hits) / len(x) if len(x) else float("nan")


def next_state(cfg: Config, state: RunState, record: dict[str, Any]) -> RunState:
    """The state after the epoch of ``record``: one more epoch, its record in the history, and
    the best epochs (the model's and the weight average's) updated by its accuracies."""
    epoch = state.epoch + 1
    key = "val_pgd_acc" if cfg.run.select == "val" else "test_pgd_acc"
    best = dict(state.best)
    if key in record and record[key] > best["metric"]:
        best.update(metric=record[key], epoch=epoch, selected_by=key)
    if f"ema_{key}" in record and record[f"ema_{key}"] > best.get("ema_metric", -1.0):
        best.update(ema_metric=record[f"ema_{key}"], ema_epoch=epoch)
    return RunState(epoch=epoch, best=best, history=(*state.history, record))


def write(parts: Parts, ckpt: dict[str, Any], path: Path) -> None:
    """Rank 0 alone writes checkpoints (every rank holds the same state)."""
    if parts.world.main:
        save_atomic(ckpt, path)


def save_epoch(parts: Parts, state: RunState, run_dir: Path) -> None:
    """The checkpoints of the epoch ``state`` ends: best.pt and ema_best.pt when it is the best
    so far, ema_last.pt, epoch-NNN.pt every ``run.keep_every`` epochs, the metrics, last.pt."""
    cfg, epoch, best = parts.cfg, state.epoch, state.best
    if best["epoch"] == epoch:
        write(parts, weights_only(cfg, parts.model, state, "best"), run_dir / "best.pt")
    if parts.ema is not None:
        if best.get("ema_epoch") == epoch:
            write(parts, weights_only(cfg, parts.ema.model, state, "ema_best"), run_dir / "ema_best.pt")
        write(parts, weights_only(cfg, parts.ema.model, state, "ema_last"), run_dir / "ema_last.pt")
    if cfg.run.keep_every and epoch % cfg.run.keep_every == 0:
        write(parts, weights_only(cfg, parts.model, state, "epoch"), run_dir / f"epoch-{epoch:03d}.pt")
    # last.pt goes last: once it names this epoch, best.pt and the metrics are already there
    ckpt = resumable(parts, state)  # on every rank: it gathers each rank's random generators
    if parts.world.main:
        write_metrics(run_dir, list(state.history))
    write(parts, ckpt, run_dir / "last.pt")


def save_mid_epoch(parts: Parts, state: RunState, stats: EpochStats, run_dir: Path) -> None:
    """last.pt after ``state.step`` batches of an epoch, unless the loss is no longer finite."""
    partial = stats.state()  # totals over the ranks
    if not torch.isfinite(partial["loss_sum"]):  # the one host sync of a mid-epoch checkpoint
        return  # the epoch's end reports it; the last good checkpoint stays
    write(parts, resumable(parts, replace(state, epoch_stats=partial)), run_dir / "last.pt")


def summary(parts: Parts, state: RunState, run_dir: Path) -> dict[str, Any]:
    """The best and last epochs' records (and the weight average's), for the caller and sweeps."""
    by_epoch = {r["epoch"]: r for r in state.history}
    last = state.history[-1] if state.history else {}
    result = {"run_dir": str(run_dir), "eval_steps": parts.cfg.eval.steps, "best_epoch": state.best["epoch"],
              "best": by_epoch.get(state.best["epoch"], {}), "last": last,
              "stopped_early": state.epoch < parts.cfg.schedule.epochs, "rank": parts.world.rank}
    if parts.ema is not None:  # the average's rows: its own best epoch, and the last
        def unprefixed(r: dict[str, Any]) -> dict[str, Any]:
            return {"epoch": r.get("epoch"), **{k[4:]: v for k, v in r.items() if k.startswith("ema_")}}
        result["ema_best"] = unprefixed(by_epoch.get(state.best.get("ema_epoch"), {}))
        result["ema_last"] = unprefixed(last)
    return result
