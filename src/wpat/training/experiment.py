"""Build the parts of an experiment from a :class:`~wpat.configuration.config.Config`.

Training, evaluation and the analysis commands all need the same model, data, threat model and
components for a config; they are built here once so they never drift apart. Each component is
built by its registry from the options under its own name (``perturb.rwp.*`` for RWP), so a
value reaches only the component it names and an option a component does not have is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from wpat.attacks import ATTACKS, PGD
from wpat.training.batching import check_extra_data
from wpat.configuration.config import LSC_THRESHOLD, Config, component_options
from wpat.data import AUGMENTATIONS, DATASETS, MIXES, dataset_spec, load_dataset, split_validation
from wpat.helpers.errors import WpatError, check_choice
from wpat.models import MODELS, Normalize, normalized
from wpat.objectives import OBJECTIVES, Objective
from wpat.perturb import PERTURBATIONS, MaskedAscent, WeightPerturbation
from wpat.helpers.registry import Selection
from wpat.optim.schedules import SCHEDULES, Schedule
from wpat.training.supply import check_needs
from wpat.helpers.threat import BNMode, ThreatModel


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise WpatError(f"run.device: {name!r} is not a device; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WpatError(f"run.device: {name!r} requested but CUDA is not available on this machine")
    return device


# ---------------------------------------------------------------------- components


def check_data_names(cfg: Config) -> None:
    """``data.name``, ``data.augment`` and ``data.mix`` each name a registered entry."""
    check_choice("data.name", cfg.data.name, DATASETS.names())
    if cfg.data.augment is not None:
        check_choice("data.augment", cfg.data.augment, AUGMENTATIONS.names())
    check_choice("data.mix", cfg.data.mix, MIXES.names())


def num_classes_of(cfg: Config) -> int:
    """The number of classes the model predicts: the dataset's, or ``len(data.classes)``."""
    check_choice("data.name", cfg.data.name, DATASETS.names())
    spec = dataset_spec(cfg.data.name)
    if cfg.data.classes is None:
        return spec.num_classes
    if max(cfg.data.classes) >= spec.num_classes:
        raise WpatError(f"data.classes: {cfg.data.classes} names a class {spec.name} does not have "
                        f"(0..{spec.num_classes - 1})")
    return len(cfg.data.classes)


def model_from_config(cfg: Config) -> nn.Module:
    """The config's architecture for its dataset, normalizing inside with ``model.mean/std``
    (default: the dataset's statistics)."""
    num_classes = num_classes_of(cfg)  # checks data.name first
    spec = dataset_spec(cfg.data.name)
    mean = cfg.model.mean if cfg.model.mean is not None else spec.mean
    std = cfg.model.std if cfg.model.std is not None else spec.std
    if len(mean) != spec.shape[0]:
        raise WpatError(f"model.mean/std: {len(mean)} values for the {spec.shape[0]} channels of {spec.name}")
    normalize = Normalize(mean, std, spec.shape[0])
    return normalized(MODELS.build_from(cfg.model, "model", num_classes=num_classes, in_channels=spec.shape[0]),
                      normalize)


def objective_from_config(cfg: Config, name: str | None = None) -> Objective:
    """The objective ``name`` (default ``objective.name``) with its options ``objective.<name>.*``.
    One that needs ``objectives`` (a wrapper) is given the function that builds the objective
    it wraps the same way (a plain one: wrappers do not nest)."""
    section = cfg.objective if name is None else Selection(name, cfg.objective.options)
    supplied = {}
    if section.name in OBJECTIVES and "objectives" in OBJECTIVES.get(section.name).needs:
        def objectives(base: str) -> Objective:
            plain = [n for n in OBJECTIVES if "objectives" not in OBJECTIVES.get(n).needs]
            check_choice("base", base, plain)
            return objective_from_config(cfg, base)
        supplied["objectives"] = objectives
    objective = OBJECTIVES.build_from(section, "objective", **supplied)
    if cfg.data.mix != "none" and not objective.soft_targets:
        raise WpatError(f"data.mix: {cfg.data.mix} gives mixed (soft) targets, which objective "
                        f"{section.name!r} does not define (it needs each example's one true class)")
    return objective


def perturbation_from_config(cfg: Config) -> WeightPerturbation | None:
    """The configured weight perturbation, or None for ``perturb.name=none``."""
    perturbation = PERTURBATIONS.build_from(cfg.perturb, "perturb")
    if cfg.perturb.alternations > 1 and not isinstance(perturbation, MaskedAscent):
        searched = [n for n in PERTURBATIONS if issubclass(PERTURBATIONS.get(n), MaskedAscent)]
        raise WpatError(f"perturb.alternations: {cfg.perturb.alternations} needs a searched perturbation "
                        f"({', '.join(searched)}); {cfg.perturb.name!r} does not look at x'")
    return perturbation


def schedule_from_config(cfg: Config) -> Schedule:
    return SCHEDULES.build_from(cfg.schedule, "schedule", epochs=cfg.schedule.epochs)


def lsc_threshold(cfg: Config) -> float:
    """The loss threshold of the logged fraction below it (``lsc_frac_below``): ``run.lsc_threshold``,
    by default RWP's ``c_min`` where RWP trains (so the statistic counts the examples RWP
    perturbs) and :data:`~wpat.configuration.config.LSC_THRESHOLD` otherwise."""
    if cfg.run.lsc_threshold is not None:
        return cfg.run.lsc_threshold
    if cfg.perturb.name == "rwp":
        return float({**PERTURBATIONS.defaults("rwp"), **component_options(cfg.perturb)}["c_min"])
    return LSC_THRESHOLD


def threat_model(cfg: Config) -> ThreatModel:
    """The threat model of training: ``attack.norm``, ``attack.eps``, ``attack.alpha``."""
    return ThreatModel(cfg.attack.norm, cfg.attack.eps, cfg.attack.alpha)


def eval_threat(cfg: Config) -> ThreatModel:
    """The same ball, searched with the evaluation step ``eval.alpha`` (default ``attack.alpha``)."""
    return ThreatModel(cfg.attack.norm, cfg.attack.eps, cfg.eval.alpha or cfg.attack.alpha)


def pgd(threat: ThreatModel, steps: int, key: str, **options: Any) -> PGD:
    """PGD-``steps`` in ``threat``'s ball with its step size, built by ``ATTACKS``; eval-mode BN
    unless ``options`` say otherwise (``key`` names the setting in errors)."""
    options = {"bn_mode": BNMode.EVAL, **options}
    return ATTACKS.build_from(Selection("pgd"), key, **threat.as_dict(), steps=steps, **options)


def train_attack(cfg: Config, objective: Objective) -> PGD:
    """PGD-K with ``objective``'s attack loss, random start and BN mode (docs/design.md,
    "One training step"); with ``attack.script_forwards`` a mixup step counts twice in the BN
    running statistics, as the AT scripts' attack."""
    return pgd(threat_model(cfg), cfg.attack.steps, "attack", random_start=cfg.attack.random_start,
               init=objective.attack_init, loss=objective.attack_loss,
               bn_mode=cfg.attack.bn_mode or objective.attack_bn_mode,
               mixup_forwards=2 if cfg.attack.script_forwards else 1)


def eval_attack(cfg: Config, steps: int | None = None) -> PGD:
    """The test attack: PGD-20 on cross-entropy with random start, eval-mode BN."""
    return pgd(eval_threat(cfg), steps or cfg.eval.steps, "eval")


@dataclass
class Components:
    """Everything a training run is built from, except the data."""

    model: nn.Module
    objective: Objective
    perturbation: WeightPerturbation | None
    schedule: Schedule
    attack: PGD
    test_attack: PGD


def build_components(cfg: Config) -> Components:
    """Build (and so check) every component of ``cfg``: names, options and values, each with a
    one-line error naming the config key, before any data is read."""
    check_data_names(cfg)
    check_extra_data(cfg)
    objective = objective_from_config(cfg)
    check_needs(cfg, objective)
    return Components(model=model_from_config(cfg), objective=objective,
                      perturbation=perturbation_from_config(cfg), schedule=schedule_from_config(cfg),
                      attack=train_attack(cfg, objective), test_attack=eval_attack(cfg))


class _NoRandomFill(TorchFunctionMode):
    """Drawing random values into a ``meta`` tensor stores nothing, yet torch computes it with
    its Python reference implementation (milliseconds a call, hundreds of calls for a Wide
    ResNet's initialisation): skip those draws."""

    DRAWS = {torch.Tensor.normal_, torch.Tensor.uniform_}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self.DRAWS and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def check_components(cfg: Config) -> None:
    """Everything :func:`build_components` checks, with the model's tensors on the ``meta``
    device: shapes without memory or initialisation, so checking a sweep of large networks
    costs milliseconds per run rather than seconds."""
    with torch.device("meta"), _NoRandomFill():
        build_components(cfg)


# ---------------------------------------------------------------------- data


@dataclass
class Splits:
    """uint8 images and int64 labels of each split, on the CPU."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def fixed_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded subset of n examples (all of them when n is 0 or too large)."""
    if n <= 0 or n >= len(x):
        return x, y
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[index], y[index]


def select_classes(x: torch.Tensor, y: torch.Tensor, classes: list | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples of ``classes`` only, labelled by their position in the list (0..k-1)."""
    if classes is None:
        return x, y
    wanted = torch.tensor([int(c) for c in classes])
    keep = (y[:, None] == wanted[None, :])
    index = keep.any(1)
    return x[index], keep[index].float().argmax(1)


def load_splits(cfg: Config) -> Splits:
    d = cfg.data
    check_choice("data.name", d.name, DATASETS.names())
    x_train, y_train = select_classes(*load_dataset(d.name, "train", root=d.root, download=d.download), d.classes)
    x_test, y_test = select_classes(*load_dataset(d.name, "test", root=d.root, download=d.download), d.classes)
    x_train, y_train = fixed_subset(x_train, y_train, d.train_subset, cfg.run.seed)
    x_test, y_test = fixed_subset(x_test, y_test, d.test_subset, cfg.run.seed)
    x_train, y_train, x_val, y_val = split_validation(x_train, y_train, d.val_size, cfg.run.seed)
    if d.batch_size > len(x_train):
        raise WpatError(f"data.batch_size: {d.batch_size} is larger than the {len(x_train)} training examples")
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test)
