"""What a training run records about itself: per-epoch statistics and the metrics files.

:class:`EpochStats` accumulates the training statistics of one epoch on the device (no host
synchronisation per step): the mean training loss, the RWP paper's loss-stationary histogram and
fraction below ``c_min``, and every statistic the weight perturbation reports (each logged under
its own name, averaged over the steps that reported it). :func:`write_metrics` writes
``metrics.jsonl`` and ``metrics.csv``; :class:`EventLog` writes the same numbers as TensorBoard
event files into the run directory (``tensorboard --logdir`` over a sweep compares runs while
they train); :func:`format_epoch` is the per-epoch line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from wpat.helpers import distributed
from wpat.helpers.fs import write_text_atomic
from wpat.measurements.metrics import LSC_EDGES, lsc_histogram, lsc_inner_edges


class EpochStats:
    """Per-epoch training statistics, accumulated on ``device``.

    Args:
        device: where the sums live.
        c_min: the loss threshold whose fraction below is logged (``lsc_frac_below``).
    """

    def __init__(self, device: torch.device, c_min: float) -> None:
        self.c_min = c_min
        self.loss_sum = torch.zeros((), device=device)
        self.below = torch.zeros((), device=device)
        self.lsc_hist = torch.zeros(len(LSC_EDGES) - 1, device=device)
        self.lsc_inner = lsc_inner_edges(LSC_EDGES, device)
        self.count = 0
        self.perturb: dict[str, list[Tensor]] = {}
        self.seconds = 0.0  # training time of the epoch before a mid-epoch checkpoint

    def add(self, losses: Tensor, stats: Mapping[str, Tensor] | None) -> None:
        losses = losses.detach()
        self.loss_sum += losses.sum()
        self.below += (losses < self.c_min).sum()
        self.count += len(losses)
        self.lsc_hist += lsc_histogram(losses, inner=self.lsc_inner)
        for name, value in (stats or {}).items():
            self.perturb.setdefault(name, []).append(torch.as_tensor(value, dtype=torch.float32))

    def totals(self) -> tuple[Tensor, Tensor, Tensor, int]:
        """Loss sum, count below c_min, LSC histogram and example count over all ranks."""
        loss_sum, below, hist = (distributed.total(t) for t in (self.loss_sum, self.below, self.lsc_hist))
        count = int(distributed.total(torch.tensor(self.count, device=self.loss_sum.device)))
        return loss_sum, below, hist, count

    def state(self) -> dict[str, Any]:
        """The partial sums (over all ranks), for a checkpoint taken in the middle of an epoch."""
        loss_sum, below, hist, count = self.totals()
        return {"loss_sum": loss_sum, "below": below, "count": count, "lsc_hist": hist,
                "seconds": self.seconds, "perturb": {k: torch.stack(v) for k, v in self.perturb.items()}}

    def load_state(self, state: Mapping[str, Any], sums: bool = True) -> None:
        """Continue from ``state``; with ``sums=False`` (every rank but the first under torchrun)
        the example sums start at zero, since the stored ones are already totals."""
        if sums:
            self.loss_sum, self.below, self.lsc_hist = state["loss_sum"], state["below"], state["lsc_hist"]
            self.count = state["count"]
        self.seconds = state["seconds"]
        self.perturb = {k: list(v.unbind()) for k, v in state["perturb"].items()}

    def summary(self) -> dict[str, Any]:
        """One host sync per epoch: the means of everything accumulated (over all ranks)."""
        loss_sum, below, hist, count = self.totals()
        n = max(count, 1)
        record = {
            "train_loss": (loss_sum / n).item(),
            # the RWP paper's statistic: training adversarial losses (at w + v) below c_min
            "lsc_frac_below": (below / n).item(),
            "lsc_hist": hist.cpu().tolist(),
        }
        record.update({k: torch.stack(v).mean().item() for k, v in self.perturb.items()})
        return record


def format_epoch(r: Mapping[str, Any]) -> str:
    """The per-epoch line: loss, accuracies, the perturbation's statistics, throughput."""
    text = f"epoch {r['epoch']:>3}  lr {r['lr']:.4g}  loss {r['train_loss']:.3f}"
    if "test_pgd_acc" in r:
        text += (f"  test nat {100 * r['test_nat_acc']:.2f}  pgd {100 * r['test_pgd_acc']:.2f}"
                 f"  train pgd {100 * r['train_pgd_acc']:.2f}  gap {100 * r['robust_gap']:.2f}")
    if r.get("perturb_active"):
        if "perturb_steps" in r:
            text += f"  steps {r['perturb_steps']:.2f}"
        if "v_over_w" in r:
            text += f"  |v|/|w| {r['v_over_w']:.4f}"
    return text + f"  {r['images_per_s']:.0f} img/s"


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl and metrics.csv, rewritten whole (atomically) from the run's history so a
    resumed run never carries rows of epochs it is about to redo."""
    lines = "".join(json.dumps(r) + "\n" for r in history)
    write_text_atomic(run_dir / "metrics.jsonl", lines)
    columns: list[str] = []
    for r in history:
        columns += [k for k in r if k not in columns and k != "lsc_hist"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run_dir / "metrics.csv", table.getvalue())


class EventLog:
    """TensorBoard scalars of every numeric entry of each epoch's record, at step = epoch.

    Args:
        run_dir: where the event files go (the run directory).
        first_epoch: the first epoch this writer logs; events of later epochs already in the
            directory (a resumed run that redoes them) are dropped by TensorBoard's purge.
    """

    def __init__(self, run_dir: Path, first_epoch: int = 1) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when logging

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=first_epoch if first_epoch > 1 else None)

    def add(self, record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
