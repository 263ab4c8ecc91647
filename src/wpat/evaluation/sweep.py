"""``wpat eval SWEEP_DIR``: the runs of a sweep to evaluate, and whether one already is.

A sweep's runs are those of its ``sweep.json``, in its order; ``seeds`` keeps those of some
seeds (AutoAttack for seeds 0-2 of every method when the budget does not allow all). A run is
evaluated once it has finished training (its last epoch, or stopped early); one still training
or never started is left out and said so. A run is **measured** when its ``eval.json`` already
holds, for each of its checkpoints (``best``, ``last``, and the weight average's), every
requested attack under exactly the settings this evaluation would use (examples, threat
model, seed, batch size, AutoAttack version) on the weights the checkpoint holds now: the
evaluation skips it, so an interrupted ``wpat eval SWEEP_DIR`` started again goes on where it
stopped, and within a run AutoAttack resumes from its finished batches
(:class:`wpat.attacks.AutoAttack`'s ``state_dir``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from wpat.checkpoints.files import weights_digest
from wpat.configuration.config import Config, run_over
from wpat.helpers.errors import WpatError
from wpat.evaluation.columns import column_settings
from wpat.evaluation.protocol import first_test_examples
from wpat.evaluation.results import read_report
from wpat.training.experiment import eval_threat
from wpat.training.loading import model_from_checkpoint
from wpat.checkpoints.run_dir import RunDir, checkpoints_of
from wpat.sweep import MANIFEST, read_manifest


def is_sweep(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _seed(settings: Sequence[str]) -> int | None:
    return next((int(s.split("=", 1)[1]) for s in settings if s.startswith("run.seed=")), None)


def _finished(run: RunDir) -> tuple[bool, str]:
    """Whether the run has nothing left to train, and where it stands in words."""
    if not run.metrics_path.is_file() or "last" not in run.checkpoints():
        return False, "not started"
    history = run.history()
    epoch = history[-1]["epoch"] if history else 0
    cfg = run.config()
    key = "val_pgd_acc" if cfg.run.select == "val" else "test_pgd_acc"
    scored = [r for r in history if key in r]
    best = max(scored, key=lambda r: r[key])["epoch"] if scored else 0
    return run_over(cfg, epoch, best), f"epoch {epoch} of {cfg.schedule.epochs}"


def sweep_runs(sweep_dir: str | Path, seeds: Sequence[int] | None = None) -> tuple[list[Path], list[str]]:
    """The finished runs of the sweep in ``sweep_dir`` (of ``seeds`` only, if given), and a
    line for each run left out because it has not finished."""
    sweep_dir = Path(sweep_dir)
    runs, left_out = [], []
    entries = read_manifest(sweep_dir)["runs"]
    if seeds is not None:
        entries = [r for r in entries if _seed(r.get("settings", [])) in set(seeds)]
        if not entries:
            raise WpatError(f"{sweep_dir}: no run of seed(s) {', '.join(map(str, seeds))}")
    for entry in entries:
        run = RunDir(sweep_dir / entry["dir"])
        try:
            done, where = _finished(run) if run.path.is_dir() else (False, "not started")
        except WpatError as err:  # a damaged run directory: said, and the others go on
            left_out.append(f"{entry['name']}: {err}")
            continue
        if done:
            runs.append(run.path)
        else:
            left_out.append(f"{entry['name']}: not finished ({where}); evaluate it once it is")
    return runs, left_out


def measured(run_dir: str | Path, attacks: Sequence[str], *, n_examples: int, seed: int,
             batch_size: int, test_sizes: dict[Any, int] | None = None) -> bool:
    """Whether ``run_dir``'s ``eval.json`` holds every attack of ``attacks`` for each of its
    checkpoints, with the settings and on the weights this evaluation would use.
    ``test_sizes`` caches the number of test examples per dataset between calls."""
    report = read_report(Path(run_dir) / "eval.json")
    if report is None:
        return False
    test_sizes = {} if test_sizes is None else test_sizes
    for name, path in checkpoints_of(run_dir).items():
        entry = report["checkpoints"].get(name)
        if entry is None or entry.get("superseded") or not all(a in entry.get("accuracy", {}) for a in attacks):
            return False
        model, cfg, _ = model_from_checkpoint(path)
        if entry.get("weights") != weights_digest(model.float()):
            return False
        expected = _examples(cfg, n_examples, test_sizes)
        threat = eval_threat(cfg)
        for attack in attacks:
            wanted = {**expected, **column_settings(attack, threat, seed=seed, batch_size=batch_size)}
            if entry.get("settings", {}).get(attack) != wanted:
                return False
    return True


def _examples(cfg: Config, n_examples: int, sizes: dict[Any, int]) -> dict[str, Any]:
    """The ``dataset`` / ``n_examples`` / ``classes`` settings an evaluation of ``cfg``'s model
    on its first ``n_examples`` test examples records."""
    key = (cfg.data.name, cfg.data.root, tuple(cfg.data.classes or ()))
    if key not in sizes:
        sizes[key] = len(first_test_examples(cfg, 0)[0])
    n = sizes[key] if n_examples <= 0 else min(n_examples, sizes[key])
    return {"dataset": cfg.data.name, "n_examples": n,
            **({"classes": list(cfg.data.classes)} if cfg.data.classes else {})}
