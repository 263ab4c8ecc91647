"""Per-example losses an attack ascends, registered in ``ATTACK_LOSSES``.

Targets ``y`` are int64 labels ``[B]`` or, for batches mixed by mixup or CutMix
(``DeviceLoader(mix=...)``), float soft targets ``[B, C]``: rows of label probabilities.
``"ce"`` takes both, ``"kl"`` reads no labels, ``"cw"`` needs labels and refuses soft targets.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch.nn.functional as F
from torch import Tensor

from wpat.helpers.errors import WpatError
from wpat.helpers.registry import Registry

ATTACK_LOSSES = Registry("attack loss")


class AttackLoss(Protocol):
    """The contract of an attack loss: ``loss(logits_adv, y, logits_clean) -> Tensor[B]``.

    Its attribute ``needs_clean`` says whether it reads ``logits_clean`` (otherwise the attack
    passes None and skips the clean forward); ``soft_targets`` says whether ``y`` may be float
    soft targets ``[B, C]`` as well as int64 labels ``[B]``. Losses are computed in fp32 whatever
    the logits' dtype. Register a new one with
    ``@attack_loss("name", needs_clean=..., soft_targets=...)``.
    """

    needs_clean: bool
    soft_targets: bool

    def __call__(self, logits_adv: Tensor, y: Tensor, logits_clean: Tensor | None) -> Tensor: ...


def attack_loss(name: str, *, needs_clean: bool = False,
                soft_targets: bool = False) -> Callable[[Callable], AttackLoss]:
    """Register a per-example attack loss under ``name``."""

    def add(fn: Callable) -> AttackLoss:
        fn.needs_clean = needs_clean  # type: ignore[attr-defined]
        fn.soft_targets = soft_targets  # type: ignore[attr-defined]
        return ATTACK_LOSSES.register(name)(fn)

    return add


def is_soft(y: Tensor) -> bool:
    """Whether ``y`` is soft targets (a float ``[B, C]`` tensor) rather than int64 labels."""
    return y.is_floating_point()


def require_labels(y: Tensor, owner: str, why: str) -> None:
    """A one-line WpatError if ``y`` is soft targets: ``owner`` needs hard labels (``why``)."""
    if is_soft(y):
        raise WpatError(f"{owner} needs integer class labels ({why}); it is not defined for the "
                        f"soft targets {list(y.shape)} of mixup/CutMix (data.mix)")


def cross_entropy_per_example(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy in fp32, for labels or soft targets.

    With int64 labels ``y [B]``: CE(z, y) = −log softmax(z)_y, exactly
    ``F.cross_entropy(z, y, reduction="none")``. With float soft targets ``y [B, C]``
    (probabilities, rows summing to 1): CE(z, t) = −Σ_k t_k log softmax(z)_k, which for mixup's or
    CutMix's t = λ·onehot(y_a) + (1 − λ)·onehot(y_b) is λ·CE(z, y_a) + (1 − λ)·CE(z, y_b), Rice
    et al.'s ``mixup_criterion`` per example.
    """
    if is_soft(y):
        if y.shape != logits.shape:
            raise WpatError(f"soft targets must be [B, C] like the logits {list(logits.shape)}, "
                            f"got {y.dtype} {list(y.shape)}")
        return F.cross_entropy(logits.float(), y.float(), reduction="none")
    return F.cross_entropy(logits.float(), y, reduction="none")


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-example KL(p ‖ q) = Σ_k p_k (log p_k − log q_k), p and q the softmaxed logits.

    Gradients flow through both arguments. With p = clean and q = adversarial this is TRADES'
    KL; ``F.kl_div(..., reduction="sum") / B`` in the authors' code is its batch mean.
    """
    log_q = F.log_softmax(logits_q.float(), dim=1)
    p = F.softmax(logits_p.float(), dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(dim=1)


@attack_loss("ce", soft_targets=True)
def cross_entropy(logits_adv: Tensor, y: Tensor, logits_clean: Tensor | None = None) -> Tensor:
    """``"ce"``: the cross-entropy CE(z_adv, y) per example (Madry et al. 2018).

    ``y`` may be soft targets ``[B, C]`` (mixup/CutMix): the attack then ascends
    λ·CE(y_a) + (1 − λ)·CE(y_b), as Rice et al.'s ``attack_pgd(..., mixup=True)`` does
    (:func:`cross_entropy_per_example`).
    """
    return cross_entropy_per_example(logits_adv, y)


@attack_loss("cw")
def cw_margin(logits_adv: Tensor, y: Tensor, logits_clean: Tensor | None = None) -> Tensor:
    """``"cw"``: the Carlini & Wagner margin max_{k≠y} z_k − z_y per example.

    Carlini & Wagner 2017, the CW∞ attack of AWP/RWP Table 2: the negative of the usual margin
    loss with κ = 0 and without its clamp, so that *ascending* it drives the example to be
    misclassified. It needs integer labels: soft targets are refused.
    """
    require_labels(y, "the 'cw' attack loss", "its margin is taken against the true class")
    z = logits_adv.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    best_other = z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return best_other - true


@attack_loss("kl", needs_clean=True, soft_targets=True)
def kl_from_clean(logits_adv: Tensor, y: Tensor, logits_clean: Tensor | None) -> Tensor:
    """``"kl"``: TRADES' KL(f(x) ‖ f(x')) = Σ_k p_clean,k (log p_clean,k − log p_adv,k).

    Zhang et al. 2019; AWP paper eq. 16. The clean logits are computed once, without gradient,
    by the attack (``needs_clean``). It reads no labels, so ``y`` may be anything, soft targets
    included.
    """
    assert logits_clean is not None, "the 'kl' attack loss needs the clean logits"
    return kl_divergence(logits_clean, logits_adv)
