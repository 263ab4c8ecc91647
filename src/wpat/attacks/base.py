"""What every input attack shares: the ``ATTACKS`` registry, the :class:`Attack` base class, the
explicit BatchNorm mode while crafting, and the geometry of the L∞ and L2 threat models.

An attack is a callable ``attack(model, x, y) -> x_adv``. ``x`` is a float batch in [0, 1]
(normalization lives inside the model), ``y`` its labels; ``x_adv`` is detached, lies in [0, 1]
and in the ε-ball around ``x``. Attacks differentiate with respect to the input only
(``torch.autograd.grad``), so the weights' ``.grad`` is never filled, and they work on whatever
device ``x`` and the model are on.

``bn_mode`` ("train", "eval" or None) is the mode the *whole model* is put in while crafting
(BatchNorm, and dropout if any); None leaves the mode as the caller set it. Every module's own
flag is restored afterwards. In "train" mode the forwards of the attack update the BN running
statistics, exactly as the authors' AT code does.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from wpat.errors import WpatError
from wpat.registry import Registry

ATTACKS = Registry("attack")
NORMS = Registry("norm")
BN_MODES = ("train", "eval", None)


def build_attack(name: str, **kwargs: Any) -> "Attack":
    """The attack registered as ``name`` ("fgsm", "pgd", "cw"...) built with ``kwargs``."""
    return ATTACKS.build(name, **kwargs)


def require_positive(owner: str, key: str, value: float) -> None:
    # `not value > 0` also rejects NaN.
    if not value > 0:
        raise WpatError(f"{owner}: {key} must be a number > 0 (pixel units), got {value!r}")


def require_count(owner: str, key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WpatError(f"{owner}: {key} must be an integer >= 1, got {value!r}")


@contextmanager
def crafting_mode(model: nn.Module, bn_mode: str | None) -> Iterator[None]:
    """Put ``model`` in ``bn_mode`` for the duration; restore every module's own flag after.

    Flags are restored per module, not with ``model.train(was_training)``, so a model whose
    submodules were deliberately in mixed modes comes back exactly as it was.
    """
    flags = [(module, module.training) for module in model.modules()]
    if bn_mode is not None:
        model.train(bn_mode == "train")
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


class Attack:
    """Base class: validates ``bn_mode`` and wraps :meth:`perturb` in the crafting mode.

    Subclasses implement ``perturb(model, x, y)``; it runs with gradients enabled (so attacks
    also work inside a caller's ``torch.no_grad()``) and ``x`` already detached.
    """

    def __init__(self, *, bn_mode: str | None = None) -> None:
        if bn_mode not in BN_MODES:
            raise WpatError(
                f"{type(self).__name__}: bn_mode must be 'train', 'eval' or None, got {bn_mode!r}"
            )
        self.bn_mode = bn_mode

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


@NORMS.register("linf")
class LinfBall(Ball):
    """L∞ ball: steepest ascent is the gradient's sign; projection is a coordinate-wise clamp."""

    def sample_(self, delta: Tensor, eps: float) -> Tensor:
        return delta.uniform_(-eps, eps)

    def ascend_(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        return delta.add_(grad.sign(), alpha=alpha)

    def project_(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp_(-eps, eps)


@NORMS.register("l2")
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
