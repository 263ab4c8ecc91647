"""The evaluation protocol of AWP and RWP Table 2 (docs/design.md, "Evaluation conventions").

- :func:`evaluate_model`: one model under each column of :data:`~wpat.evaluation.columns.COLUMNS`
  on the same examples, each attack seeded alike, plus the gradient-masking checks of
  :mod:`wpat.evaluation.masking`.
- :func:`evaluate_checkpoint`: a run's ``best.pt`` and ``last.pt`` (or one checkpoint file) on
  the first N test examples of its dataset, in fp32 and eval mode; the report
  :func:`wpat.evaluation.report.write_report` writes.
- :func:`column_correct`: per example, whether a column's attack leaves it correctly
  classified; for AutoAttack this is AutoAttack's own verdict, and its progress shows
  AutoAttack's own lines per batch and the running robust accuracy.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from wpat import __version__
from wpat.checkpoints.files import weights_digest
from wpat.configuration.config import Config
from wpat.data import load_dataset
from wpat.helpers.errors import WpatError
from wpat.evaluation.columns import (DEFAULT_ATTACKS, build_column, check_attack_names, column_settings,
                                     label, labels)
from wpat.evaluation.masking import model_checks, ordering_warnings
from wpat.evaluation.results import FORMAT, prepare_out_dir, with_ordering
from wpat.training.experiment import eval_threat, resolve_device, select_classes
from wpat.training.loading import model_from_checkpoint
from wpat.measurements.metrics import Attack, correct, model_device, to_unit_float
from wpat.helpers.progress import Progress
from wpat.checkpoints.run_dir import checkpoints_of
from wpat.helpers.threat import ThreatModel


def first_test_examples(cfg: Config, n: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples (0: all) of the config's test set, uint8, fixed for every attack."""
    x, y = load_dataset(cfg.data.name, "test", root=cfg.data.root, download=cfg.data.download)
    x, y = select_classes(x, y, cfg.data.classes)  # a model trained on a class subset, relabelled
    return (x[:n], y[:n]) if n > 0 else (x, y)


def column_correct(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None,
                   batch_size: int = 500, desc: str | None = None) -> Tensor:
    """Per example (bool, on the model's device), whether ``attack`` leaves it classified as ``y``.

    An attack with its own verdict, ``attack.predictions(model, x, y, log=...)`` (AutoAttack:
    the predictions pyautoattack's ``run_standard_evaluation`` returns), is counted by that
    verdict rather than by a second forward of the model on its examples; any other attack by
    the eval-mode model's argmax on its examples (:func:`wpat.measurements.metrics.correct`). Batches of
    ``batch_size`` either way, so a resumable attack loses at most the batch in progress.

    With ``desc``, progress is reported under it; for an attack with its own verdict, which
    takes minutes per batch, a line after every batch with the robust accuracy so far, and the
    attack's own lines (AutoAttack's verbose output) as they come, prefixed with the batch.
    """
    predictions = getattr(attack, "predictions", None)
    if predictions is None:
        return correct(model, x, y, attack, batch_size, desc=desc)
    device = model_device(model, x.device)
    progress = Progress(desc, total=len(x), unit="img", interval=0.0) if desc is not None else None
    batches = -(-len(x) // batch_size)
    flags = []
    robust = 0
    for number, start in enumerate(range(0, len(x), batch_size), 1):
        xb = to_unit_float(x[start:start + batch_size].to(device))
        yb = y[start:start + batch_size].to(device)
        log = None
        if progress is not None:
            log = lambda line, n=number: progress.write(f"{desc} batch {n}/{batches}: {line}")  # noqa: E731
        flags.append(predictions(model, xb, yb, log=log).to(device) == yb)  # in the attack's own mode
        robust += int(flags[-1].sum())
        if progress is not None:
            done = start + len(xb)
            progress.advance(len(xb), status=f"robust accuracy so far {100 * robust / done:.2f}% "
                                             f"({robust}/{done})")
    if progress is not None:
        progress.close()
    return torch.cat(flags) if flags else torch.empty(0, dtype=torch.bool, device=device)


def evaluate_model(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel,
                   attacks: Sequence[str] = DEFAULT_ATTACKS, *, batch_size: int = 500, seed: int = 0,
                   state_dir: str | Path | None = None, checks: bool = True,
                   progress: str | None = None) -> dict[str, Any]:
    """Accuracy of ``model`` under each column of ``attacks`` on the same ``(x, y)``.

    ``x`` is uint8 or float in [0, 1]; the model stays on its device and in its dtype (use
    fp32). The torch RNG is seeded with ``seed`` before each attack, so a column's result does
    not depend on which ran before it. Returns ``{"accuracy": {name: float}, "seconds": {name:
    float}, "ordering_warnings": [...]}`` (:func:`~wpat.evaluation.masking.ordering_warnings`)
    and, with ``checks``, ``"checks"``: :func:`wpat.evaluation.masking.model_checks`.
    ``progress`` prefixes the progress reports (None: none).
    """
    device = model_device(model, x.device)
    x, y = to_unit_float(x.to(device)), y.to(device)
    result: dict[str, Any] = {"accuracy": {}, "seconds": {}}
    for name in check_attack_names(attacks):
        attack = build_column(name, threat, seed=seed, state_dir=state_dir)
        torch.manual_seed(seed)
        started = time.perf_counter()
        flags = column_correct(model, x, y, attack, batch_size,
                               desc=f"{progress} {label(name)}" if progress else None)
        result["accuracy"][name] = flags.sum().item() / len(x)
        result["seconds"][name] = round(time.perf_counter() - started, 3)
    result["ordering_warnings"] = ordering_warnings(result["accuracy"], len(x), labels())
    if checks:
        torch.manual_seed(seed)
        started = time.perf_counter()
        result["checks"] = model_checks(model, x, y, threat.norm, batch_size)
        result["seconds"]["checks"] = round(time.perf_counter() - started, 3)
    return result


def _read_all(path: str | os.PathLike, config: str | Config | None, n_examples: int) -> tuple[dict, dict]:
    """Every checkpoint of ``path`` (name -> path, model, config, info) and the test examples of
    each dataset they use ((name, root) -> (x, y)). All are read before any folder is made or any
    attack runs, so a bad last.pt or a missing dataset is reported at once, not after hours spent
    on best.pt."""
    loaded = {name: (p, *model_from_checkpoint(p, config)) for name, p in checkpoints_of(path).items()}
    test_sets = {}
    for _, _, cfg, _ in loaded.values():
        if (cfg.data.name, cfg.data.root) not in test_sets:
            test_sets[cfg.data.name, cfg.data.root] = first_test_examples(cfg, n_examples)
    return loaded, test_sets


def evaluate_checkpoint(path: str | os.PathLike, attacks: Sequence[str] = DEFAULT_ATTACKS, *,
                        n_examples: int = 0, batch_size: int = 500, device: str = "auto",
                        seed: int = 0, config: str | Config | None = None,
                        out_dir: str | os.PathLike | None = None, checks: bool = True,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate a run directory's best and last checkpoints, or one checkpoint file.

    Every checkpoint is attacked on the first ``n_examples`` (0: all) test examples of its
    dataset, in fp32 and eval mode, each attack seeded with ``seed``, in the threat model of
    :func:`wpat.training.experiment.eval_threat`. ``config`` is required for a foreign checkpoint (see
    :func:`wpat.training.loading.model_from_checkpoint`); ``out_dir`` (created) keeps AutoAttack's
    finished batches for resuming (``out_dir/autoattack/<checkpoint>``). Returns the report
    that :func:`wpat.evaluation.report.write_report` writes: settings plus
    ``"checkpoints": {label: result}``.
    """
    attacks = check_attack_names(attacks)
    if n_examples < 0 or batch_size < 1:
        raise WpatError(f"--n-examples must be >= 0 (0 = all) and --batch-size >= 1, "
                        f"got {n_examples} and {batch_size}")
    started = time.perf_counter()
    device_ = resolve_device(device)
    report: dict[str, Any] = {"format": FORMAT, "target": str(path), "wpat_version": __version__,
                              "attacks": attacks, "labels": labels(attacks), "checkpoints": {}}
    loaded, test_sets = _read_all(path, config, n_examples)
    if out_dir is not None:
        prepare_out_dir(out_dir)
    evaluated: list[tuple[str, Config, dict[str, Any]]] = []
    for name, (ckpt_path, model, cfg, info) in loaded.items():
        model = model.to(device_).float().eval()
        x, y = test_sets[cfg.data.name, cfg.data.root]
        threat = eval_threat(cfg)
        digest = weights_digest(model)
        # best.pt and last.pt hold the same weights when the last epoch was the best: attack once
        result = next((r for d, c, r in evaluated if c == cfg and d == digest), None)
        if result is None:
            state_dir = Path(out_dir) / "autoattack" / name if out_dir is not None else None
            result = evaluate_model(model, x, y, threat, attacks, batch_size=batch_size, seed=seed,
                                    state_dir=state_dir, checks=checks, progress=name if progress else None)
            result["measured"] = {"device": str(device_), "wpat_version": __version__,
                                  "date": datetime.now().astimezone().isoformat(timespec="seconds")}
            evaluated.append((digest, cfg, result))
        examples = {"dataset": cfg.data.name, "n_examples": len(x),
                    **({"classes": list(cfg.data.classes)} if cfg.data.classes else {})}
        entry = {"path": str(ckpt_path), **info, "model": cfg.model.name, "dataset": cfg.data.name,
                 "weights": digest, "accuracy": result["accuracy"], "seconds": result["seconds"],
                 "settings": {a: {**examples, **column_settings(a, threat, seed=seed, batch_size=batch_size)}
                              for a in attacks},
                 "measured": {a: result["measured"] for a in attacks}}
        if "checks" in result:
            entry["checks"] = {**result["checks"], "measured": result["measured"],
                               "settings": {**examples, "norm": threat.norm.value, "seed": seed,
                                            "batch_size": batch_size}}
        report["checkpoints"][name] = with_ordering(entry, report["labels"])
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report
