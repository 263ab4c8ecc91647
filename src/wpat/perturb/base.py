"""The weight-perturbation contract and the pieces every perturbation shares.

A perturbation looks at the model and the objective's per-example loss and returns a
:class:`Perturbation`: ``v``, a dict from ``model.named_parameters()`` names to the tensor to add,
with its statistics (docs/design.md, "One training step", step 4)::

    v = perturbation.compute(model, loss_fn).v  # loss_fn(model) -> per-example losses [B]
    with perturbed(model, v):                   # weights become w + v ...
        loss_fn(model).mean().backward()
        optimizer.step()                        # ... the step is taken at w + v ...
                                                # ... and v is subtracted on exit (AWP eq. 11)

``compute`` leaves the model exactly as it found it: parameters and ``.grad`` bitwise (``None``
stays ``None``), every buffer (BN running statistics, ``num_batches_tracked``) and every
module's train/eval flag. Only trainable parameters with more than one dimension -- conv and
linear weights -- are perturbed (docs/design.md, "Reference semantics"); BN affine parameters and
biases never are.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from wpat.helpers.errors import WpatError, check, check_choice, is_finite
from wpat.helpers.model_state import kept, weights_moved
from wpat.helpers.registry import Registry

# The authors' codes use this in the rescaling denominator; it makes a zero direction give v = 0.
EPS = 1e-20

LossFn = Callable[..., Tensor]
PERTURBATIONS = Registry("weight perturbation", none=True)  # perturb.name=none: no perturbation


@dataclass
class Perturbation:
    """What :meth:`WeightPerturbation.compute` returns.

    Attributes:
        v: the perturbation, keyed by ``model.named_parameters()`` names (perturbed tensors only).
        stats: 0-d tensors on the model's device, named as the training log names them (e.g.
            ``v_over_w``, ``perturb_steps``, ``rwp_frac_below``), so a training loop can keep
            them without a host sync and log every one at the end of the epoch.
        moved: False when the search never left w (``v`` is zero and no forward ran at w + v):
            the caller may then train on its own forward at w.
        ascent: a search's accumulated raw ascent ``D`` (``v`` is ``D`` rescaled), keyed like
            ``v``; handed back as ``compute(..., start=...)`` it continues the search (the
            alternations of the AWP paper's §4.2). None for a perturbation without a search.
    """

    v: dict[str, Tensor]
    stats: dict[str, Tensor] = field(default_factory=dict)
    moved: bool = True
    ascent: dict[str, Tensor] | None = None


class WeightPerturbation:
    """Base class of the weight perturbations: ``compute`` returns a :class:`Perturbation`.

    Every perturbation reports ``"v_over_w"`` (the global ratio ‖v‖/‖W‖ over the perturbed
    tensors) in its statistics. It keeps no state between calls except a private random stream.
    """

    def compute(self, model: nn.Module, loss_fn: LossFn, losses: Tensor | None = None,
                start: Perturbation | None = None) -> Perturbation:
        """The perturbation of ``model``'s current weights and its statistics.

        ``loss_fn(model)`` must return per-example losses (shape [B]) from a forward of
        ``model`` in its current mode. Only the names of ``perturbed_parameters(model)`` appear
        in ``v``. The model is left exactly as it was (module docstring). ``losses``, if given,
        are ``loss_fn(model)`` already computed at the current weights in train mode, with their
        graph: a search uses them as its first step instead of a forward of its own. ``start``, a
        previous result of this perturbation on the same weights, continues that search from its
        ``v`` and accumulated ascent (with a new ``loss_fn``); ``losses`` must then be None.
        """
        raise NotImplementedError


def perturbed_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a perturbation may change: trainable, more than 1-D.

    Frozen weights are left out: the authors' proxy step never moves them, so their ``v`` is 0.
    """
    chosen = [(n, p) for n, p in model.named_parameters() if p.dim() > 1 and p.requires_grad]
    if not chosen:
        raise WpatError(f"{type(model).__name__} has no trainable parameter with more than one "
                        "dimension (conv/linear weight) to perturb")
    return chosen


@torch.no_grad()
def add_perturbation(model: nn.Module, v: Mapping[str, Tensor], sign: float = 1.0) -> None:
    """Add ``sign * v`` in place to the named parameters of ``model``."""
    params = dict(model.named_parameters())
    for name, delta in v.items():
        params[name].add_(delta, alpha=sign)
    weights_moved()


@contextmanager
def perturbed(model: nn.Module, v: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Hold the weights at ``w + v`` inside the block, then subtract ``v``.

    Subtracting (rather than restoring a copy) is the point: an optimizer step taken inside the
    block is carried back to the unperturbed weights, ``w ← (w + v) − η∇ − v`` (AWP eq. 11,
    RWP Algorithm 1). ``v`` is subtracted even if the block raises.
    """
    add_perturbation(model, v, 1.0)
    try:
        yield model
    finally:
        add_perturbation(model, v, -1.0)


@contextmanager
def held_at(model: nn.Module, v: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Hold the weights at ``w + v`` inside the block, then put back ``w`` bitwise (a copy, not
    a subtraction): for work at ``w + v`` that must leave the weights exactly as they were, such
    as crafting the next alternation's adversarial examples."""
    params = dict(model.named_parameters())
    with kept(model, [params[name] for name in v]):
        add_perturbation(model, v, 1.0)
        yield model


def per_example(losses: Tensor) -> Tensor:
    """Check that ``loss_fn`` returned one loss per example (shape [B])."""
    if losses.dim() != 1:
        raise WpatError(f"loss_fn must return per-example losses of shape [B], "
                        f"got shape {tuple(losses.shape)}")
    return losses


SIZE_NORMS = {"l2": 2, "l1": 1}  # how a perturbation's size is measured (AWP §4.2, Fig. 2b)


def check_size(owner: str, gamma: float, norm: str = "l2") -> int:
    """Check a relative size ``gamma`` and its norm; returns the norm's order p."""
    check(is_finite(gamma) and gamma >= 0, f"{owner} gamma", gamma, "a finite number >= 0")
    check_choice(f"{owner} norm", norm, SIZE_NORMS)
    return SIZE_NORMS[norm]


def global_norm(tensors: Sequence[Tensor], p: int = 2) -> Tensor:
    """The p-norm of all ``tensors`` concatenated."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t, p) for t in tensors]), p)


def rescale_per_layer(d: Sequence[Tensor], w: Sequence[Tensor], gamma: float, p: int = 2) -> list[Tensor]:
    """``v_l = γ · ‖w_l‖_p / (‖d_l‖_p + ε) · d_l`` for each layer (AWP eq. 10, Appendix D)."""
    return [d_l * (gamma * torch.linalg.vector_norm(w_l, p) / (torch.linalg.vector_norm(d_l, p) + EPS))
            for d_l, w_l in zip(d, w)]


def rescale_global(d: Sequence[Tensor], w: Sequence[Tensor], gamma: float, p: int = 2) -> list[Tensor]:
    """``v = γ · ‖W‖_p / (‖D‖_p + ε) · D`` with norms over all layers concatenated (RWP Alg. 1)."""
    scale = gamma * global_norm(w, p) / (global_norm(d, p) + EPS)
    return [d_l * scale for d_l in d]


@torch.no_grad()
def move_to(params: Sequence[nn.Parameter], w: Sequence[Tensor], v: Sequence[Tensor]) -> None:
    """Set ``params`` to ``w + v`` in place (the search's current point)."""
    for p, w_p, v_p in zip(params, w, v):
        p.copy_(w_p).add_(v_p)
    weights_moved()
