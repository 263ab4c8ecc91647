"""Gradient-masking checks: signs that a robustness evaluation overestimates robustness.

A model that masks or obfuscates its gradients looks robust to gradient attacks without being
so (Athalye, Carlini, Wagner, ICML 2018; Carlini et al., *On Evaluating Adversarial
Robustness*, 2019, §5). Each check below returns warnings as one-line strings, which the
evaluation prints and stores in ``eval.json``:

- :func:`ordering_warnings`: stronger attacks must not leave more accuracy than weaker ones,
  AA ≤ PGD-100 ≤ PGD-20 ≤ FGSM ≤ natural, up to sampling noise on the N examples.
- :func:`large_eps_accuracy`: PGD with a radius that reaches the uniform mid-gray image from any
  input (L∞ ε = 0.5; L2 ε = 0.5·√d) must bring the accuracy to about 0.
- zero gradients (:func:`input_gradient_norms`): examples whose input gradient of the
  cross-entropy is exactly zero (e.g. a saturated softmax) give gradient attacks nothing to follow.
- :func:`autoattack_checks`: the checks of AutoAttack's own code (``pyautoattack.checks``): a
  randomized model (two forwards of the same input in eval mode differ), outputs that are
  probabilities instead of logits, a forward that calls autograd, and the zero-gradient count.

:func:`model_checks` runs the checks that attack or probe one model; :func:`masking_checks`
adds the ordering of its accuracies. ``wpat eval`` keeps the two apart, because its ordering
check runs on every result ``eval.json`` holds, also those of earlier evaluations.
"""

from __future__ import annotations

import logging
import math
from itertools import combinations
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from pyautoattack import checks
from torch import Tensor, nn

from wpat.training.experiment import pgd
from wpat.measurements.metrics import accuracy
from wpat.helpers.model_state import kept
from wpat.helpers.threat import ThreatModel

# Weakest to strongest; an attack later in the chain should not leave more accuracy.
ORDER = ("natural", "fgsm", "pgd20", "pgd100", "aa")
NOISE_STD = 2.0  # tolerance of the ordering check, in binomial standard deviations
LARGE_EPS_STEPS = 20
LARGE_EPS_MAX_ACCURACY = 0.02  # above this under the large-ε PGD, warn


def ordering_warnings(accuracies: Mapping[str, float], n: int,
                      labels: Mapping[str, str] | None = None) -> list[str]:
    """Warn where an attack later in :data:`ORDER` leaves more accuracy than an earlier one by
    more than ``NOISE_STD`` binomial standard deviations sqrt(p(1 − p) / n) (at least one
    example), p the weaker attack's accuracy on the same ``n`` examples."""
    labels = labels or {}
    present = [name for name in ORDER if name in accuracies]
    found = []
    for weaker, stronger in combinations(present, 2):
        p, q = accuracies[weaker], accuracies[stronger]
        tolerance = max(NOISE_STD * math.sqrt(p * (1 - p) / n), 1 / n)
        if q > p + tolerance:
            found.append(
                f"{labels.get(stronger, stronger)} accuracy {100 * q:.2f}% exceeds "
                f"{labels.get(weaker, weaker)} accuracy {100 * p:.2f}% by more than the sampling "
                f"noise ({100 * tolerance:.2f}%): the stronger attack is failing, a sign of "
                f"gradient masking")
    return found


def large_eps(norm: str, x: Tensor) -> float:
    """A radius that reaches the uniform mid-gray image from any x in [0, 1]^d."""
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(x[0].numel())


def large_eps_accuracy(model: nn.Module, x: Tensor, y: Tensor, norm: str,
                       batch_size: int = 500) -> dict[str, float]:
    """Accuracy under PGD-20 (random start, step 2.5·ε/20) at :func:`large_eps`."""
    eps = large_eps(norm, x)
    attack = pgd(ThreatModel(norm, eps, 2.5 * eps / LARGE_EPS_STEPS), LARGE_EPS_STEPS, "large-eps check")
    return {"eps": eps, "steps": LARGE_EPS_STEPS, "accuracy": accuracy(model, x, y, attack, batch_size)}


def input_gradient_norms(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> Tensor:
    """Per-example L1 norm of the input gradient of the cross-entropy, in eval mode."""
    norms = []
    with kept(model, train=False):
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xb).float(), y[start:start + batch_size], reduction="sum")
                (grad,) = torch.autograd.grad(loss, xb)
            norms.append(grad.flatten(1).abs().sum(1))
    return torch.cat(norms)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def autoattack_checks(model: nn.Module, x: Tensor, y: Tensor, grad_norms: Tensor) -> dict[str, Any]:
    """Run ``pyautoattack.checks`` on one batch ``(x, y)`` and on the per-example input-gradient
    norms of all examples; returns its warnings and whether the model looked randomized."""
    # pyautoattack reports through a logger; this one collects its lines instead of printing.
    handler = _Collect()
    logger = logging.getLogger("wpat.evaluation.masking.autoattack")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        with kept(model, train=False):
            checks.check_randomized(model, x, y, bs=len(x), logger=logger)
            randomized = bool(handler.messages)
            checks.check_range_output(model, x, logger=logger)
            checks.check_dynamic(model, x, False, logger=logger)
            # It only looks at each row's absolute sum, so the norms stand for the gradients.
            checks.check_zero_gradients(grad_norms[:, None], logger=logger)
    finally:
        logger.removeHandler(handler)
    return {"randomized": randomized, "warnings": [f"AutoAttack check: {m}" for m in handler.messages]}


def model_checks(model: nn.Module, x: Tensor, y: Tensor, norm: str,
                 batch_size: int = 500) -> dict[str, Any]:
    """The checks that probe the model itself on ``(x, y)``: the large-ε PGD, the zero input
    gradients and AutoAttack's own checks. Returns the measurements and a list of ``warnings``."""
    warnings = []
    large = large_eps_accuracy(model, x, y, norm, batch_size)
    if large["accuracy"] > LARGE_EPS_MAX_ACCURACY:
        warnings.append(
            f"accuracy {100 * large['accuracy']:.2f}% under PGD-{LARGE_EPS_STEPS} at "
            f"{norm} eps={large['eps']:.3g}, a radius that reaches a uniform gray image, should be "
            f"about 0: the attack cannot follow the gradients (masking)")
    norms = input_gradient_norms(model, x, y, batch_size)
    aa = autoattack_checks(model, x[:batch_size], y[:batch_size], norms)
    return {"large_eps": large, "zero_gradient_fraction": (norms == 0).float().mean().item(),
            "randomized": aa["randomized"], "warnings": warnings + aa["warnings"]}


def masking_checks(model: nn.Module, x: Tensor, y: Tensor, accuracies: Mapping[str, float], norm: str,
                   batch_size: int = 500, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """All checks on one model; ``accuracies`` maps attack names (see :data:`ORDER`) to accuracies
    measured on ``(x, y)``. Returns the measurements and a list of ``warnings``."""
    found = model_checks(model, x, y, norm, batch_size)
    return {**found, "warnings": ordering_warnings(accuracies, len(x), labels) + found["warnings"]}
