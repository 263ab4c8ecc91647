"""The typed configuration tree: YAML presets, ``key=value`` overrides, validation, resolved dump.

A run is fully described by one :class:`Config`. It is read from a YAML preset, then patched by
command-line overrides such as ``attack.eps=8/255`` or ``perturb.rwp.c_min=4`` (fractions are
accepted wherever a number is, because the field writes ε as 8/255). An optional value is unset
by YAML's ``null`` (``~``), in a file or an override; the word ``none`` is a value like any other,
so ``data.augment=none`` means no augmentation, not the dataset's default. A component's options live
under its own name (``perturb.rwp.*``, ``perturb.awp.*``, ``model.small_cnn.*``), so a value
reaches only the component it names. This layer imports no component: it checks its own values
when a config is loaded (a bad one raises :class:`WpatError` naming the key, the value and what
is allowed); component names and options are checked by the components' registries when
``wpat.training.experiment.build_components`` builds them, before any data is read. The resolved tree is
written next to the run so it can be reproduced exactly.

Units: ``attack.eps`` and ``attack.alpha`` are in pixel units of inputs scaled to [0, 1];
a perturbation's ``gamma`` is relative to the weight norm; learning rates are absolute; epochs are
epochs; a rotation is in degrees.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from wpat.configuration.values import check_effect, flatten, set_key, validate
from wpat.helpers.errors import WpatError
from wpat.helpers.fs import read_yaml_mapping

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


# Sections whose ``name`` picks a component keep that component's options in a subsection named
# after it (``perturb.rwp.c_min``, ``model.small_cnn.width``): a setting reaches only the
# component it names, and switching ``perturb.name`` never hands one method's options to another.
# The names, the options' defaults and their checks live in the components' registries
# (``wpat.models.MODELS``, ``wpat.objectives.OBJECTIVES``, ``wpat.perturb.PERTURBATIONS``,
# ``wpat.optim.schedules.SCHEDULES``); they are checked when the components are built.
Options = dict  # component name -> {option: value}

# Settings that say where or how a run executes, never what it computes, carry this metadata:
# runs that differ only in them are replicas of one experiment, which the sweep and the report
# group together (``non_identity_keys``).
NOT_IDENTITY = {"identity": False}

# The loss threshold of the logged fraction of training losses below it where neither
# ``run.lsc_threshold`` nor RWP says otherwise: RWP's CIFAR-10 and SVHN c_min (RWP §5.1).
LSC_THRESHOLD = 1.7


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # a name in wpat.data.DATASETS
    # a directory with the dataset's files; None searches the usual places
    root: Union[str, None] = field(default=None, metadata=NOT_IDENTITY)
    download: bool = field(default=False, metadata=NOT_IDENTITY)
    batch_size: int = 128
    train_subset: int = 0  # use only this many (seeded) training examples; 0 = all
    test_subset: int = 0  # evaluate on this many test examples; 0 = all
    val_size: int = 0  # examples held out of train for validation-based checkpoint selection
    classes: Union[list, None] = None  # train and test on these classes only, relabelled 0..k-1; None = all
    augment: Union[str, None] = None  # a name in wpat.data.AUGMENTATIONS (none: no augmentation); null = the dataset's default
    padding: str = "zeros"  # crop_flip's 4-px padding: zeros (TRADES code) | reflect (AT code)
    rotation: float = 0.0  # random rotation in [-r, r] degrees (the authors' CIFAR-100 AT: 15)
    cutout: int = 0  # cutout patch length in pixels (AWP Table 4: 14); 0 = off
    mix: str = "none"  # a name in wpat.data.MIXES: mixed inputs with soft targets
    mix_alpha: float = 1.0  # Beta(α, α) of the mixing weight (AWP Table 4 mixup: 1.4)
    extra: Union[str, None] = None  # extra labeled data streamed from disk: .npz file(s)/dir/pattern or RST's pickle
    extra_fraction: float = 0.0  # share of each batch drawn from the extra data (RST: 0.5; DM-AT: 0.7)
    extra_weight: float = 1.0  # weight of the extra examples' losses


@dataclass
class ModelConfig:
    name: str = "small_cnn"  # a name in wpat.models.MODELS
    mean: Union[list, None] = None  # per-channel normalization inside the model; None = the dataset's
    std: Union[list, None] = None
    options: Options = field(default_factory=dict)  # model.<name>.<option>, e.g. model.small_cnn.width


@dataclass
class AttackConfig:
    """The training attack (PGD) and the threat model shared with evaluation."""

    norm: str = "linf"
    eps: float = 0.1  # radius of the threat model, pixel units in [0, 1]
    alpha: float = 0.01  # PGD step size, pixel units
    steps: int = 10
    random_start: bool = True
    bn_mode: Union[str, None] = None  # train | eval | None = the objective's default
    script_forwards: bool = False  # BN statistics also take the updates of the AT scripts' extra PGD forwards (scoring, mixup)
    # A training attack that changes at an epoch (ReBAT++: stronger after the first decay): from
    # (0-based) epoch later_from on, each later_* that is set replaces eps/alpha/steps in training
    # (evaluation keeps the threat model above); null = no change.
    later_from: Union[int, None] = None
    later_eps: Union[float, None] = None
    later_alpha: Union[float, None] = None
    later_steps: Union[int, None] = None


@dataclass
class EvalConfig:
    """Per-epoch evaluation: natural and PGD accuracy on test and on a fixed train subset."""

    steps: int = 20
    alpha: Union[float, None] = None  # None = attack.alpha
    n_train: int = 1000  # training examples for train robust accuracy (fixed subset)
    batch_size: int = 500
    every: int = 1  # evaluate every N epochs (the last epoch is always evaluated)
    own_rng: bool = False  # True: PGD's random starts from a generator seeded by (run.seed, epoch), so
    #                        eval settings leave training's draws alone; False: the global one (the authors')


@dataclass
class ObjectiveConfig:
    name: str = "at"  # a name in wpat.objectives.OBJECTIVES
    options: Options = field(default_factory=dict)  # objective.<name>.<option>, e.g. objective.trades.beta


@dataclass
class PerturbConfig:
    name: str = "none"  # none, or a name in wpat.perturb.PERTURBATIONS
    warmup: int = 0  # epochs of plain training before the perturbation starts
    alternations: int = 1  # A: times x' and v are crafted in turn before the update (AWP §4.2)
    options: Options = field(default_factory=dict)  # perturb.<name>.<option>, e.g. perturb.rwp.c_min


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    l1: float = 0.0  # λ·Σ|w| on conv/linear weights added to the loss (AWP Table 4: 5e-6)
    l2: float = 0.0  # > 0: conv/linear weights decay with this, the rest with 0 (AWP Table 4: 5e-3)
    lr_groups: str = "all"  # all | first: the groups the schedule sets; first = the --l2 scripts (BN and biases keep optim.lr)


@dataclass
class ScheduleConfig:
    name: str = "piecewise"  # a name in wpat.optim.schedules.SCHEDULES
    epochs: int = 200
    first_epoch: int = 0  # the schedule's number for the first epoch: 1 as the authors' TRADES/MART/RST scripts
    update: str = "step_start"  # when t is read: step_start (e + i/N), step_end (e + (i+1)/N, the authors' AT scripts), epoch
    options: Options = field(default_factory=dict)  # schedule.<name>.<option>, e.g. schedule.piecewise.milestones


@dataclass
class RunConfig:
    name: Union[str, None] = field(default=None, metadata=NOT_IDENTITY)  # default: the preset's file name
    out_dir: str = field(default="runs", metadata=NOT_IDENTITY)
    seed: int = field(default=0, metadata=NOT_IDENTITY)  # runs that differ only in it are replicas
    device: str = field(default="auto", metadata=NOT_IDENTITY)  # auto | cpu | cuda | cuda:N | mps
    threads: int = 0  # CPU threads; 0 = leave torch's default
    select: str = "test"  # which PGD accuracy picks the "best" checkpoint: test | val
    progress: bool = field(default=True, metadata=NOT_IDENTITY)
    # TensorBoard event files of the per-epoch metrics in the run directory
    tensorboard: bool = field(default=True, metadata=NOT_IDENTITY)
    deterministic: bool = False
    amp: bool = False  # bf16 autocast for training forwards/backwards (GPU); deltas and eval stay fp32
    compile: bool = False  # torch.compile the model's forward for training (GPU fast path; slow to start on CPU)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics of the global batch (SyncBatchNorm)
    channels_last: bool = True  # NHWC weights: ~1.5x faster convolutions on CPU and GPU
    # also write last.pt every N training steps; 0 = at epoch ends only
    checkpoint_every: int = field(default=0, metadata=NOT_IDENTITY)
    # also keep epoch-NNN.pt every N epochs (for landscapes); 0 = none
    keep_every: int = field(default=0, metadata=NOT_IDENTITY)
    # The weight average (wpat.optim.averaging), saved as ema_*.pt: ema, the exponential moving average
    # (on with run.ema > 0; reads the ema_* settings); swa, stochastic weight averaging, equal
    # weights at epoch ends with a BatchNorm pass (reads the swa_* settings). As a component's
    # options, the settings of the kind not chosen are kept but reach nothing.
    average: str = "ema"
    ema: float = 0.0  # decay of the exponential moving average of the weights per step, e.g. 0.995; 0 = off
    ema_start: int = 0  # epochs (0-based) before which the EMA is an exact copy of the weights (ReBAT: 105)
    ema_ramp: bool = True  # ramp the decay up as (1 + t)/(10 + t) over the first t updates; false: d throughout
    swa_start: int = 0  # SWA: the first epoch (0-based) whose end is averaged (KD+SWA: 55)
    swa_every: int = 1  # SWA: average every N epochs from swa_start
    patience: int = 0  # AT-ES: stop after this many epochs without a better val PGD accuracy; 0 = off
    init_from: Union[str, None] = None  # start from this checkpoint's weights (fine-tuning)
    # the loss threshold of the logged fraction of training losses below it (lsc_frac_below);
    # None = perturb.rwp.c_min where RWP trains, else LSC_THRESHOLD (1.7)
    lsc_threshold: Union[float, None] = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved tree; component options appear as subsections (``perturb: {rwp: {...}}``)."""
        tree = dataclasses.asdict(self)
        for values in tree.values():
            values.update(values.pop("options", {}))
        return tree


def stopped_early(cfg: Config, epoch: int, best_epoch: int) -> bool:
    """AT-ES (Rice et al.): after ``epoch`` epochs, ``run.patience`` of them without a better
    selection accuracy than at ``best_epoch``, before the schedule's end."""
    patience = cfg.run.patience
    return bool(patience) and epoch < cfg.schedule.epochs and epoch - best_epoch >= patience


def run_over(cfg: Config, epoch: int, best_epoch: int) -> bool:
    """Whether a run at ``epoch`` has nothing left to train: its last epoch, or stopped early."""
    return epoch >= cfg.schedule.epochs or stopped_early(cfg, epoch, best_epoch)


def non_identity_keys(cfg: Config | None = None) -> list[str]:
    """The ``section.key`` settings marked :data:`NOT_IDENTITY`: where or how a run executes,
    not what it computes (its seed, name, directory, device, progress output, extra checkpoints,
    dataset location)."""
    cfg = cfg or Config()
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg)
            for f in dataclasses.fields(getattr(cfg, s.name)) if not f.metadata.get("identity", True)]


def component_sections(cfg: Config | None = None) -> list[str]:
    """The sections whose ``name`` chooses a component, with its options under that name."""
    cfg = cfg or Config()
    return [s.name for s in dataclasses.fields(cfg) if hasattr(getattr(cfg, s.name), "options")]


def component_options(section: Any) -> dict[str, Any]:
    """The options the config gives the component ``section.name`` (a copy; may be empty)."""
    return dict(section.options.get(section.name, {}))


# --------------------------------------------------------------------------- loading


def resolve_preset(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a preset shipped with wpat."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise WpatError(f"config file not found: {path}")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        close = difflib.get_close_matches(name_or_path, list_presets(), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join([', '.join(close[:-1]), close[-1]] if len(close) > 1 else close)}? " \
            if close else ""
        raise WpatError(f"unknown preset {name_or_path!r}; {hint}`wpat presets` lists the "
                        f"{len(list_presets())} presets, or give a YAML file")
    return preset


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The flattened ``section.key -> value`` entries of a YAML config.

    A config may start with ``base: OTHER`` (a preset name or a path relative to it): its
    entries are read first and this file's entries override them, so a preset for CIFAR-100
    only states what differs from CIFAR-10.
    """
    if path.resolve() in seen:
        raise WpatError(f"{path}: 'base' entries form a cycle")
    tree = read_yaml_mapping(path, "YAML config", "expected a mapping of sections (data:, model:, ...)")
    flat: dict[str, Any] = {}
    base = tree.pop("base", None)
    if base is not None:
        relative = path.parent / str(base)
        base_path = relative if relative.is_file() else resolve_preset(str(base))
        flat.update(_read_yaml(base_path, seen + (path.resolve(),)))
        flat.pop("run.name", None)
    flat.update(flatten(tree, str(path)))
    return flat


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_description(name: str) -> str:
    """A preset's description: its first comment line (the lines after it say more)."""
    first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[:1]
    return first[0].lstrip("#").strip() if first and first[0].startswith("#") else ""


def load_config(source: Union[str, None] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Build a validated config from a preset name or YAML path plus ``key=value`` overrides."""
    cfg = Config()
    if source is not None:
        path = resolve_preset(source)
        for key, value in _read_yaml(path).items():
            set_key(cfg, key, value)
        if cfg.run.name is None:
            cfg.run.name = path.stem
    for item in overrides:
        if "=" not in item:
            raise WpatError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        set_key(cfg, key.strip(), value.strip())
    if cfg.run.name is None:
        cfg.run.name = "run"
    validate(cfg)
    check_effect(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a config from its resolved dump (as stored in checkpoints)."""
    cfg = Config()
    for key, value in flatten(tree, "checkpoint config").items():
        set_key(cfg, key, value)
    validate(cfg)
    return cfg


def dump_config(cfg: Config, path: Union[str, os.PathLike]) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
