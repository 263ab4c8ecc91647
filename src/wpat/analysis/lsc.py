"""Loss Stationary Condition groups through training (Yu et al., IJCAI 2022, §3 eq. 7, Fig. 1c).

LSC[p, q) is the group of training adversarial examples whose loss ℓ(f_w(x'), y) lies in
[p, q). Following the bins of RWP's Fig. 1c, the losses are counted in ``wpat.measurements.metrics.LSC_EDGES``
by ``wpat.measurements.metrics.lsc_histogram``, as the training log counts them: [0, 0.5), [0.5, 1), ...,
[4.5, 5), [5, ∞) (nats). With them goes the fraction below ``c_min``, the examples RWP perturbs
on (1.7 for CIFAR-10/SVHN, 4.0 for CIFAR-100).

Two sources:

- the training log: ``lsc_hist`` and ``lsc_frac_below`` of ``metrics.jsonl``, measured on every
  training batch at w + v in train mode (what the weights were actually trained on);
- a recomputation from checkpoints (:func:`lsc_from_losses` of
  ``landscape.adversarial_losses``): PGD with the training attack's ε, step size and steps on
  CE, at the checkpoint's weights w, eval-mode BN, no augmentation. It is meant for runs whose log
  lacks the histogram; its values are close to, not equal to, the log's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from torch import Tensor

from wpat.helpers.errors import WpatError
from wpat.measurements.metrics import LSC_EDGES, lsc_histogram


@dataclass
class LSCTable:
    """Per epoch: counts of training adversarial losses in each LSC bin, fraction below c_min."""

    epochs: list[int]
    counts: np.ndarray  # [epochs, bins]
    frac_below: list[float]
    c_min: float
    edges: Sequence[float] = LSC_EDGES
    source: str = "log"  # "log" or "recomputed"

    def bin_labels(self) -> list[str]:
        return [f"[{lo:g},{hi:g})" for lo, hi in zip(self.edges[:-1], self.edges[1:])]

    def rows(self) -> list[dict[str, Any]]:
        """One CSV row per epoch."""
        return [{"epoch": e, "source": self.source, "frac_below_c_min": f,
                 **dict(zip(self.bin_labels(), map(int, c)))}
                for e, f, c in zip(self.epochs, self.frac_below, self.counts)]


def lsc_table(history: Iterable[dict[str, Any]], c_min: float) -> LSCTable:
    """The LSC histogram of each logged epoch that has one (``lsc_hist`` in metrics.jsonl)."""
    rows = [r for r in history if r.get("lsc_hist")]
    if not rows:
        raise WpatError("the training log has no lsc_hist; "
                        "recompute it from the checkpoints with `wpat lsc --recompute`")
    return LSCTable(epochs=[int(r["epoch"]) for r in rows],
                    counts=np.array([r["lsc_hist"] for r in rows], dtype=float),
                    frac_below=[float(r.get("lsc_frac_below", float("nan"))) for r in rows],
                    c_min=c_min)


def lsc_from_losses(losses_by_epoch: Mapping[int, Tensor], c_min: float) -> LSCTable:
    """The LSC table of per-example adversarial losses recomputed at each epoch's checkpoint."""
    epochs = sorted(losses_by_epoch)
    return LSCTable(epochs=epochs,
                    counts=np.array([lsc_histogram(losses_by_epoch[e]).tolist() for e in epochs]),
                    frac_below=[(losses_by_epoch[e] < c_min).float().mean().item() for e in epochs],
                    c_min=c_min, source="recomputed")
