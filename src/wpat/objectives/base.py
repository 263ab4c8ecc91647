"""The objective contract (:class:`Objective`) and the ``OBJECTIVES`` registry."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from wpat.registry import Registry
from wpat.threat import BNMode

OBJECTIVES = Registry("objective")


class Objective:
    """The outer loss of adversarial training (AWP paper eq. 1-3), given per example::

        objective.per_example(model, x, x_adv, y) -> Tensor[B]

    ``y`` is int64 labels ``[B]`` or, for batches mixed by mixup or CutMix
    (``DeviceLoader(mix=...)``), float soft targets ``[B, C]``; an objective whose class
    attribute ``soft_targets`` is False refuses the latter with a one-line WpatError.

    It is differentiable, runs the model in whatever mode the caller set (the training loop and
    the weight perturbations choose it), and knows nothing about weight perturbation: a
    perturbation receives ``lambda m: objective.per_example(m, x, x_adv, y)`` and may mask
    examples by it.

    Class attributes tell the training loop how the authors craft this method's training attack:

    - ``attack_loss``: the ``ATTACK_LOSSES`` name PGD ascends (``"ce"`` or ``"kl"``);
    - ``attack_init``: PGD's random start (``"uniform"`` or ``"normal"``);
    - ``attack_bn_mode``: the model's mode while crafting (``BNMode.TRAIN`` or ``BNMode.EVAL``).

    and ``soft_targets`` (default True) says whether the objective is defined for mixed (soft)
    targets, so that a configuration combining it with mixup/CutMix can be refused before
    training starts. ``single_adversarial_forward`` (default False) says that ``per_example``
    runs exactly one forward, of ``x_adv``: in train mode it then updates the BatchNorm running
    statistics as the AT scripts' forward scoring ``x_adv`` does, which the training step uses
    in place of that forward (``wpat.step.train_step``'s ``score_forward``).

    Subclasses set the three ``attack_*`` attributes and implement ``per_example``.
    """

    attack_loss: ClassVar[str]
    attack_init: ClassVar[str]
    attack_bn_mode: ClassVar[BNMode]
    soft_targets: ClassVar[bool] = True
    single_adversarial_forward: ClassVar[bool] = False

    def per_example(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError
