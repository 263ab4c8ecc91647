"""Running a sweep's runs to their end: in this process, or as Ray tasks.

:func:`execute` brings one run to its end whatever state its directory is in: a run whose
``last.pt`` is at its final epoch (or that stopped early, ``run.patience``) is skipped, one with
an earlier ``last.pt`` is resumed from it (docs/design.md, "Reliability": the result equals an
uninterrupted run), a new one is trained. It never raises: a failure comes back as a result with
a one-line error, so one failed run never stops the others. A run directory that holds a run of
another setting is a failure, never overwritten. Ray is imported only by :func:`run_with_ray`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from wpat.configuration.config import Config, run_over
from wpat.helpers.errors import WpatError
from wpat.sweep.runs import RunSpec, resolved, setting_of

Result = dict[str, Any]


def _finished(ckpt: Mapping[str, Any], cfg: Config) -> bool:
    """Whether a run's ``last.pt`` is at its end: the final epoch, or stopped early (AT-ES)."""
    return int(ckpt.get("step", 0)) == 0 and run_over(cfg, int(ckpt["epoch"]), int(ckpt["best"]["epoch"]))


def _from_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Epochs and best/last test PGD accuracy (fractions) of ``train``'s or ``resume``'s summary."""
    best, last = summary["best"] or {}, summary["last"] or {}
    return {"epoch": last.get("epoch", 0), "best_epoch": summary["best_epoch"],
            "best_pgd": best.get("test_pgd_acc"), "last_pgd": last.get("test_pgd_acc")}


def _from_checkpoint(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The same as :func:`_from_summary`, from a finished run's ``last.pt``."""
    history, best_epoch = ckpt["history"], int(ckpt["best"]["epoch"])
    best = next((r for r in history if r["epoch"] == best_epoch), {})
    return _from_summary({"best": best, "last": history[-1] if history else {}, "best_epoch": best_epoch})


def _run(spec: RunSpec) -> tuple[str, dict[str, Any]]:
    """Train, resume or skip ``spec``'s run; returns its status and outcome."""
    from wpat.checkpoints.files import is_wpat_checkpoint, load_checkpoint
    from wpat.configuration.config import config_from_dict
    from wpat.checkpoints.run_dir import RunDir
    from wpat.training.loop import resume, train

    cfg = config_from_dict(spec.config)
    last = RunDir(Path(spec.run_dir)).checkpoint_path("last")
    if not last.exists():
        return "trained", _from_summary(train(cfg))
    ckpt = load_checkpoint(last)
    if not is_wpat_checkpoint(ckpt) or ckpt.get("kind") != "last":
        raise WpatError(f"{last}: not a resumable wpat checkpoint")
    if setting_of(resolved(ckpt["config"])) != setting_of(spec.config):
        raise WpatError(f"{spec.run_dir} holds a run with another config; move it away "
                        f"or sweep under another --name")
    if _finished(ckpt, config_from_dict(ckpt["config"])):
        return "skipped", _from_checkpoint(ckpt)
    return "resumed", _from_summary(resume(spec.run_dir, progress=cfg.run.progress))


def one_line(err: BaseException) -> str:
    """An exception as one line: a WpatError's message, else ``Type: message``."""
    text = str(err) if isinstance(err, WpatError) else f"{type(err).__name__}: {err}"
    text = " ".join(text.split()) or type(err).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


def execute(spec: RunSpec | Mapping[str, Any]) -> Result:
    """Run one run of a sweep to its end (train, resume or skip) in this process.

    Never raises (but for KeyboardInterrupt): returns ``{"name", "status", "seconds", ...}``
    with status ``trained | resumed | skipped | failed``, the best/last test PGD accuracy
    (fractions) and epochs, or ``error``: one line."""
    spec = spec if isinstance(spec, RunSpec) else RunSpec(**spec)
    started = time.perf_counter()
    try:
        status, outcome = _run(spec)
        result = {"status": status, **outcome}
    except Exception as err:  # noqa: BLE001 -- a failed run is reported, the sweep goes on
        result = {"status": "failed", "error": one_line(err)}
    return {"name": spec.name, **result, "seconds": round(time.perf_counter() - started, 1)}


def run_local(specs: Sequence[RunSpec], report: Callable[[Result], None]) -> list[Result]:
    """Run the sweep's runs one after another in this process."""
    results = []
    for spec in specs:
        results.append(execute(spec))
        report(results[-1])
    return results


def _check_resources(total: Mapping[str, float], cpus: float, gpus: float) -> None:
    """A run that asks for more than the Ray cluster has would wait forever: say so at once."""
    for what, wanted, option in (("CPU", cpus, "--cpus-per-run"), ("GPU", gpus, "--gpus-per-run")):
        have = total.get(what, 0)
        if wanted > have:
            raise WpatError(f"{option} {wanted:g}: the Ray cluster has {have:g} {what}s "
                            f"(an autoscaling cluster: start its nodes first)")


def run_with_ray(specs: Sequence[RunSpec], report: Callable[[Result], None], *,
                 address: str | None = None, cpus: float = 1, gpus: float = 0) -> list[Result]:
    """Run each run as a Ray task with ``cpus`` CPUs and ``gpus`` GPUs (fractions share one),
    on a new local Ray instance or, with ``address``, on that cluster (wpat must be installed
    on its nodes, and run directories must be on storage they share). Results are reported as
    the runs finish; a task that dies (worker crash, out of memory) is a failed result."""
    import logging

    import ray

    started = not ray.is_initialized()  # a caller's own Ray session is used, and left running
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        _check_resources(ray.cluster_resources(), cpus, gpus)
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute)
        pending = {task.remote(asdict(spec)): spec for spec in specs}
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 -- the task itself died
                result = {"name": spec.name, "status": "failed", "error": one_line(err)}
            results.append(result)
            report(result)
        return results
    finally:
        if started:
            ray.shutdown()
