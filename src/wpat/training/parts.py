"""The parts of a training run, built from its config: the process's device and rank, the model
on that device, the optimizer, the data (splits, loader, extra stream), the weight average and
the components (docs/design.md, "One training step").

:func:`build_parts` is the one place that builds them, in an order that matters: the same seed
before the model is built gives every rank the same initial weights, components are built (and
so checked) before any data is read, and the per-rank seed comes after the weights are shared.
The training loop (:mod:`wpat.training.loop`) only uses what it returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from wpat.helpers import distributed

from wpat.training import experiment
from wpat.attacks import PGD
from wpat.optim.averaging import Average, BatchSource, build_average
from wpat.training.batching import check_shares, extra_batch_size
from wpat.checkpoints.files import is_wpat_checkpoint, load_checkpoint, weights_digest
from wpat.configuration.config import Config, component_options
from wpat.data import AUGMENTATIONS, DeviceLoader, ExtraStream, dataset_spec, open_extra
from wpat.helpers.distributed import World
from wpat.helpers.errors import WpatError, check
from wpat.training.experiment import Splits
from wpat.training.finetune import init_from
from wpat.training.loading import model_from_checkpoint
from wpat.objectives import Objective, Phase, Supplies
from wpat.perturb import WeightPerturbation
from wpat.optim.regularize import parameter_groups
from wpat.optim.schedules import Schedule
from wpat.training.supply import named_teachers, teacher_file, teachers_section, views_needed
from wpat.helpers.threat import BNMode


@dataclass(frozen=True)
class Parts:
    """Everything the training loop uses. ``model`` is the module whose weights are trained,
    saved and evaluated; ``forward_model`` is what the step calls (``torch.compile(model)``
    with ``run.compile``, sharing its parameters; else ``model`` itself)."""

    cfg: Config
    device: torch.device
    world: World
    model: nn.Module
    forward_model: nn.Module
    objective: Objective
    supplies: Supplies  # the models the objective needs (wpat.training.supply)
    perturbation: WeightPerturbation | None
    schedule: Schedule
    attack: PGD
    score_forward: bool  # the AT scripts' PGD scores its result with a train-mode forward
    test_attack: PGD
    optimizer: torch.optim.Optimizer
    ema: Average | None  # the weight average (run.average: ema or swa)
    splits: Splits
    train_eval: tuple[Tensor, Tensor]  # the fixed training subset evaluated each epoch
    loader: DeviceLoader
    extra: ExtraStream | None
    steps_per_epoch: int
    c_min: float  # the loss threshold of the logged fraction below it
    later_attack: PGD | None = None  # the training attack from attack.later_from on
    teacher_digests: tuple[str, ...] = ()  # the teachers' weights (wpat.checkpoints.files.weights_digest)

    def attack_in(self, epoch: int) -> PGD:
        """The training attack of (0-based) ``epoch``: the later one from ``attack.later_from`` on."""
        if self.later_attack is not None and epoch >= self.cfg.attack.later_from:
            return self.later_attack
        return self.attack

    def supplies_in(self, epoch: int) -> Supplies:
        """What the objective is handed in (0-based) ``epoch``: the weight average only in the
        epochs in which it is an average (from ``run.ema_start``, after ``run.swa_start``);
        before, it is a copy of the weights and the objective gets None."""
        if self.supplies.average is not None and self.ema is not None and not self.ema.active(epoch):
            return replace(self.supplies, average=None)
        return self.supplies


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_process(cfg: Config) -> tuple[torch.device, World]:
    """This process's device and place among the ranks, with the checks the ranks need: one
    config for all of them, and a global batch that divides into equal shares."""
    device = distributed.local_device(experiment.resolve_device(cfg.run.device))
    world = distributed.init(device)
    if world.size > 1 and len({repr(c) for c in distributed.gather(cfg.to_dict())}) > 1:
        raise WpatError("the ranks were started with different configs: give every torchrun "
                        "process the same preset and overrides")
    check_shares(cfg, world)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True)
    return device, world


def place_model(cfg: Config, model: nn.Module, device: torch.device, world: World, fresh: bool) -> nn.Module:
    """The model on ``device`` with rank 0's weights on every rank (fine-tuned from
    ``run.init_from`` on a fresh run), then the per-rank seed: the attacks' random starts differ
    per rank."""
    if cfg.run.init_from and fresh:  # fine-tuning: a pre-trained network, a new head if the classes differ
        init_from(model, cfg.run.init_from)
    model = model.to(device)
    if cfg.run.sync_bn and world.size > 1:  # BN statistics of the global batch
        if device.type != "cuda":
            raise WpatError("run.sync_bn: SyncBatchNorm runs on CUDA devices only; leave it false on the CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    distributed.broadcast_(list(model.state_dict().values()))
    seed_everything(cfg.run.seed + world.rank)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD over ``regularize.parameter_groups`` (two groups with ``optim.l2``)."""
    o = cfg.optim
    return torch.optim.SGD(parameter_groups(model, o.weight_decay, o.l2), lr=o.lr,
                           momentum=o.momentum, nesterov=o.nesterov)


def augmentation(cfg: Config) -> str:
    """``data.augment``, or the dataset's default; checked against ``AUGMENTATIONS``."""
    augment = cfg.data.augment or dataset_spec(cfg.data.name).augment
    AUGMENTATIONS.get(augment)
    return augment


def build_loader(cfg: Config, splits: Splits, device: torch.device, batch_size: int, views: int) -> DeviceLoader:
    """The labelled part (``batch_size`` examples) of each global batch, augmented and mixed on
    ``device``, in ``views`` augmented views."""
    d = cfg.data
    return DeviceLoader(splits.x_train, splits.y_train, batch_size, shuffle=True, drop_last=True,
                        augment=augmentation(cfg), padding=d.padding, rotation=d.rotation, cutout=d.cutout,
                        mix=d.mix, mix_alpha=d.mix_alpha, num_classes=experiment.num_classes_of(cfg),
                        device=device, seed=cfg.run.seed, views=views)


def build_extra_stream(cfg: Config, device: torch.device, batch_size: int) -> ExtraStream | None:
    """The stream of extra labelled data (RST's pseudo-labels, generated images), ``batch_size``
    examples of each global batch; None without extra data."""
    if not batch_size:
        return None
    if not cfg.data.extra:
        raise WpatError(f"data.extra: data.extra_fraction={cfg.data.extra_fraction} draws extra data; "
                        f"name it with data.extra=PATH (.npz files or RST's pickle)")
    spec = dataset_spec(cfg.data.name)
    data = open_extra(cfg.data.extra, shape=spec.shape, num_classes=spec.num_classes)
    return ExtraStream(data, batch_size, seed=cfg.run.seed, device=device, augment=augmentation(cfg),
                       padding=cfg.data.padding)


def steps_per_epoch(cfg: Config, splits: Splits, loader: DeviceLoader, extra: ExtraStream | None) -> int:
    """The loader's batches; with extra data an epoch is counted in labelled-set sizes of whole
    global batches, as RST's script counts it."""
    if extra is not None:
        return max(1, len(splits.x_train) // cfg.data.batch_size)
    return len(loader)


def loader_clock(loader: DeviceLoader, epochs: int, steps: int) -> Callable[[], Phase]:
    """The training loop's position, read from the loader: the epoch and index of the batch it
    last yielded are the epoch and step the loop is at (a resumed epoch re-draws and skips the
    batches it had done, so the count holds there too)."""
    def clock() -> Phase:
        assert loader.position is not None, "the clock is read after the loader yields a batch"
        epoch, step = loader.position
        return Phase(epoch=epoch, epochs=epochs, step=step, steps=steps)
    return clock


def load_teachers(cfg: Config, objective: Objective, student: nn.Module, device: torch.device
                  ) -> tuple[tuple[nn.Module, ...], tuple[str, ...]]:
    """The models of the checkpoints an objective that needs ``teachers`` names (a run directory's
    best.pt, else its last.pt, or a checkpoint file; each with its own stored config, or the
    run's for a foreign state_dict), frozen, in eval mode, on ``device``, and their weights'
    digests. A teacher that is not set, not there, not a readable checkpoint, or not of the
    ``student``'s architecture (its tensors' names and shapes) is one WpatError naming its key."""
    if "teachers" not in objective.requirements():
        return (), ()
    section = teachers_section(cfg)
    teachers, digests = [], []
    expected = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    for label, path in named_teachers(objective):
        key = f"{section}.{label}"
        if path is None:
            raise WpatError(f"{key}: no teacher given; name its run directory or checkpoint with {key}=PATH")
        file = teacher_file(key, path)
        try:
            stored = is_wpat_checkpoint(load_checkpoint(file))
            model, teacher_cfg, _ = model_from_checkpoint(file, None if stored else cfg)
        except WpatError as err:
            raise WpatError(f"{key}: {err}") from None
        if experiment.num_classes_of(teacher_cfg) != experiment.num_classes_of(cfg):
            raise WpatError(f"{key}: teacher {file} predicts {experiment.num_classes_of(teacher_cfg)} classes, "
                            f"the model {experiment.num_classes_of(cfg)}")
        found = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if found != expected:
            raise WpatError(f"{key}: teacher {file} is a {teacher_cfg.model.name} of another architecture than "
                            f"the model ({cfg.model.name}, {component_options(cfg.model) or 'default options'}); "
                            f"a teacher must be the model's network")
        digests.append(weights_digest(model))
        teachers.append(model.to(device).eval().requires_grad_(False))
    return tuple(teachers), tuple(digests)


BATCHNORM_STREAM = 0x5A4  # keys the BatchNorm pass's stream apart from the training stream


def batchnorm_batches(cfg: Config, loader: DeviceLoader) -> BatchSource:
    """The batches of SWA's BatchNorm pass after an epoch: every training example once, augmented
    as in training (no mixing, one view), in batches of ``data.batch_size``, the last one partial,
    as the authors' training loader. They draw from a stream of their own, seeded by (seed, epoch)
    of a seed derived from ``run.seed``, so the pass leaves the training stream as it was."""
    d = cfg.data
    seed = int(np.random.SeedSequence([cfg.run.seed, BATCHNORM_STREAM]).generate_state(1, np.uint64)[0])
    passes = DeviceLoader(loader.x, loader.y, d.batch_size, shuffle=True, drop_last=False,
                          augment=augmentation(cfg), padding=d.padding, rotation=d.rotation, cutout=d.cutout,
                          device=loader.x.device, seed=seed)

    def batches(epoch: int) -> Iterator[Tensor]:
        passes.set_epoch(epoch)
        return (x for x, _ in passes)

    return batches


def check_run_effect(cfg: Config, steps: int, processes: int, attack_bn: BNMode | None) -> None:
    """Refuse the run values that this data, launch and training attack would leave without
    effect (those the config alone decides are refused by ``load_config``; docs/design.md)."""
    every = cfg.run.checkpoint_every
    check(every < steps, "run.checkpoint_every", every,
          f"fewer than the {steps} steps of an epoch (last.pt is written at every epoch's end), or 0")
    check(not cfg.run.sync_bn or processes > 1, "run.sync_bn", cfg.run.sync_bn,
          "false in one process (it shares BatchNorm statistics between the processes of a torchrun launch)")
    check(not cfg.attack.script_forwards or attack_bn is BNMode.TRAIN, "attack.script_forwards",
          cfg.attack.script_forwards, f"false when the training attack does not run in train mode (here: "
          f"{attack_bn.value if attack_bn else 'the model’s own'}; the scripts' extra forwards update BatchNorm "
          f"statistics in train mode only)")


def build_parts(cfg: Config, fresh: bool = True) -> Parts:
    """Every part of a run of ``cfg``; ``fresh=False`` for a run about to load its ``last.pt``
    (no ``run.init_from`` weights then)."""
    device, world = start_process(cfg)
    seed_everything(cfg.run.seed)  # the same initial weights on every rank
    # Components first: a bad name or option is reported before any data is read.
    components = experiment.build_components(cfg)
    objective = components.objective
    augmentation(cfg)  # checked here too: before the data is read
    teachers, digests = load_teachers(cfg, objective, components.model, device)
    n_extra = extra_batch_size(cfg)
    extra = build_extra_stream(cfg, device, n_extra)  # opened before the splits are read: its errors first
    splits = experiment.load_splits(cfg)
    model = place_model(cfg, components.model, device, world, fresh)
    # torch.compile of the model's forward only (the attack loop and the search stay Python);
    # it shares the parameters, so checkpoints and evaluation use the plain module.
    forward_model = torch.compile(model) if cfg.run.compile else model
    loader = build_loader(cfg, splits, device, cfg.data.batch_size - n_extra, views_needed(objective))
    steps = steps_per_epoch(cfg, splits, loader, extra)
    if fresh:  # a resumed run keeps the values it started with
        check_run_effect(cfg, steps, world.size, components.attack.bn_mode)
    ema = build_average(cfg.run, model, batchnorm_batches(cfg, loader) if cfg.run.average == "swa" else None)
    average = ema.model if ema is not None and "average" in objective.requirements() else None
    n = min(cfg.eval.n_train, len(splits.x_train))
    return Parts(
        cfg=cfg, device=device, world=world, model=model, forward_model=forward_model, objective=objective,
        supplies=Supplies(average=average, teachers=teachers, clock=loader_clock(loader, cfg.schedule.epochs, steps)),
        perturbation=components.perturbation,
        schedule=components.schedule, attack=components.attack, test_attack=components.test_attack,
        # only in train mode does the scoring forward count (it changes the BN running statistics)
        score_forward=cfg.attack.script_forwards and components.attack.bn_mode is BNMode.TRAIN,
        optimizer=build_optimizer(cfg, model), ema=ema, splits=splits,
        train_eval=experiment.fixed_subset(splits.x_train, splits.y_train, n, cfg.run.seed + 1),
        loader=loader, extra=extra, steps_per_epoch=steps,
        c_min=experiment.lsc_threshold(cfg), later_attack=components.later_attack, teacher_digests=digests)
