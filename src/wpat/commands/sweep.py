"""``wpat sweep CONFIG [KEY=VALUE ...] [--methods M ...] [--grid KEY=V1,V2 ...] --seeds 0,1,2``.

``--methods`` makes methods one axis of the sweep (``--methods leaderboard``: AT, TRADES and
MART, each with no perturbation, AWP and RWP; a method is a bundle of an objective, a
perturbation and their options, or a whole preset; :mod:`wpat.sweep.methods`), so every
method × seed is one command; ``--list-methods`` lists the bundles wpat ships. Every
combination of the methods and the grid's values is trained once per seed, each run in its own directory
``OUT/NAME/<settings>`` (e.g. ``awp__gamma-0.005__seed-1``), with Ray: a local Ray instance by
default, a cluster with ``--address``; ``--cpus-per-run`` / ``--gpus-per-run`` say what one run
takes, so several small runs share the cores or one GPU (``--gpus-per-run 0.25``: four per GPU).
``--local`` runs them one after another in this process, without Ray. Everything is checked
before the first run starts. Invoked again, a sweep skips its finished runs and resumes the
unfinished ones from their ``last.pt``; a run that fails is reported on one line and the others
go on; the exit status is 1 if any run failed. ``sweep.json`` in the sweep directory records the
sweep; ``wpat report SWEEP_DIR`` tabulates it.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from wpat.helpers.errors import WpatError

INSTALL_HINT = ("wpat sweep runs its grid with Ray, which is not installed: pip install 'wpat[sweep]' "
                "(or pass --local to run the runs one after another in this process)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?",
                        help="a preset name (see `wpat presets`), a YAML file, or a first KEY=VALUE "
                             "(may be left out when every method is a preset)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="settings shared by every run, e.g. schedule.epochs=100 (before --grid)")
    parser.add_argument("--methods", nargs="+", action="extend", default=[], metavar="METHOD",
                        help="methods as one axis: names of bundles or groups (leaderboard), presets, "
                             "OBJECTIVE[-PERTURBATION], FILE.yaml, or NAME=KEY=VALUE,... "
                             "(see --list-methods)")
    parser.add_argument("--list-methods", action="store_true",
                        help="list the method bundles and groups (with those of FILE.yaml given to --methods)")
    parser.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                        help="a setting and its values, e.g. perturb.name=awp,rwp perturb.awp.gamma=0.005,0.01")
    parser.add_argument("--seeds", metavar="SEEDS", help="run.seed values, e.g. 0,1,2 or 0-4 (default: the config's run.seed)")
    parser.add_argument("--out", metavar="DIR", help="where the sweep directory goes (default: the config's run.out_dir)")
    parser.add_argument("--name", help="the sweep directory's name (default: <run.name>-sweep)")
    parser.add_argument("--local", action="store_true", help="no Ray: run the runs one after another here")
    parser.add_argument("--address", metavar="ADDR", help="join this Ray cluster (host:port, or auto) instead of a local instance")
    parser.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N", help="Ray CPUs per run (default 1)")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, metavar="F",
                        help="Ray GPUs per run, a fraction to share one (default 0)")
    parser.add_argument("--threads-per-run", type=int, metavar="N",
                        help="torch threads per run, written into each run's run.threads (default: "
                             "--cpus-per-run, rounded; the same with --local and with Ray)")
    parser.add_argument("--dry-run", action="store_true", help="check and list the runs, run nothing")


def check(args: argparse.Namespace) -> None:
    """Options, and Ray's presence, before the configs are read."""
    if args.local and args.address:
        raise WpatError("--local runs without Ray; drop --address (or --local)")
    if args.cpus_per_run <= 0 or args.gpus_per_run < 0:
        raise WpatError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    if args.threads_per_run is not None and args.threads_per_run < 1:
        raise WpatError("--threads-per-run must be an integer >= 1")
    if not (args.local or args.dry_run) and importlib.util.find_spec("ray") is None:
        raise WpatError(INSTALL_HINT)


def runtime_settings(args: argparse.Namespace) -> list[str]:
    """Settings of how each run executes, written into its config. The thread count is one of
    them: a run's last digits depend on it (the order of floating-point sums), so every run of
    a sweep gets the same explicit count under Ray and with ``--local``, and a run gives the
    same numbers whichever runner trains it."""
    threads = args.threads_per_run or max(1, round(args.cpus_per_run))
    return [f"run.threads={threads}"] + ([] if args.local else ["run.progress=false"])  # parallel bars would interleave


def check_threads(overrides: list[str], grid: dict) -> None:
    """run.threads is set by --threads-per-run for every run: a value given to the sweep would be replaced."""
    if "run.threads" in grid or any(o.split("=", 1)[0].strip() == "run.threads" for o in overrides):
        raise WpatError("run.threads: a sweep sets each run's thread count with --threads-per-run "
                        "(default: --cpus-per-run, rounded); give that instead")


def describe(result: dict, index: int, total: int) -> str:
    """One line per finished run."""
    head = f"[{index}/{total}] {result['name']}: "
    if result["status"] == "failed":
        return head + f"FAILED after {result['seconds']:.0f} s: {result['error']}"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    return head + (f"{result['status']} in {result['seconds']:.0f} s; epoch {result['epoch']}, "
                   f"PGD best {pct(result['best_pgd'])} (epoch {result['best_epoch']}), "
                   f"last {pct(result['last_pgd'])}")


def sizes(n_runs: int, n_methods: int, n_seeds: int) -> str:
    """``18 run(s) = 9 method(s) x 1 setting(s) x 2 seed(s)``."""
    settings = n_runs // (max(n_methods, 1) * n_seeds)
    return (f"{n_runs} run(s) = " + (f"{n_methods} method(s) x " if n_methods else "")
            + f"{settings} setting(s) x {n_seeds} seed(s)")


def run(args: argparse.Namespace) -> int:
    from wpat.configuration.config import load_config
    from wpat.sweep import (Library, list_methods, parse_grid, parse_methods, parse_seeds, plan,
                            replicas, run_local, run_with_ray, write_manifest)

    if args.list_methods:
        print(list_methods(Library(m for m in args.methods if m.endswith((".yaml", ".yml")))))
        return 0
    check(args)
    overrides = list(args.overrides)
    if args.config is not None and "=" in args.config:  # `wpat sweep key=value --grid ...`, as `wpat train`
        overrides.insert(0, args.config)
        args.config = None
    grid = parse_grid(args.grid)
    check_threads(overrides, grid)
    methods = parse_methods(args.methods) if args.methods else []
    if args.config is None and not overrides and not (methods and all(m.base for m in methods)):
        raise WpatError("give a config (a preset, see `wpat presets`, or a YAML file) for the runs "
                        "to start from, unless every method is a preset")
    base = load_config(args.config, overrides)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [base.run.seed]
    sweep_dir = Path(args.out or base.run.out_dir) / (args.name or f"{base.run.name}-sweep")
    specs = plan(args.config, overrides, grid, seeds, sweep_dir, runtime_settings(args), methods)
    resources = {"mode": "local" if args.local else "ray", "address": args.address,
                 "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run,
                 "runtime": runtime_settings(args)}
    print(f"sweep {sweep_dir}: {sizes(len(specs), len(methods), len(seeds))}"
          + (", in this process" if args.local else ", with Ray"))
    same = replicas(specs)
    if same:
        print(f"note: {len(same)} run(s) compute the same as another (they differ only in options of "
              f"components they do not select), e.g. {same[0][0]} = {same[0][1]}")
    if args.dry_run:
        print("\n".join(f"  method {m.name}: {m.describe()}" for m in methods))
        print("\n".join(f"  {s.name}: {' '.join(s.settings)}" for s in specs))
        return 0
    manifest = write_manifest(sweep_dir, args.config, overrides, grid, seeds, specs, resources,
                              methods=methods)
    done: dict[str, dict] = {}

    def report(result: dict) -> None:
        done[result["name"]] = result
        print(describe(result, len(done), len(specs)), flush=True)

    if args.local:
        run_local(specs, report)
    else:
        run_with_ray(specs, report, address=args.address, cpus=args.cpus_per_run, gpus=args.gpus_per_run)
    write_manifest(sweep_dir, args.config, overrides, grid, seeds, specs, resources, done, methods)
    counts = {s: sum(r["status"] == s for r in done.values()) for s in ("trained", "resumed", "skipped", "failed")}
    failed = [name for name, r in done.items() if r["status"] == "failed"]
    print(f"sweep {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f" of {len(specs)} (manifest: {manifest})" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if counts["failed"] else 0
