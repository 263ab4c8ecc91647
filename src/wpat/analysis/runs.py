"""Reading run directories for the analyses: histories, checkpoints, examples, weights.

A run directory written by ``wpat train`` (:class:`wpat.checkpoints.run_dir.RunDir`) holds ``config.yaml``,
``metrics.jsonl`` (one JSON object per epoch) and the checkpoints ``best.pt``, ``last.pt`` and,
with ``run.keep_every=N``, ``epoch-NNN.pt``. The learning curves (AWP Fig. 1a, RWP Fig. 2c) are the evaluated epochs'
accuracies; the weight histograms (AWP Fig. 4) read a checkpoint's conv/linear weights; the
landscape and LSC recomputation evaluate checkpoints on a seeded subset of the run's data
(:func:`examples`) with the run's training threat model (:func:`analysis_attack`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from torch import Tensor, nn

from wpat.training import experiment
from wpat.attacks import PGD
from wpat.checkpoints.files import is_wpat_checkpoint, load_checkpoint
from wpat.configuration.config import Config
from wpat.helpers.errors import WpatError
from wpat.perturb import perturbed_parameters
from wpat.checkpoints.run_dir import RunDir

# The per-epoch accuracies of a learning curve (fractions in [0, 1]), as train.py logs them.
CURVE_KEYS = ("test_pgd_acc", "train_pgd_acc", "robust_gap", "test_nat_acc", "train_nat_acc")

PathLike = str | os.PathLike


def run_label(path: PathLike) -> str:
    """A short method name for legends: ``AT``, ``AT-AWP``, ``TRADES-RWP``..."""
    cfg = RunDir.at(path).config()
    method = cfg.objective.name.upper()
    return method if cfg.perturb.name == "none" else f"{method}-{cfg.perturb.name.upper()}"


def curve_rows(history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluated epochs of a history, with the learning-curve keys only."""
    return [{"epoch": r["epoch"], **{k: r.get(k, float("nan")) for k in CURVE_KEYS}}
            for r in history if "test_pgd_acc" in r]


# ---------------------------------------------------------------------- checkpoints


@dataclass
class CheckpointRef:
    """One checkpoint to analyse and its legend label, e.g. ``at epoch 20 (best, last)``."""

    path: Path
    epoch: int
    kinds: list[str] = field(default_factory=list)  # "best"/"last" if it is also the run's
    run: str = ""  # the run directory's name, set when several runs are listed together

    @property
    def label(self) -> str:
        text = f"epoch {self.epoch}" + (f" ({', '.join(self.kinds)})" if self.kinds else "")
        return f"{self.run} {text}" if self.run else text


def examples(cfg: Config, split: str = "train", n: int = 1000,
             seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed, seeded subset of ``n`` examples (uint8) of the run's ``train`` or ``test`` split."""
    splits = experiment.load_splits(cfg)
    x, y = (splits.x_train, splits.y_train) if split == "train" else (splits.x_test, splits.y_test)
    return experiment.fixed_subset(x, y, n, seed)


def analysis_attack(cfg: Config, steps: int | None = None) -> PGD:
    """PGD on CE in the run's training threat model (ε and step size: Algorithm 1's η1) with
    its training steps (K1; ``steps`` overrides), random start, eval-mode BN."""
    return experiment.pgd(experiment.threat_model(cfg), steps or cfg.attack.steps, "attack", loss="ce")


def _candidates(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise WpatError(f"run directory or checkpoint not found: {path}")
    run = RunDir(path)
    found = run.kept_checkpoints() + [p for kind, p in run.checkpoints().items() if kind in ("best", "last")]
    if not found:
        raise WpatError(f"{path}: no checkpoints (best.pt, last.pt or epoch-NNN.pt)")
    return found


def list_checkpoints(paths: Sequence[PathLike],
                     epochs: Sequence[int] | None = None) -> list[CheckpointRef]:
    """The checkpoints of run directories and/or checkpoint files, one per (directory, epoch).

    A run directory gives its ``epoch-NNN.pt``, ``best.pt`` and ``last.pt``; a best or last
    checkpoint of an epoch already listed is not repeated, only named in that epoch's label.
    Ordered by epoch; ``epochs`` keeps only those epochs (each must be present). Every file is
    read once here to learn its epoch.
    """
    refs: dict[tuple[Path, int], CheckpointRef] = {}
    for path in [c for p in paths for c in _candidates(Path(p))]:
        ckpt = load_checkpoint(path)
        if not is_wpat_checkpoint(ckpt) or "epoch" not in ckpt:
            raise WpatError(f"{path}: not a wpat checkpoint")
        epoch = int(ckpt["epoch"])
        ref = refs.setdefault((path.parent.resolve(), epoch), CheckpointRef(path, epoch))
        if ckpt.get("kind") in ("best", "last"):
            ref.kinds.append(ckpt["kind"])
    chosen = sorted(refs.values(), key=lambda r: r.epoch)
    if epochs is not None:
        missing = sorted(set(epochs) - {r.epoch for r in chosen})
        if missing:
            raise WpatError(f"no checkpoint for epoch(s) {', '.join(map(str, missing))}; "
                            f"available: {', '.join(str(r.epoch) for r in chosen)} "
                            f"(train with run.keep_every=N to keep more)")
        chosen = [r for r in chosen if r.epoch in set(epochs)]
    if len({r.path.parent.resolve() for r in chosen}) > 1:
        for r in chosen:
            r.run = r.path.parent.name
    return chosen


def layer_weights(model: nn.Module) -> dict[str, Tensor]:
    """The conv/linear weights (the tensors AWP/RWP perturb), by parameter name, on the CPU."""
    return {name: p.detach().cpu() for name, p in perturbed_parameters(model)}
