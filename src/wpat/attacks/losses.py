"""Per-example losses an attack ascends, registered in ``ATTACK_LOSSES``."""

from __future__ import annotations

from typing import Callable, Protocol

import torch.nn.functional as F
from torch import Tensor

from wpat.registry import Registry

ATTACK_LOSSES = Registry("attack loss")


class AttackLoss(Protocol):
    """The contract of an attack loss: ``loss(logits_adv, y, logits_clean) -> Tensor[B]``.

    Its attribute ``needs_clean`` says whether it reads ``logits_clean`` (otherwise the attack
    passes None and skips the clean forward). Losses are computed in fp32 whatever the logits'
    dtype. Register a new one with ``@attack_loss("name", needs_clean=...)``.
    """

    needs_clean: bool

    def __call__(self, logits_adv: Tensor, y: Tensor, logits_clean: Tensor | None) -> Tensor: ...


def attack_loss(name: str, *, needs_clean: bool = False) -> Callable[[Callable], AttackLoss]:
    """Register a per-example attack loss under ``name``."""

    def add(fn: Callable) -> AttackLoss:
        fn.needs_clean = needs_clean  # type: ignore[attr-defined]
        return ATTACK_LOSSES.register(name)(fn)

    return add


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-example KL(p ‖ q) = Σ_k p_k (log p_k − log q_k), p and q the softmaxed logits.

    Gradients flow through both arguments. With p = clean and q = adversarial this is TRADES'
    KL; ``F.kl_div(..., reduction="sum") / B`` in the authors' code is its batch mean.
    """
    log_q = F.log_softmax(logits_q.float(), dim=1)
    p = F.softmax(logits_p.float(), dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(dim=1)


@attack_loss("ce")
def cross_entropy(logits_adv: Tensor, y: Tensor, logits_clean: Tensor | None = None) -> Tensor:
    """``"ce"``: the cross-entropy CE(z_adv, y) per example (Madry et al. 2018)."""
    return F.cross_entropy(logits_adv.float(), y, reduction="none")


@attack_loss("cw")
def cw_margin(logits_adv: Tensor, y: Tensor, logits_clean: Tensor | None = None) -> Tensor:
    """``"cw"``: the Carlini & Wagner margin max_{k≠y} z_k − z_y per example.

    Carlini & Wagner 2017, the CW∞ attack of AWP/RWP Table 2: the negative of the usual margin
    loss with κ = 0 and without its clamp, so that *ascending* it drives the example to be
    misclassified.
    """
    z = logits_adv.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    best_other = z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return best_other - true


@attack_loss("kl", needs_clean=True)
def kl_from_clean(logits_adv: Tensor, y: Tensor, logits_clean: Tensor | None) -> Tensor:
    """``"kl"``: TRADES' KL(f(x) ‖ f(x')) = Σ_k p_clean,k (log p_clean,k − log p_adv,k).

    Zhang et al. 2019; AWP paper eq. 16. The clean logits are computed once, without gradient,
    by the attack (``needs_clean``).
    """
    assert logits_clean is not None, "the 'kl' attack loss needs the clean logits"
    return kl_divergence(logits_clean, logits_adv)
