"""What every input attack shares: the ``ATTACKS`` registry, :class:`Attack`, the L∞/L2 balls."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from wpat.helpers.model_state import kept
from wpat.helpers.registry import Registry
from wpat.helpers.threat import BNMode, Norm

ATTACKS = Registry("attack")


def parse_bn_mode(bn_mode: BNMode | str | None, key: str = "bn_mode") -> BNMode | None:
    """``bn_mode`` as a :class:`BNMode`; None stays None ("leave the caller's mode")."""
    return None if bn_mode is None else BNMode.parse(bn_mode, key)


@contextmanager
def crafting_mode(model: nn.Module, bn_mode: BNMode | str | None) -> Iterator[None]:
    """Put ``model`` in ``bn_mode`` for the duration; restore every module's own flag after.

    ``bn_mode`` is ``BNMode.TRAIN``, ``BNMode.EVAL`` (or their strings) or None, which leaves
    the mode as the caller set it. Flags are restored per module, not with
    ``model.train(was_training)``, so a model whose submodules were deliberately in mixed modes
    comes back exactly as it was.
    """
    mode = parse_bn_mode(bn_mode)
    with kept(model, train=None if mode is None else mode is BNMode.TRAIN):
        yield


class Attack:
    """Base class of every input attack: ``attack(model, x, y) -> x_adv``.

    ``x`` is a float batch in [0, 1] (normalization lives inside the model), ``y`` its labels;
    ``x_adv`` is detached, lies in [0, 1] and in the ε-ball around ``x``. Attacks differentiate
    with respect to the input only (``torch.autograd.grad``), so the weights' ``.grad`` is never
    filled, and they work on whatever device ``x`` and the model are on.

    Args:
        bn_mode: the mode the *whole model* is put in while crafting (BatchNorm, and dropout if
            any): ``BNMode.TRAIN`` / ``"train"``, ``BNMode.EVAL`` / ``"eval"``, or None
            (default) to leave the mode as the caller set it. Every module's own flag is
            restored afterwards. In train mode the forwards of the attack update the BN running
            statistics, exactly as the authors' AT code does.

    Subclasses implement ``perturb(model, x, y)``; it runs with gradients enabled (so attacks
    also work inside a caller's ``torch.no_grad()``) and ``x`` already detached.
    """

    def __init__(self, *, bn_mode: BNMode | str | None = None) -> None:
        self.bn_mode = parse_bn_mode(bn_mode, f"{type(self).__name__} bn_mode")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with crafting_mode(model, self.bn_mode), torch.enable_grad():
            x_adv = self.perturb(model, x.detach(), y)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError


def _per_example_norm(t: Tensor) -> Tensor:
    """L2 norm of each example, shaped to broadcast against ``t`` ([B, 1, 1, 1] for NCHW)."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


class Ball:
    """The geometry of one threat model; every method works in place on a batch ``delta``."""

    def sample_(self, delta: Tensor, eps: float) -> Tensor:
        """Fill ``delta`` with a random point of the ε-ball."""
        raise NotImplementedError

    def ascend_(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        """Take a steepest-ascent step of length ``alpha`` (in this norm) along ``grad``."""
        raise NotImplementedError

    def project_(self, delta: Tensor, eps: float) -> Tensor:
        """Bring each example of ``delta`` back into the ε-ball."""
        raise NotImplementedError


class LinfBall(Ball):
    """L∞ ball: steepest ascent is the gradient's sign; projection is a coordinate-wise clamp."""

    def sample_(self, delta: Tensor, eps: float) -> Tensor:
        return delta.uniform_(-eps, eps)

    def ascend_(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        return delta.add_(grad.sign(), alpha=alpha)

    def project_(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp_(-eps, eps)


class L2Ball(Ball):
    """L2 ball: steepest ascent is the gradient over its per-example L2 norm; projection rescales
    each example whose norm exceeds ε back onto the sphere (``renorm``)."""

    def sample_(self, delta: Tensor, eps: float) -> Tensor:
        # A Gaussian direction with a radius drawn uniformly in [0, ε] (uniform in radius, not in
        # volume: in high dimension a volume-uniform point lies almost on the sphere), as in
        # Rice et al.'s code that the AWP authors build on.
        delta.normal_()
        radius = delta.new_empty(len(delta)).uniform_(0, eps).view(-1, *([1] * (delta.dim() - 1)))
        return delta.mul_(radius / _per_example_norm(delta).clamp_min_(1e-12))

    def ascend_(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        # The clamp keeps a zero gradient a zero step instead of NaN.
        return delta.add_(grad / _per_example_norm(grad).clamp_min_(1e-12), alpha=alpha)

    def project_(self, delta: Tensor, eps: float) -> Tensor:
        return delta.renorm_(p=2, dim=0, maxnorm=eps)


# The balls are stateless, so one instance of each serves every attack.
BALLS: dict[Norm, Ball] = {Norm.LINF: LinfBall(), Norm.L2: L2Ball()}


def ball(norm: Norm | str, key: str = "norm") -> Ball:
    """The ball of ``norm`` (``Norm.LINF``/``"linf"`` or ``Norm.L2``/``"l2"``); a bad value is a
    one-line WpatError naming ``key`` and the valid norms."""
    return BALLS[Norm.parse(norm, key)]
