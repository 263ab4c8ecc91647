"""The typed configuration tree: YAML presets, ``key=value`` overrides, validation, resolved dump.

A run is fully described by one :class:`Config`. It is read from a YAML preset, then patched by
command-line overrides such as ``perturb.gamma=0.005`` or ``attack.eps=8/255`` (fractions are
accepted wherever a number is, because the field writes ε as 8/255). Every value is checked
before any work starts; a bad one raises :class:`WpatError` naming the key, the value and what is
allowed. The resolved tree is written next to the run so it can be reproduced exactly.

Units: ``attack.eps`` and ``attack.alpha`` are in pixel units of inputs scaled to [0, 1];
``perturb.gamma`` is relative to the weight norm; learning rates are absolute; epochs are epochs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from wpat.errors import WpatError

PRESET_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: Union[str, None] = None  # a directory with the dataset's files; None searches the usual places
    download: bool = False
    batch_size: int = 128
    train_subset: int = 0  # use only this many (seeded) training examples; 0 = all
    test_subset: int = 0  # evaluate on this many test examples; 0 = all
    val_size: int = 0  # examples held out of train for validation-based checkpoint selection
    augment: Union[str, None] = None  # None = the dataset's default (crop_flip for CIFAR)


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    depth: Union[int, None] = None  # wide_resnet only
    widen: Union[int, None] = None  # wide_resnet only
    width: Union[int, None] = None  # small_cnn only: channels of the first block


@dataclass
class AttackConfig:
    """The training attack (PGD) and the threat model shared with evaluation."""

    norm: str = "linf"
    eps: float = 0.1  # radius of the threat model, pixel units in [0, 1]
    alpha: float = 0.01  # PGD step size, pixel units
    steps: int = 10
    random_start: bool = True
    bn_mode: Union[str, None] = None  # train | eval | None = the objective's default


@dataclass
class EvalConfig:
    """Per-epoch evaluation: natural and PGD accuracy on test and on a fixed train subset."""

    steps: int = 20
    alpha: Union[float, None] = None  # None = attack.alpha
    n_train: int = 1000  # training examples for train robust accuracy (fixed subset)
    batch_size: int = 500
    every: int = 1  # evaluate every N epochs (the last epoch is always evaluated)


@dataclass
class ObjectiveConfig:
    name: str = "at"
    beta: float = 6.0  # TRADES trade-off
    lam: float = 6.0  # MART regularisation weight


@dataclass
class PerturbConfig:
    name: str = "none"  # none | awp | rwp | random | awp-lsc
    gamma: float = 0.01  # ‖v‖ ≤ γ‖w‖ (per layer for AWP, global for RWP)
    c_min: float = 1.7  # RWP: perturb only on examples with loss < c_min (nats)
    steps: Union[int, None] = None  # RWP: K2 (default 10); AWP: ascent steps (default 1)
    warmup: int = 0  # epochs of plain training before the perturbation starts
    low: float = 0.0  # awp-lsc: loss range [low, high)
    high: float = math.inf
    subset: bool = False  # RWP: run the search only on the selected examples


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    name: str = "piecewise"  # piecewise | cosine | cyclic | linear | constant
    epochs: int = 200
    milestones: list = field(default_factory=lambda: [0.5, 0.75])  # fractions of the epochs
    decay: float = 0.1  # piecewise: multiply the lr by this at each milestone
    peak: float = 0.4  # cyclic: fraction of the epochs at which the lr peaks


@dataclass
class RunConfig:
    name: Union[str, None] = None  # default: the preset's file name
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int = 0  # CPU threads; 0 = leave torch's default
    select: str = "test"  # which PGD accuracy picks the "best" checkpoint: test | val
    progress: bool = True
    deterministic: bool = False
    amp: bool = False  # bf16 autocast for training forwards/backwards (GPU); deltas and eval stay fp32
    channels_last: bool = True  # NHWC weights: ~1.5x faster convolutions on CPU and GPU
    checkpoint_every: int = 0  # also write last.pt every N training steps; 0 = at epoch ends only
    keep_every: int = 0  # also keep epoch-NNN.pt every N epochs (for landscapes); 0 = none


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
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- parsing values


def parse_number(text: str) -> float:
    """Parse ``0.03``, ``8/255``, ``1e-3``, ``inf``; raise ValueError otherwise."""
    text = text.strip()
    if "/" in text:
        return float(Fraction(text))
    return float(text)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    if get_origin(annotation) is Union:
        options = [a for a in get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(value, options[0], key)
    expected = annotation if isinstance(annotation, type) else type(annotation)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError
            number = parse_number(str(value))
            if not number.is_integer():
                raise ValueError
            return int(number)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return parse_number(str(value))
        if annotation is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if annotation is list or get_origin(annotation) is list:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [parse_number(str(v)) for v in value]
    except (ValueError, ZeroDivisionError, OverflowError, TypeError, yaml.YAMLError):
        pass
    name = getattr(expected, "__name__", str(expected))
    raise WpatError(f"{key}: {value!r} is not a valid {name}")


def _section_fields(section: Any) -> dict[str, Any]:
    return get_type_hints(type(section))


def _set(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    sections = [f.name for f in dataclasses.fields(Config)]
    if len(parts) != 2 or parts[0] not in sections:
        raise WpatError(f"unknown config key {key!r}; sections: {', '.join(sections)} (use section.key=value)")
    section = getattr(cfg, parts[0])
    hints = _section_fields(section)
    if parts[1] not in hints:
        raise WpatError(f"unknown config key {key!r}; valid keys in {parts[0]}: {', '.join(hints)}")
    setattr(section, parts[1], _coerce(value, hints[parts[1]], key))


def _flatten(tree: Any, where: str) -> dict[str, Any]:
    if not isinstance(tree, dict):
        raise WpatError(f"{where}: expected a mapping of sections (data:, model:, ...), got {type(tree).__name__}")
    flat = {}
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise WpatError(f"{where}: section {section!r} must be a mapping of key: value")
        for k, v in values.items():
            flat[f"{section}.{k}"] = v
    return flat


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
        raise WpatError(f"unknown preset {name_or_path!r}; presets: {', '.join(list_presets())}")
    return preset


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The flattened ``section.key -> value`` entries of a YAML config.

    A config may start with ``base: OTHER`` (a preset name or a path relative to it): its
    entries are read first and this file's entries override them, so a preset for CIFAR-100
    only states what differs from CIFAR-10.
    """
    if path.resolve() in seen:
        raise WpatError(f"{path}: 'base' entries form a cycle")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise WpatError(f"{path}: not a readable YAML config ({err.__class__.__name__})") from None
    if not isinstance(tree, dict):
        raise WpatError(f"{path}: expected a mapping of sections (data:, model:, ...)")
    tree = dict(tree)
    flat: dict[str, Any] = {}
    base = tree.pop("base", None)
    if base is not None:
        relative = path.parent / str(base)
        base_path = relative if relative.is_file() else resolve_preset(str(base))
        flat.update(_read_yaml(base_path, seen + (path.resolve(),)))
        flat.pop("run.name", None)
    flat.update(_flatten(tree, str(path)))
    return flat


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(source: Union[str, None] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Build a validated config from a preset name or YAML path plus ``key=value`` overrides."""
    cfg = Config()
    if source is not None:
        path = resolve_preset(source)
        for key, value in _read_yaml(path).items():
            _set(cfg, key, value)
        if cfg.run.name is None:
            cfg.run.name = path.stem
    for item in overrides:
        if "=" not in item:
            raise WpatError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), value.strip())
    if cfg.run.name is None:
        cfg.run.name = "run"
    validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a config from its resolved dump (as stored in checkpoints)."""
    cfg = Config()
    for key, value in _flatten(tree, "checkpoint config").items():
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def dump_config(cfg: Config, path: Union[str, os.PathLike]) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise WpatError(f"{key}: {value!r} is invalid; expected {allowed}")


def _choice(key: str, value: Any, choices: list[str]) -> None:
    _check(value in choices, key, value, f"one of {', '.join(choices)}")


def _finite(x: float) -> bool:
    return math.isfinite(x)


def validate(cfg: Config) -> None:
    """Check every value; names come from the registries so new components are accepted."""
    # Imported here: the registries import torch-heavy modules that config users may not need.
    from wpat.data import DATASETS
    from wpat.models import MODELS
    from wpat.objectives import OBJECTIVES
    from wpat.perturb import PERTURBATIONS
    from wpat.schedules import SCHEDULES

    d, m, a, e, o, p, s, r = (cfg.data, cfg.model, cfg.attack, cfg.eval, cfg.objective,
                              cfg.perturb, cfg.schedule, cfg.run)
    _choice("data.name", d.name, DATASETS.names())
    _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer ≥ 1")
    for key in ("train_subset", "test_subset", "val_size"):
        _check(getattr(d, key) >= 0, f"data.{key}", getattr(d, key), "an integer ≥ 0 (0 = all / none)")
    if d.augment is not None:
        from wpat.data import AUGMENTATIONS

        _choice("data.augment", d.augment, AUGMENTATIONS.names())
    _choice("model.name", m.name, MODELS.names())
    _choice("attack.norm", a.norm, ["linf", "l2"])
    _check(_finite(a.eps) and a.eps > 0, "attack.eps", a.eps, "a number > 0 (pixel units, e.g. 8/255)")
    _check(_finite(a.alpha) and a.alpha > 0, "attack.alpha", a.alpha, "a number > 0 (pixel units, e.g. 2/255)")
    _check(a.steps >= 1, "attack.steps", a.steps, "an integer ≥ 1")
    if a.bn_mode is not None:
        _choice("attack.bn_mode", a.bn_mode, ["train", "eval"])
    _check(e.steps >= 1, "eval.steps", e.steps, "an integer ≥ 1")
    if e.alpha is not None:
        _check(_finite(e.alpha) and e.alpha > 0, "eval.alpha", e.alpha, "a number > 0")
    _check(e.n_train >= 0, "eval.n_train", e.n_train, "an integer ≥ 0")
    _check(e.batch_size >= 1, "eval.batch_size", e.batch_size, "an integer ≥ 1")
    _check(e.every >= 1, "eval.every", e.every, "an integer ≥ 1")
    _choice("objective.name", o.name, OBJECTIVES.names())
    _check(_finite(o.beta) and o.beta >= 0, "objective.beta", o.beta, "a number ≥ 0")
    _check(_finite(o.lam) and o.lam >= 0, "objective.lam", o.lam, "a number ≥ 0")
    _choice("perturb.name", p.name, ["none", *PERTURBATIONS.names()])
    _check(_finite(p.gamma) and p.gamma >= 0, "perturb.gamma", p.gamma, "a number ≥ 0")
    _check(not math.isnan(p.c_min) and p.c_min >= 0, "perturb.c_min", p.c_min, "a number ≥ 0 (nats; inf allowed)")
    _check(p.steps is None or p.steps >= 1, "perturb.steps", p.steps, "an integer ≥ 1")
    _check(p.warmup >= 0, "perturb.warmup", p.warmup, "an integer ≥ 0 (epochs)")
    _check(not math.isnan(p.low) and p.low >= 0, "perturb.low", p.low, "a number ≥ 0")
    _check(not math.isnan(p.high) and p.high > p.low, "perturb.high", p.high, f"a number > perturb.low ({p.low})")
    _check(_finite(cfg.optim.lr) and cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "a number > 0")
    _check(_finite(cfg.optim.momentum) and 0 <= cfg.optim.momentum < 1, "optim.momentum", cfg.optim.momentum, "a number in [0, 1)")
    _check(_finite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0, "optim.weight_decay", cfg.optim.weight_decay, "a number ≥ 0")
    _choice("schedule.name", s.name, SCHEDULES.names())
    _check(s.epochs >= 1, "schedule.epochs", s.epochs, "an integer ≥ 1")
    _check(all(0 < f < 1 for f in s.milestones) and list(s.milestones) == sorted(s.milestones),
           "schedule.milestones", s.milestones, "increasing fractions of the epochs in (0, 1)")
    _check(_finite(s.decay) and 0 < s.decay <= 1, "schedule.decay", s.decay, "a number in (0, 1]")
    _check(_finite(s.peak) and 0 < s.peak < 1, "schedule.peak", s.peak, "a fraction in (0, 1)")
    _check(r.seed >= 0, "run.seed", r.seed, "an integer ≥ 0")
    _check(r.threads >= 0, "run.threads", r.threads, "an integer ≥ 0 (0 = torch's default)")
    _check(r.checkpoint_every >= 0, "run.checkpoint_every", r.checkpoint_every, "an integer ≥ 0 (steps; 0 = epoch ends)")
    _check(r.keep_every >= 0, "run.keep_every", r.keep_every, "an integer ≥ 0 (epochs; 0 = none)")
    _choice("run.select", r.select, ["test", "val"])
    if r.select == "val":
        _check(d.val_size > 0, "run.select", r.select, "'test' unless data.val_size > 0")
    _check(bool(r.name) and "/" not in r.name and r.name not in (".", ".."), "run.name", r.name,
           "a non-empty name without '/'")
