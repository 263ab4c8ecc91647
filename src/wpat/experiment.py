"""Build the parts of an experiment from a :class:`~wpat.config.Config`.

Training, evaluation and the analysis commands all need the same model, data and threat model
for a config; they are built here once so the three never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wpat.attacks import PGD
from wpat.config import Config
from wpat.data import dataset_spec, load_dataset, split_validation
from wpat.errors import WpatError
from wpat.models import build_model
from wpat.objectives import OBJECTIVES
from wpat.perturb import PERTURBATIONS, WeightPerturbation


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


def model_from_config(cfg: Config) -> nn.Module:
    spec = dataset_spec(cfg.data.name)
    extra = {k: v for k in ("depth", "widen", "width") if (v := getattr(cfg.model, k)) is not None}
    return build_model(cfg.model.name, num_classes=spec.num_classes, in_channels=spec.shape[0],
                       mean=spec.mean, std=spec.std, **extra)


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


def load_splits(cfg: Config) -> Splits:
    d = cfg.data
    x_train, y_train = load_dataset(d.name, "train", root=d.root, download=d.download)
    x_test, y_test = load_dataset(d.name, "test", root=d.root, download=d.download)
    x_train, y_train = fixed_subset(x_train, y_train, d.train_subset, cfg.run.seed)
    x_test, y_test = fixed_subset(x_test, y_test, d.test_subset, cfg.run.seed)
    x_train, y_train, x_val, y_val = split_validation(x_train, y_train, d.val_size, cfg.run.seed)
    if d.batch_size > len(x_train):
        raise WpatError(f"data.batch_size: {d.batch_size} is larger than the {len(x_train)} training examples")
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test)


def train_attack(cfg: Config, objective) -> PGD:
    """PGD-K with ``objective``'s attack loss, random start and BN mode (DESIGN.md §2)."""
    a = cfg.attack
    return PGD(a.eps, a.alpha, a.steps, norm=a.norm, random_start=a.random_start,
               init=objective.attack_init, loss=objective.attack_loss,
               bn_mode=a.bn_mode or objective.attack_bn_mode)


def eval_attack(cfg: Config, steps: int | None = None) -> PGD:
    """The test attack: PGD-20 on cross-entropy with random start, eval-mode BN."""
    a = cfg.attack
    return PGD(a.eps, cfg.eval.alpha or a.alpha, steps or cfg.eval.steps, norm=a.norm,
               random_start=True, loss="ce", bn_mode="eval")


def objective_from_config(cfg: Config):
    return OBJECTIVES.build_from(cfg.objective.name, vars(cfg.objective))


def perturbation_from_config(cfg: Config) -> WeightPerturbation | None:
    """The configured weight perturbation, or None for ``perturb.name=none``."""
    if cfg.perturb.name == "none":
        return None
    return PERTURBATIONS.build_from(cfg.perturb.name, vars(cfg.perturb))
