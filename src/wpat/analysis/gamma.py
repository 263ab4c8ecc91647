"""Adversarial loss of a trained model under AWP and random weight perturbations of growing size
(Wu, Xia, Wang, NeurIPS 2020, §5.3, Fig. 3a).

For each relative size γ (dimensionless: ‖v_l‖ = γ‖w_l‖ per layer, as both perturbations scale)::

    AWP:     v = PERTURBATIONS.build("awp", gamma=γ).compute(model, ℓ)   ℓ on x' crafted at w
    random:  v = PERTURBATIONS.build("random", gamma=γ, seed=s).compute(model, ℓ)
    ρ(w + v) = (1/n) Σ_i CE(f_{w+v}(x''_i), y_i),   x'' = PGD against f_{w+v} itself

The AWP direction is the gradient of the mean cross-entropy on the adversarial examples x' of
the unperturbed model (one batch of all n examples, eval-mode BatchNorm), as AWP looks at the
examples crafted at w; the loss at w + v is then measured like the weight loss landscape
(``wpat.analysis.landscape``): PGD crafted afresh against the perturbed model, eval mode, the
torch RNG re-seeded with ``seed`` before every point so all points share the PGD random starts.
A random direction is drawn once per seed and scaled to each γ, so the random curve follows
one line in weight space; ``directions`` > 1 averages several (mean and sample std). γ = 0 is
the unperturbed model itself for both. The weights are restored bitwise after every point.

The paper finds the AWP loss far above the random one at the same γ (AWP at γ = 5e-3 exceeds a
random perturbation's at γ up to ~1), which is why AWP works at small γ and random
perturbations need large ones.

Cost: per γ, one forward+backward of the n examples (AWP) and 1 + ``directions`` PGD runs.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wpat.analysis.landscape import adversarial_losses
from wpat.measurements.metrics import Attack, attacked_logits
from wpat.helpers.model_state import kept
from wpat.perturb import PERTURBATIONS, held_at
from wpat.helpers.tables import write_csv

# The paper's range, 1e-4 ... 2, on a 1-2-5 log grid, with γ = 0 (the unperturbed model).
DEFAULT_GAMMAS = (0.0, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 2.0)


def crafted_examples(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, *,
                     batch_size: int = 500, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``attack``'s examples against eval-mode ``model`` (float in [0, 1]) and their labels, on
    the model's device; the torch RNG is seeded with ``seed`` inside a fork."""
    device = next(model.parameters()).device
    crafted, labels = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        def recording(m: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
            crafted.append(attack(m, xb, yb))
            return crafted[-1]

        for _, yb in attacked_logits(model, x, y, recording, batch_size, device):
            labels.append(yb)
    return torch.cat(crafted), torch.cat(labels)


def perturbation(kind: str, gamma: float, model: nn.Module, x_adv: Tensor, y: Tensor,
                 seed: int = 0) -> dict[str, Tensor]:
    """The ``kind`` (``"awp"`` or ``"random"``) perturbation v of size γ of ``model`` at its
    current weights, AWP's from the cross-entropy on ``x_adv`` in eval mode."""
    options = {"seed": seed} if kind == "random" else {}
    search = PERTURBATIONS.build(kind, gamma=gamma, **options)
    with kept(model, train=False):
        return search.compute(model, lambda m, index=None: F.cross_entropy(m(x_adv), y, reduction="none")).v


def _loss_at(model: nn.Module, v: dict[str, Tensor], x: Tensor, y: Tensor, attack: Attack,
             batch_size: int, seed: int) -> tuple[float, float]:
    """Mean adversarial loss and accuracy of the model held at w + v."""
    with held_at(model, v):
        losses, correct = adversarial_losses(model, x, y, attack, batch_size=batch_size, seed=seed)
    return losses.mean().item(), correct.float().mean().item()


def gamma_sensitivity(model: nn.Module, x: Tensor, y: Tensor, attack: Attack,
                      gammas: Sequence[float] = DEFAULT_GAMMAS, *, directions: int = 1,
                      batch_size: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """One row per γ: ``awp_loss``, ``awp_acc``, ``random_loss`` (mean over ``directions``
    seeds ``seed``, ``seed + 1``, ...), ``random_loss_std`` (NaN for one), ``random_acc``.

    x, y: examples (uint8 0..255 or float in [0, 1]); attack: e.g.
    ``wpat.analysis.analysis_attack(cfg)``, PGD on CE in the training threat model."""
    x_adv, y_dev = crafted_examples(model, x, y, attack, batch_size=batch_size, seed=seed)
    center = _loss_at(model, {}, x, y, attack, batch_size, seed)
    rows = []
    for gamma in gammas:
        if gamma == 0:
            awp, random = center, [center] * directions
        else:
            awp = _loss_at(model, perturbation("awp", gamma, model, x_adv, y_dev), x, y, attack,
                           batch_size, seed)
            random = [_loss_at(model, perturbation("random", gamma, model, x_adv, y_dev, seed + d),
                               x, y, attack, batch_size, seed) for d in range(directions)]
        losses = [r[0] for r in random]
        rows.append({"gamma": float(gamma), "awp_loss": awp[0], "awp_acc": awp[1],
                     "random_loss": statistics.fmean(losses),
                     "random_loss_std": statistics.stdev(losses) if directions > 1 else float("nan"),
                     "random_acc": statistics.fmean(r[1] for r in random)})
    return rows


def plot_gamma_sensitivity(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Adversarial loss and accuracy (%) against γ (log axis; γ = 0 as a dotted line), AWP and
    random; the CSV of ``rows`` beside the PNG."""
    from matplotlib.figure import Figure  # matplotlib only when plotting

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    shown = [r for r in rows if r["gamma"] > 0]
    center = next((r for r in rows if r["gamma"] == 0), None)
    gammas = [r["gamma"] for r in shown]
    for ax, metric, scale, name in ((axes[0], "loss", 1, "adversarial loss"),
                                    (axes[1], "acc", 100, "adversarial accuracy (%)")):
        ax.set_xlabel("γ (relative size ‖v_l‖ / ‖w_l‖)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        for kind, color in (("awp", "C3"), ("random", "C0")):
            ax.plot(gammas, [scale * r[f"{kind}_{metric}"] for r in shown], "-o", color=color,
                    label="AWP" if kind == "awp" else "random")
        if center is not None:
            ax.axhline(scale * center[f"awp_{metric}"], color="gray", ls=":", label="unperturbed (γ = 0)")
        ax.set_xscale("log")
    spread = [r["random_loss_std"] for r in shown]
    if shown and not any(math.isnan(s) for s in spread):  # several random directions: ± std
        mean = [r["random_loss"] for r in shown]
        axes[0].fill_between(gammas, [m - s for m, s in zip(mean, spread)],
                             [m + s for m, s in zip(mean, spread)], color="C0", alpha=0.2)
    losses = [r[f"{kind}_loss"] for r in shown for kind in ("awp", "random")]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        axes[0].set_yscale("log")  # AWP's loss explodes at large γ (AWP Fig. 3a)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    write_csv(rows, path.with_suffix(".csv"))
    return path
