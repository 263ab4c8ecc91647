"""The objective contract (:class:`Objective`, :class:`Batch`, :class:`Wrapper`) and the
``OBJECTIVES`` registry."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Mapping

from torch import Tensor, nn

from wpat.helpers.registry import Registry
from wpat.helpers.threat import BNMode

OBJECTIVES = Registry("objective")

# What an objective may declare in ``needs``, and how the assembly supplies each (docs/design.md,
# "One training step", "What an objective may need").
NEEDS = ("objectives", "average", "teachers", "views")


@dataclass(frozen=True)
class Supplies:
    """The models the assembly hands an objective that needs them; every one is in eval mode,
    frozen (no gradients) and on the training device. The objective must not train them or
    change their mode.

    Attributes:
        average: the run's weight average (``run.ema``), updated after every optimizer step.
        teachers: the models of the checkpoints the objective names in ``teachers``, in order.
    """

    average: nn.Module | None = None
    teachers: tuple[nn.Module, ...] = ()


@dataclass(frozen=True)
class Batch:
    """What an objective reads for one training step.

    Attributes:
        x: the clean batch ``[B, C, H, W]`` in [0, 1].
        y: int64 labels ``[B]``, or float soft targets ``[B, K]`` of a mixed batch.
        x_adv: the training attack's adversarial examples of ``x`` (set by the step).
        views: further augmented views of the same images (``needs`` "views": one second view,
            drawn independently from the same augmentation, sharing ``y``).
        views_adv: their adversarial examples, crafted in the same attack call as ``x_adv``.
        supplies: the models the objective needs (:class:`Supplies`).
        context: per-example tensors (first dimension B) that ``Objective.prepare`` computed
            once for this ``x_adv``, e.g. a teacher's logits on it.
    """

    x: Tensor
    y: Tensor
    x_adv: Tensor | None = None
    views: tuple[Tensor, ...] = ()
    views_adv: tuple[Tensor, ...] = ()
    supplies: Supplies = Supplies()
    context: Mapping[str, Tensor] = field(default_factory=dict)

    def select(self, index: Tensor) -> Batch:
        """The examples ``index`` of every per-example tensor (RWP's ``subset`` search)."""
        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]
        return replace(self, x=self.x[index], y=self.y[index], x_adv=take(self.x_adv),
                       views=tuple(v[index] for v in self.views),
                       views_adv=tuple(v[index] for v in self.views_adv),
                       context={k: v[index] for k, v in self.context.items()})


class Objective:
    """The outer loss of adversarial training (AWP paper eq. 1-3), given per example::

        objective.per_example(model, batch) -> Tensor[B]

    with ``batch`` a :class:`Batch` (``batch.x``, ``batch.x_adv``, ``batch.y``, ...). ``y`` is
    int64 labels ``[B]`` or, for batches mixed by mixup or CutMix (``DeviceLoader(mix=...)``),
    float soft targets ``[B, C]``; an objective whose class attribute ``soft_targets`` is False
    refuses the latter with a one-line WpatError.

    ``per_example`` is differentiable, runs the model in whatever mode the caller set (the
    training step and the weight perturbations choose it), and knows nothing about weight
    perturbation: a perturbation receives ``loss_fn(m) = objective.per_example(m, batch)`` and
    may mask examples by it, and sees nothing else of the objective.

    The step calls, in order (docs/design.md, "One training step"):

    1. ``prepare(batch) -> Batch`` once for every ``x_adv`` the attack crafts: per-example
       values that do not depend on the trained model (a teacher's or the average's logits on
       ``x_adv``) go into ``batch.context`` here, so the search's repeated ``loss_fn`` calls
       do not recompute them. It sees no trained model. Default: the batch as it is.
    2. ``per_example(model, batch)``: in the search and at ``w + v``.
    3. ``descent_losses(losses) -> Tensor[B]`` on the losses at ``w + v``: the per-example
       losses the optimizer minimises (a transform of the loss values, e.g. scaling by the loss
       value). The weight perturbation never sees it, and the logged losses are those before
       it. Default: the losses as they are.

    **Needs.** The class attribute ``needs`` names what the objective gets from the assembly,
    which reads it before any data is read; the training loop never knows which objective runs:

    - ``"objectives"``: the constructor receives the keyword ``objectives``, a function
      ``objectives(name) -> Objective`` that builds the objective ``name`` with its options from
      the config (``objective.<name>.*``); :class:`Wrapper` uses it to build the objective it
      wraps.
    - ``"average"``: ``batch.supplies.average`` is the run's weight average (``run.ema`` must
      be on).
    - ``"teachers"``: ``batch.supplies.teachers`` are the models of the checkpoint files the
      objective names in its attribute ``teachers`` (a sequence of paths, usually its option of
      that name), loaded with their own configs.
    - ``"views"``: ``batch.views`` holds one second augmented view of the images and
      ``batch.views_adv`` its adversarial example (not with ``data.mix`` or extra data).

    Class attributes tell the step how the authors craft this method's training attack:
    ``attack_loss`` (the ``ATTACK_LOSSES`` name PGD ascends, ``"ce"`` or ``"kl"``),
    ``attack_init`` (PGD's random start, ``"uniform"`` or ``"normal"``) and ``attack_bn_mode``
    (the model's mode while crafting, ``BNMode.TRAIN`` or ``BNMode.EVAL``); ``soft_targets``
    (default True) says whether the objective is defined for mixed (soft) targets, so that a
    configuration combining it with mixup/CutMix is refused before training starts.
    ``single_adversarial_forward`` (default False) says that ``per_example`` runs exactly one
    forward, of ``x_adv``: in train mode it then updates the BatchNorm running statistics as the
    AT scripts' forward scoring ``x_adv`` does, which the training step uses in place of that
    forward (``wpat.training.step.train_step``'s ``score_forward``).

    Subclasses set the three ``attack_*`` attributes and implement ``per_example``.
    """

    attack_loss: str
    attack_init: str
    attack_bn_mode: BNMode
    soft_targets: bool = True
    single_adversarial_forward: bool = False
    needs: ClassVar[tuple[str, ...]] = ()

    def prepare(self, batch: Batch) -> Batch:
        return batch

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        raise NotImplementedError

    def descent_losses(self, losses: Tensor) -> Tensor:
        return losses

    def requirements(self) -> tuple[str, ...]:
        """Everything this objective needs at run time: its ``needs``, and those of any
        objective it wraps."""
        return self.needs


class Wrapper(Objective):
    """An objective built around another one, ``base``, named by its option ``base`` and built
    with that objective's own options (``objective.<base>.*``). By default it is the base: the
    same attack, soft-target support, BatchNorm forwards, needs and every hook; a subclass
    overrides the hooks it changes (loss scaling by the loss value overrides
    ``descent_losses``). A wrapper wraps a plain objective, not another wrapper.

    Args:
        objectives: supplied by the assembly (``needs`` "objectives").
        base: the name of the wrapped objective (default ``at``).
    """

    needs = ("objectives",)

    def __init__(self, objectives: Callable[[str], Objective], base: str = "at") -> None:
        self.base = objectives(base)
        self.attack_loss = self.base.attack_loss
        self.attack_init = self.base.attack_init
        self.attack_bn_mode = self.base.attack_bn_mode
        self.soft_targets = self.base.soft_targets
        # a subclass whose per_example runs other forwards than the base's sets it False
        self.single_adversarial_forward = self.base.single_adversarial_forward

    def requirements(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.needs, *self.base.requirements())))

    @property
    def teachers(self) -> tuple[str, ...]:
        return tuple(getattr(self.base, "teachers", ()))

    def prepare(self, batch: Batch) -> Batch:
        return self.base.prepare(batch)

    def per_example(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.base.per_example(model, batch)

    def descent_losses(self, losses: Tensor) -> Tensor:
        return self.base.descent_losses(losses)
