"""The evaluation protocol of AWP and RWP Table 2 (docs/design.md, "Evaluation conventions").

- :func:`evaluate_model`: one model under each column of :data:`~wpat.evaluation.columns.COLUMNS`
  on the same examples, each attack seeded alike, plus the gradient-masking checks of
  :mod:`wpat.evaluation.masking`.
- :func:`evaluate_checkpoint`: a run's ``best.pt`` and ``last.pt`` (or one checkpoint file) on
  the first N test examples of its dataset, in fp32 and eval mode; the report
  :func:`wpat.evaluation.report.write_report` writes.
- :func:`column_correct`: per example, whether a column's attack leaves it correctly
  classified; for AutoAttack this is AutoAttack's own verdict.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from wpat import __version__
from wpat.config import Config
from wpat.data import load_dataset
from wpat.errors import WpatError
from wpat.evaluation.columns import DEFAULT_ATTACKS, build_column, check_attack_names, label, labels
from wpat.evaluation.masking import masking_checks
from wpat.evaluation.report import prepare_out_dir
from wpat.experiment import eval_threat, resolve_device, select_classes
from wpat.loading import model_from_checkpoint
from wpat.metrics import Attack, correct, model_device, to_unit_float
from wpat.progress import Progress
from wpat.run_dir import checkpoints_of
from wpat.threat import ThreatModel


def first_test_examples(cfg: Config, n: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples (0: all) of the config's test set, uint8, fixed for every attack."""
    x, y = load_dataset(cfg.data.name, "test", root=cfg.data.root, download=cfg.data.download)
    x, y = select_classes(x, y, cfg.data.classes)  # a model trained on a class subset, relabelled
    return (x[:n], y[:n]) if n > 0 else (x, y)


def column_correct(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None,
                   batch_size: int = 500, desc: str | None = None) -> Tensor:
    """Per example (bool, on the model's device), whether ``attack`` leaves it classified as ``y``.

    An attack with its own verdict, ``attack.predictions(model, x, y)`` (AutoAttack: the
    predictions pyautoattack's ``run_standard_evaluation`` returns), is counted by that verdict
    rather than by a second forward of the model on its examples; any other attack by the
    eval-mode model's argmax on its examples (:func:`wpat.metrics.correct`). Batches of
    ``batch_size`` either way, so a resumable attack loses at most the batch in progress.
    """
    predictions = getattr(attack, "predictions", None)
    if predictions is None:
        return correct(model, x, y, attack, batch_size, desc=desc)
    device = model_device(model, x.device)
    progress = Progress(desc, total=len(x), unit="img") if desc is not None else None
    flags = []
    for start in range(0, len(x), batch_size):
        xb = to_unit_float(x[start:start + batch_size].to(device))
        yb = y[start:start + batch_size].to(device)
        flags.append(predictions(model, xb, yb).to(device) == yb)  # in the attack's own mode
        if progress is not None:
            progress.advance(len(xb))
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
    float}}`` and, with ``checks``, ``"checks"``: :func:`wpat.evaluation.masking.masking_checks`.
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
    if checks:
        torch.manual_seed(seed)
        started = time.perf_counter()
        result["checks"] = masking_checks(model, x, y, result["accuracy"], threat.norm, batch_size,
                                          labels())
        result["seconds"]["checks"] = round(time.perf_counter() - started, 3)
    return result


def evaluate_checkpoint(path: str | os.PathLike, attacks: Sequence[str] = DEFAULT_ATTACKS, *,
                        n_examples: int = 0, batch_size: int = 500, device: str = "auto",
                        seed: int = 0, config: str | Config | None = None,
                        out_dir: str | os.PathLike | None = None, checks: bool = True,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate a run directory's best and last checkpoints, or one checkpoint file.

    Every checkpoint is attacked on the first ``n_examples`` (0: all) test examples of its
    dataset, in fp32 and eval mode, each attack seeded with ``seed``, in the threat model of
    :func:`wpat.experiment.eval_threat`. ``config`` is required for a foreign checkpoint (see
    :func:`wpat.loading.model_from_checkpoint`); ``out_dir`` (created) keeps AutoAttack's
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
    report: dict[str, Any] = {"target": str(path), "wpat_version": __version__, "attacks": attacks,
                              "labels": labels(attacks), "seed": seed,
                              "device": str(device_), "checkpoints": {}}
    # Every checkpoint and test set is read before any folder is made or any attack runs, so a
    # bad last.pt or a missing dataset is reported at once, not after hours spent on best.pt.
    loaded = {name: (p, *model_from_checkpoint(p, config)) for name, p in checkpoints_of(path).items()}
    test_sets = {}
    for _, _, cfg, _ in loaded.values():
        if (cfg.data.name, cfg.data.root) not in test_sets:
            test_sets[cfg.data.name, cfg.data.root] = first_test_examples(cfg, n_examples)
    if out_dir is not None:
        prepare_out_dir(out_dir)
    evaluated: list[tuple[nn.Module, Config, dict[str, Any]]] = []
    for name, (ckpt_path, model, cfg, info) in loaded.items():
        model = model.to(device_).float().eval()
        x, y = test_sets[cfg.data.name, cfg.data.root]
        threat = eval_threat(cfg)
        # best.pt and last.pt hold the same weights when the last epoch was the best: attack once
        result = next((r for m, c, r in evaluated if c == cfg and same_weights(m, model)), None)
        if result is None:
            state_dir = Path(out_dir) / "autoattack" / name if out_dir is not None else None
            result = evaluate_model(model, x, y, threat, attacks, batch_size=batch_size, seed=seed,
                                    state_dir=state_dir, checks=checks, progress=name if progress else None)
            evaluated.append((model, cfg, result))
        report["checkpoints"][name] = {"path": str(ckpt_path), **info, "model": cfg.model.name,
                                       "dataset": cfg.data.name, "n_examples": len(x),
                                       "threat_model": threat.as_dict(), **result}
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold the same state_dict, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
