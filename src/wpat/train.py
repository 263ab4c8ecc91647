"""The training loop: adversarial training with an optional weight perturbation.

Each batch is one :func:`wpat.step.train_step` (docs/design.md, "One training step"). Each epoch ends with natural and PGD-20 accuracy on the test set and on a fixed training subset
(their difference is the robust generalization gap), the RWP paper's loss-stationary statistics,
every statistic of the perturbation, and two checkpoints: ``last.pt`` (everything needed to
resume) and ``best.pt`` (highest test PGD-20 accuracy, or validation accuracy with
``run.select=val``).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from wpat import distributed, experiment
from wpat.checkpoint import FORMAT, is_wpat_checkpoint, load_checkpoint, rng_state, save_atomic, set_rng_state
from wpat.config import Config, config_from_dict, dump_config, stopped_early
from wpat.data import AUGMENTATIONS, DeviceLoader, ExtraStream, dataset_spec, open_extra
from wpat.errors import WpatError, check
from wpat.finetune import init_from
from wpat.fs import writable_dir
from wpat.metrics import correct
from wpat.averaging import WeightAverage
from wpat.progress import After, Progress
from wpat.regularize import parameter_groups, scheduled_groups
from wpat.step import perturbation_active, schedule_time, train_step
from wpat.threat import BNMode
from wpat.run_dir import RunDir
from wpat.run_log import EpochStats, EventLog, format_epoch, write_metrics


class Trainer:
    """Owns a run directory; ``fit()`` trains from scratch or resumes ``last.pt``."""

    def __init__(self, cfg: Config, run_dir: Path, fresh: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = distributed.local_device(experiment.resolve_device(cfg.run.device))
        self.world = distributed.init(self.device)
        if self.world.size > 1 and len({repr(c) for c in distributed.gather(cfg.to_dict())}) > 1:
            raise WpatError("the ranks were started with different configs: give every torchrun "
                            "process the same preset and overrides")
        n_extra = round(cfg.data.batch_size * cfg.data.extra_fraction)
        if cfg.data.batch_size % self.world.size or n_extra % self.world.size:
            raise WpatError(f"data.batch_size: {cfg.data.batch_size} (the global batch, {n_extra} of it extra "
                            f"data) does not divide into {self.world.size} equal shares, one per rank")
        if n_extra and not cfg.data.extra:
            raise WpatError(f"data.extra: data.extra_fraction={cfg.data.extra_fraction} draws extra data; "
                            f"name it with data.extra=PATH (.npz files or RST's pickle)")
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.run.seed)  # the same initial weights on every rank
        # Components first: a bad name or option is reported before any data is read.
        parts = experiment.build_components(cfg)
        augment = cfg.data.augment or dataset_spec(cfg.data.name).augment
        AUGMENTATIONS.get(augment)
        self.splits = experiment.load_splits(cfg)
        if cfg.run.init_from and fresh:  # fine-tuning: a pre-trained network, a new head if the classes differ
            init_from(parts.model, cfg.run.init_from)
        self.model = parts.model.to(self.device)
        if cfg.run.sync_bn and self.world.size > 1:  # BN statistics of the global batch
            if self.device.type != "cuda":
                raise WpatError("run.sync_bn: SyncBatchNorm runs on CUDA devices only; leave it false on the CPU")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        distributed.broadcast_(list(self.model.state_dict().values()))  # rank 0's weights everywhere
        seed_everything(cfg.run.seed + self.world.rank)  # the attacks' random starts differ per rank
        if cfg.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # torch.compile of the model's forward only (the attack loop and the search stay Python);
        # it shares the parameters, so checkpoints and evaluation use the plain module.
        self.forward_model = torch.compile(self.model) if cfg.run.compile else self.model
        self.objective, self.perturbation, self.schedule = parts.objective, parts.perturbation, parts.schedule
        self.attack, self.test_attack = parts.attack, parts.test_attack
        # The AT scripts' PGD scores its result with one more forward; only in train mode does it count.
        self.score_forward = cfg.attack.script_forwards and self.attack.bn_mode is BNMode.TRAIN
        o = cfg.optim
        self.optimizer = torch.optim.SGD(parameter_groups(self.model, o.weight_decay, o.l2), lr=o.lr,
                                         momentum=o.momentum, nesterov=o.nesterov)
        self.ema = WeightAverage(self.model, cfg.run.ema) if cfg.run.ema else None
        self.n_extra = round(cfg.data.batch_size * cfg.data.extra_fraction)
        self.loader = DeviceLoader(self.splits.x_train, self.splits.y_train, cfg.data.batch_size - self.n_extra,
                                   shuffle=True, drop_last=True, augment=augment,
                                   padding=cfg.data.padding, rotation=cfg.data.rotation,
                                   cutout=cfg.data.cutout, mix=cfg.data.mix, mix_alpha=cfg.data.mix_alpha,
                                   num_classes=experiment.num_classes_of(cfg), device=self.device, seed=cfg.run.seed)
        self.extra, self.steps_per_epoch = self.extra_stream(augment), len(self.loader)
        if self.extra is not None:  # RST: an epoch is counted in labeled-set sizes of whole batches
            self.steps_per_epoch = max(1, len(self.splits.x_train) // cfg.data.batch_size)
        if fresh:  # values that the data, the launch or the attack would leave without effect (docs/design.md)
            check_run_effect(cfg, self.steps_per_epoch, self.world.size, self.attack.bn_mode)
        n = min(cfg.eval.n_train, len(self.splits.x_train))
        self.train_eval = experiment.fixed_subset(self.splits.x_train, self.splits.y_train, n, cfg.run.seed + 1)
        self.c_min = experiment.lsc_threshold(cfg)
        self.epoch = 0  # epochs completed
        self.step = 0  # batches completed in the current epoch
        self.resume_stats: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"metric": -1.0, "epoch": 0}

    def extra_stream(self, augment: str) -> ExtraStream | None:
        """The stream of extra labeled data (RST's pseudo-labels, generated images), if any."""
        if not self.n_extra:
            return None
        spec = dataset_spec(self.cfg.data.name)
        if self.cfg.data.classes is not None:
            raise WpatError("data.classes: extra data keeps its own labels; it cannot be combined with a class subset")
        data = open_extra(self.cfg.data.extra, shape=spec.shape, num_classes=spec.num_classes)
        # every rank draws the global extra batch and keeps its share, as one process would
        return ExtraStream(data, self.n_extra, seed=self.cfg.run.seed, device=self.device,
                           augment=augment, padding=self.cfg.data.padding)

    def batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """This rank's share of the global batch: labeled examples, then extra ones, and the
        per-example loss weights when the extra examples weigh differently."""
        x, y = self.world.share(x), self.world.share(y)
        if self.extra is None:
            return x, y, None
        x_extra, y_extra = self.extra.next_batch()
        x_extra, y_extra = self.world.share(x_extra), self.world.share(y_extra)
        if y.dtype.is_floating_point:  # mixed (soft) targets for the labeled part
            y_extra = torch.nn.functional.one_hot(y_extra, y.shape[1]).to(y.dtype)
        weights = None
        if self.cfg.data.extra_weight != 1:
            weights = torch.cat([torch.ones(len(x), device=x.device),
                                 torch.full((len(x_extra),), self.cfg.data.extra_weight, device=x.device)])
        return torch.cat([x, x_extra]), torch.cat([y, y_extra]), weights

    # ------------------------------------------------------------------ state

    def weights_only_state(self, kind: str, model: nn.Module | None = None) -> dict[str, Any]:
        """A checkpoint for evaluation and analysis: no optimizer or RNG state."""
        return {
            "format": FORMAT,
            "kind": kind,
            "config": self.cfg.to_dict(),
            "model_name": self.cfg.model.name,
            "dataset": self.cfg.data.name,
            "model": (model or self.model).state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": dict(self.best),
            "history": self.history,
        }

    def state(self) -> dict[str, Any]:
        """Everything ``--resume`` needs: the weights-only state plus optimizer and RNG states."""
        ranks = distributed.gather(rng_state())  # every rank's generators, for an exact resume
        state = {**self.weights_only_state("last"), "optimizer": self.optimizer.state_dict(), "rng": ranks[0]}
        if self.world.size > 1:
            state["rng_ranks"] = ranks
        if self.extra is not None:
            state["extra_stream"] = self.extra.state()
        if self.ema is not None:
            state["ema"] = self.ema.state()
        return state

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch = int(ckpt["epoch"])
        self.step = int(ckpt.get("step", 0))
        self.resume_stats = ckpt.get("epoch_stats")
        self.best = dict(ckpt["best"])
        self.history = list(ckpt["history"])
        if self.ema is not None:
            self.ema.load_state(ckpt["ema"])
        if self.extra is not None and "extra_stream" in ckpt:
            self.extra.load_state(ckpt["extra_stream"])
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(ranks) == self.world.size:
            set_rng_state(ranks[self.world.rank])
        else:  # another number of ranks: fresh per-rank streams, from where the run stands
            seed_everything(self.cfg.run.seed + 1000 * (self.epoch * 100_003 + self.step) + self.world.rank)

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        steps_per_epoch = self.steps_per_epoch
        events = EventLog(self.run_dir, self.epoch + 1) if cfg.run.tensorboard and self.world.main else None
        try:
            self.run_epochs(steps_per_epoch, events)
        finally:
            if events is not None:
                events.close()
            if self.extra is not None:
                self.extra.close()
        return self.summary()

    def run_epochs(self, steps_per_epoch: int, events: EventLog | None) -> None:
        cfg = self.cfg
        eval_seconds: float | None = None  # the last evaluation's length, for the run's ETA
        for epoch in range(self.epoch, cfg.schedule.epochs):
            if self.should_stop():  # a resumed run that had already stopped early
                break
            self.loader.set_epoch(epoch)
            if self.extra is not None:  # the extra stream's position follows from (epoch, step)
                self.extra.seek(epoch, self.step * self.n_extra)
            active = self.perturbation is not None and perturbation_active(epoch, cfg)
            stats = EpochStats(self.device, self.c_min)
            if self.resume_stats is not None:  # resuming in the middle of this epoch
                stats.load_state(self.resume_stats, sums=self.world.main)
                self.resume_stats = None
            started = time.perf_counter() - stats.seconds
            # A resumed epoch re-draws the batches it had done (same order and augmentation,
            # from the epoch's seed) and skips them.
            batches = itertools.islice(enumerate(self.loader), self.step, steps_per_epoch)
            progress = Progress(f"epoch {epoch + 1}/{cfg.schedule.epochs}", steps_per_epoch,
                                initial=self.step, images_per_unit=cfg.data.batch_size,
                                enabled=cfg.run.progress and self.world.main,
                                after=run_after(epoch, steps_per_epoch, cfg, eval_seconds))
            for i, (x, y) in batches:
                x, y, weights = self.batch(x, y)
                lr = self.schedule(schedule_time(epoch, i, steps_per_epoch, cfg.schedule), cfg.optim.lr)
                for group in scheduled_groups(self.optimizer, cfg.optim.lr_groups):
                    group["lr"] = lr
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.run.amp):
                    losses, perturb_stats = train_step(self.forward_model, x, y, self.attack, self.objective,
                                                       self.perturbation if active else None, self.optimizer,
                                                       cfg.perturb.alternations, cfg.optim.l1, weights,
                                                       score_forward=self.score_forward)
                if self.ema is not None:
                    self.ema.update(self.model)
                stats.add(losses, perturb_stats)
                self.step = i + 1
                progress.advance()
                every = cfg.run.checkpoint_every
                if every and self.step % every == 0 and self.step < steps_per_epoch:
                    stats.seconds = time.perf_counter() - started
                    self.save_mid_epoch(stats)
            progress.close()
            self.step = 0
            # Each rank's BatchNorm running statistics saw its own shares: averaged, every rank
            # evaluates and rank 0 saves one model.
            distributed.average_([b for b in self.model.buffers() if b.is_floating_point()])
            seconds = time.perf_counter() - started
            record = {"epoch": epoch + 1, "lr": lr, "perturb_active": active,
                      "seconds": round(seconds, 3),
                      "images_per_s": round(steps_per_epoch * cfg.data.batch_size / seconds, 1)}
            record.update(stats.summary())
            if not math.isfinite(record["train_loss"]):
                raise WpatError(
                    f"the training loss became {record['train_loss']} in epoch {epoch + 1}; "
                    f"stopped, the last good checkpoint is kept in {self.run_dir} "
                    f"(lower optim.lr or the perturbation's gamma)")
            self.epoch = epoch + 1
            if evaluates(self.epoch, cfg):
                eval_started = time.perf_counter()
                record.update(self.evaluate())
                eval_seconds = time.perf_counter() - eval_started
            self.history.append(record)
            self.save(record)
            if events is not None:
                events.add(record)
            if cfg.run.progress and self.world.main:
                progress.write(format_epoch(record))
            if self.should_stop() and self.world.main:
                print(f"early stopping after epoch {self.epoch}: no better {self.best['selected_by']} "
                      f"for {cfg.run.patience} epochs; best is epoch {self.best['epoch']}")
            if self.should_stop():
                break

    def should_stop(self) -> bool:
        """AT-ES (Rice et al.): ``run.patience`` epochs without a better validation accuracy."""
        return stopped_early(self.cfg, self.epoch, self.best["epoch"])

    def evaluate(self) -> dict[str, float]:
        metrics = self.measure(self.model)
        if self.ema is not None:  # the average next to the raw model, under the same attack
            metrics.update({f"ema_{k}": v for k, v in self.measure(self.ema.model).items()})
        return metrics

    def measure(self, model: nn.Module) -> dict[str, float]:
        s = self.splits
        metrics = {
            "test_nat_acc": self.accuracy(model, s.x_test, s.y_test, None),
            "test_pgd_acc": self.accuracy(model, s.x_test, s.y_test, self.test_attack),
            "train_nat_acc": self.accuracy(model, *self.train_eval, None),
            "train_pgd_acc": self.accuracy(model, *self.train_eval, self.test_attack),
        }
        metrics["robust_gap"] = metrics["train_pgd_acc"] - metrics["test_pgd_acc"]
        if len(s.x_val):
            metrics["val_nat_acc"] = self.accuracy(model, s.x_val, s.y_val, None)
            metrics["val_pgd_acc"] = self.accuracy(model, s.x_val, s.y_val, self.test_attack)
        return metrics

    def accuracy(self, model: nn.Module, x: Tensor, y: Tensor, attack: Callable[..., Tensor] | None) -> float:
        """Accuracy over all of ``x``; under torchrun each rank attacks its shard and the correct
        counts are summed (counts, not averages of averages)."""
        flags = correct(model, self.world.shard(x), self.world.shard(y), attack, self.cfg.eval.batch_size)
        hits = distributed.total(flags.sum())
        return int(hits) / len(x) if len(x) else float("nan")

    def write(self, state: dict[str, Any], name: str) -> None:
        """Rank 0 alone writes checkpoints (every rank holds the same state)."""
        if self.world.main:
            save_atomic(state, self.run_dir / name)

    def save(self, record: dict[str, Any]) -> None:
        key = "val_pgd_acc" if self.cfg.run.select == "val" else "test_pgd_acc"
        if key in record and record[key] > self.best["metric"]:
            self.best = {"metric": record[key], "epoch": self.epoch, "selected_by": key}
            self.write(self.weights_only_state("best"), "best.pt")
        if self.ema is not None:
            ema_key = f"ema_{key}"
            if ema_key in record and record[ema_key] > self.best.get("ema_metric", -1.0):
                self.best.update(ema_metric=record[ema_key], ema_epoch=self.epoch)
                self.write(self.weights_only_state("ema_best", self.ema.model), "ema_best.pt")
            self.write(self.weights_only_state("ema_last", self.ema.model), "ema_last.pt")
        if self.cfg.run.keep_every and self.epoch % self.cfg.run.keep_every == 0:
            self.write(self.weights_only_state("epoch"), f"epoch-{self.epoch:03d}.pt")
        # last.pt goes last: once it names this epoch, best.pt and the metrics are already there
        state = self.state()  # on every rank: it gathers each rank's random generators
        if self.world.main:
            write_metrics(self.run_dir, self.history)
        self.write(state, "last.pt")

    def save_mid_epoch(self, stats: EpochStats) -> None:
        """last.pt after ``self.step`` batches of an epoch, unless the loss is no longer finite."""
        partial = stats.state()  # totals over the ranks
        if not torch.isfinite(partial["loss_sum"]):  # the one host sync of a mid-epoch checkpoint
            return  # the epoch's end reports it; the last good checkpoint stays
        state = self.state()
        state["epoch_stats"] = partial
        self.write(state, "last.pt")

    def summary(self) -> dict[str, Any]:
        by_epoch = {r["epoch"]: r for r in self.history}
        best = by_epoch.get(self.best["epoch"], {})
        last = self.history[-1] if self.history else {}
        summary = {"run_dir": str(self.run_dir), "eval_steps": self.cfg.eval.steps,
                   "best_epoch": self.best["epoch"], "best": best, "last": last,
                   "stopped_early": self.epoch < self.cfg.schedule.epochs, "rank": self.world.rank}
        if self.ema is not None:  # the average's rows: its own best epoch, and the last
            unprefixed = lambda r: {"epoch": r.get("epoch"), **{k[4:]: v for k, v in r.items()  # noqa: E731
                                                               if k.startswith("ema_")}}
            summary["ema_best"] = unprefixed(by_epoch.get(self.best.get("ema_epoch"), {}))
            summary["ema_last"] = unprefixed(last)
        return summary


# ---------------------------------------------------------------------- helpers


def check_run_effect(cfg: Config, steps_per_epoch: int, processes: int, attack_bn: BNMode | None) -> None:
    """Refuse the run values that this data, launch and training attack would leave without
    effect (those the config alone decides are refused by ``load_config``)."""
    every = cfg.run.checkpoint_every
    check(every < steps_per_epoch, "run.checkpoint_every", every,
          f"fewer than the {steps_per_epoch} steps of an epoch (last.pt is written at every epoch's end), or 0")
    check(not cfg.run.sync_bn or processes > 1, "run.sync_bn", cfg.run.sync_bn,
          "false in one process (it shares BatchNorm statistics between the processes of a torchrun launch)")
    check(not cfg.attack.script_forwards or attack_bn is BNMode.TRAIN, "attack.script_forwards",
          cfg.attack.script_forwards, f"false when the training attack does not run in train mode (here: "
          f"{attack_bn.value if attack_bn else 'the model’s own'}; the scripts' extra forwards update BatchNorm "
          f"statistics in train mode only)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        trainer = Trainer(cfg, run_dir)  # reads the data first: a missing dataset leaves no empty run dir
        if trainer.world.main:
            writable_dir(run_dir, "run.out_dir")
            if stale:
                print(f"{run_dir}: starting again a run that never reached a checkpoint "
                      f"(its {len(stale)} event file(s) removed)")
            for path in stale:
                path.unlink(missing_ok=True)
            dump_config(cfg, run_dir / "config.yaml")
        return trainer.fit()


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
        trainer = Trainer(cfg, path.parent, fresh=False)
        trainer.load_state(ckpt)
        return trainer.fit()
