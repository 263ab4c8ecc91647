"""A run directory written by ``wpat train``: its files, and finding a run's checkpoint, in one place.

::

    run = RunDir.at("runs/fmnist-smallcnn-linf")     # an existing directory, or a one-line error
    run.config(), run.history()                        # config.yaml, metrics.jsonl
    run.checkpoints()                                  # {"best": .../best.pt, "last": .../last.pt}
    find_checkpoint("runs/fmnist-smallcnn-linf", "last")   # a RUN_DIR|CKPT argument's file

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` and
``metrics.csv`` (one record per epoch), ``last.pt`` (everything needed to resume), ``best.pt``
(the selected epoch's weights), with ``run.ema`` also ``ema_best.pt`` and ``ema_last.pt``, with
``run.keep_every`` the kept ``epoch-NNN.pt``, and TensorBoard event files. Every command that
takes a run (``wpat eval | export | sensitivity | landscape | lsc | plot | report | pseudolabel``)
reads it through this module.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wpat.configuration.config import Config, load_config
from wpat.helpers.errors import WpatError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
KINDS = ("best", "last", "ema_best", "ema_last")  # the checkpoints a run keeps, by name


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (which need not exist yet: training creates it)."""

    path: Path

    @classmethod
    def at(cls, path: str | os.PathLike) -> RunDir:
        """An existing run directory, or a one-line error."""
        path = Path(path)
        if not path.is_dir():
            raise WpatError(f"run directory not found: {path}")
        return cls(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def checkpoint_path(self, kind: str) -> Path:
        """Where checkpoint ``kind`` (``best``, ``last``, ``ema_best``, ``ema_last``) goes."""
        return self.path / f"{kind}.pt"

    def checkpoints(self) -> dict[str, Path]:
        """The run's checkpoints that exist, by kind, in the order of :data:`KINDS`."""
        return {kind: self.checkpoint_path(kind) for kind in KINDS if self.checkpoint_path(kind).exists()}

    def kept_checkpoints(self) -> list[Path]:
        """The ``epoch-NNN.pt`` of ``run.keep_every``, in epoch order."""
        return sorted(self.path.glob("epoch-*.pt"))

    def results(self) -> list[Path]:
        """What a run writes at the end of an epoch before its ``last.pt``: the other checkpoints,
        the kept ``epoch-NNN.pt`` and the metrics."""
        metrics = [p for p in (self.metrics_path, self.metrics_path.with_suffix(".csv")) if p.exists()]
        others = [p for kind, p in self.checkpoints().items() if kind != "last"]
        return [*others, *self.kept_checkpoints(), *metrics]

    def event_files(self) -> list[Path]:
        """The TensorBoard event files (a run opens one whenever it starts or resumes)."""
        return sorted(self.path.glob("events.out.tfevents.*"))

    def never_checkpointed(self) -> bool:
        """Whether this holds only the start of a run that stopped before its first checkpoint
        (killed in its first epoch): its config.yaml, no last.pt and no epoch's results."""
        return self.config_path.is_file() and "last" not in self.checkpoints() and not self.results()

    def restart_command(self) -> str:
        """The command that starts this directory's run again, into this directory."""
        return (f"wpat train {shlex.quote(str(self.config_path))} run.out_dir={shlex.quote(str(self.path.parent))} "
                f"run.name={shlex.quote(self.path.name)}")

    def config(self) -> Config:
        """The run's resolved config (its ``config.yaml``)."""
        if not self.config_path.is_file():
            raise WpatError(f"{self.path}: no {CONFIG} (not a wpat run directory)")
        return load_config(str(self.config_path))

    def history(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl``."""
        if not self.metrics_path.is_file():
            raise WpatError(f"{self.path}: no {METRICS} (not a wpat run directory, or no epoch done)")
        try:
            return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise WpatError(f"{self.metrics_path}: line {err.lineno} is not JSON") from None


def checkpoints_of(target: str | os.PathLike) -> dict[str, Path]:
    """A run directory's checkpoints by kind (``best``, ``last``, and ``ema_best``/``ema_last``
    of a run that averaged its weights), or ``{stem: path}`` of the one checkpoint file given."""
    path = Path(target)
    if path.is_dir():
        found = RunDir(path).checkpoints()
        if not found:
            raise WpatError(f"{path}: no best.pt or last.pt (expected a run directory written by "
                            f"`wpat train`, or a checkpoint file)")
        return found
    if not path.exists():
        raise WpatError(f"checkpoint or run directory not found: {path}")
    return {path.stem: path}


def find_checkpoint(target: str | os.PathLike, kind: str | None = None) -> Path:
    """The checkpoint a ``RUN_DIR|CKPT`` argument names: a checkpoint file itself; in a run
    directory the ``kind`` one (``--checkpoint best|last``), or with ``kind`` None its best,
    else its last."""
    found = checkpoints_of(target)
    if not Path(target).is_dir():
        return next(iter(found.values()))
    if kind is None:
        return found.get("best") or found.get("last") or next(iter(found.values()))
    if kind not in found:
        other = next(iter(found))
        raise WpatError(f"{target}: no {kind}.pt (it has {other}.pt; use --checkpoint {other})")
    return found[kind]
