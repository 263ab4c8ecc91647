"""Weight regularization as in Rice et al.'s code, the AWP paper's Table 4 baselines.

Both penalties act on the conv and linear weights only (parameters with more than one
dimension), never on BatchNorm parameters or biases, as the authors' scripts select them
(``'bn' not in name and 'bias' not in name``):

- L2 (λ, AWP paper: 5e-3) replaces the optimizer's weight decay: the conv/linear weights decay
  with λ and every other parameter with 0, the two parameter groups of the scripts' ``--l2``.
  The scripts set the learning rate of the first group only (``opt.param_groups[0]``), so
  with ``--l2`` BatchNorm parameters and biases keep the initial rate for the whole run;
  :func:`scheduled_groups` with ``"first"`` does the same, ``"all"`` schedules every group.
- L1 (λ, AWP paper: 5e-6) adds λ · Σ|w| to the mean training loss, at the weights the loss is
  taken at (``w + v`` under a weight perturbation, as the scripts add it after perturbing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def regularized_weights(model: nn.Module) -> list[nn.Parameter]:
    """The conv and linear weights: trainable parameters with more than one dimension."""
    return [p for p in model.parameters() if p.dim() > 1 and p.requires_grad]


def parameter_groups(model: nn.Module, weight_decay: float, l2: float) -> list[dict[str, Any]]:
    """SGD parameter groups: with ``l2 > 0`` the conv/linear weights decay with ``l2`` and the
    rest with 0 (the scripts' ``--l2``); otherwise one group decaying with ``weight_decay``."""
    if l2 <= 0:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    chosen = {id(p) for p in regularized_weights(model)}
    return [{"params": [p for p in model.parameters() if id(p) in chosen], "weight_decay": l2},
            {"params": [p for p in model.parameters() if id(p) not in chosen], "weight_decay": 0.0}]


def l1_penalty(model: nn.Module, l1: float) -> Tensor | float:
    """λ · Σ|w| over the conv/linear weights (0 when λ is 0)."""
    if l1 <= 0:
        return 0.0
    return l1 * torch.stack([p.abs().sum() for p in regularized_weights(model)]).sum()


def scheduled_groups(optimizer: torch.optim.Optimizer, lr_groups: str) -> list[dict[str, Any]]:
    """The parameter groups whose learning rate follows the schedule: ``"all"``, or ``"first"``
    only, as the authors' scripts update ``opt.param_groups[0]`` alone (with ``--l2`` the second
    group, BatchNorm parameters and biases, stays at the initial rate). With one group the two
    are the same."""
    return optimizer.param_groups[:1] if lr_groups == "first" else list(optimizer.param_groups)
