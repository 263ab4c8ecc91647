"""``wpat eval RUN_DIR|CHECKPOINT``: robustness of a run's best and last checkpoints (or of one
checkpoint) under the attacks of AWP/RWP Table 2, on the same first N test examples.

Adds its results to ``eval.json`` in ``--out`` (default: the run directory; ``eval-<name>/``
beside a single checkpoint file): results of other checkpoints and attacks, measured before, are
kept, and an attack measured again replaces only its own. Writes ``eval.md`` and prints the
table of everything the file holds (rows: checkpoints; columns: Natural, FGSM, PGD-20, PGD-100,
CW∞, SPSA, AA in %) with the settings of each number, and the gradient-masking warnings.
``--config`` evaluates a foreign checkpoint, e.g. the authors' released state_dict, with a
preset's model and threat model.

``wpat eval SWEEP_DIR`` evaluates every finished run of a sweep in turn, each into its own run
directory (``--seeds 0-2`` for some seeds only), so AutoAttack on a whole leaderboard is one
command: ``wpat eval runs/lb --attacks aa --n-examples 1000``. A run whose ``eval.json`` already
holds the requested attacks with the same settings on its current weights is skipped, and
AutoAttack resumes per batch within a run (:mod:`wpat.evaluation.sweep`): started again after
an interruption, it goes on where it stopped. A run that fails is reported on one line and the
others go on; the exit status is then 1. ``wpat report SWEEP_DIR`` shows the AA columns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wpat.helpers.errors import WpatError

ATTACK_HELP = ("comma-separated columns: natural, fgsm, pgd20, pgd100, cw, spsa, aa (AutoAttack standard), "
               "aa-plus (its plus version), aa-apgd (only its APGD-CE and APGD-T, cheaper) "
               "(default: natural,fgsm,pgd20,pgd100,cw; spsa and the aa columns are slow)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_DIR|CHECKPOINT|SWEEP_DIR",
                        help="a run directory, a checkpoint file, or a sweep directory (every finished run)")
    parser.add_argument("--attacks", help=ATTACK_HELP)
    parser.add_argument("--n-examples", type=int, default=0, metavar="N",
                        help="the first N test examples (default 0: the whole test set, the papers' protocol)")
    parser.add_argument("--batch-size", type=int, default=500, metavar="B", help="examples per batch (default 500)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every attack (default 0)")
    parser.add_argument("--config", metavar="PRESET_OR_YAML",
                        help="evaluate with this config's model, dataset and threat model (required for a "
                             "foreign checkpoint)")
    parser.add_argument("--out", metavar="DIR",
                        help="where eval.json and eval.md go (results already there are kept)")
    parser.add_argument("--no-checks", action="store_true",
                        help="skip the gradient-masking checks that probe the model (the ordering of "
                             "the accuracies is checked anyway)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--seeds", metavar="SEEDS",
                        help="with a sweep directory: only the runs of these seeds, e.g. 0-2 or 0,1")


def run(args: argparse.Namespace) -> int:
    from wpat.evaluation import DEFAULT_ATTACKS, check_attack_names
    from wpat.evaluation.sweep import is_sweep

    attacks = [a.strip() for a in args.attacks.split(",")] if args.attacks is not None else list(DEFAULT_ATTACKS)
    check_attack_names(attacks)
    if is_sweep(args.target):
        return run_sweep(args, attacks)
    if args.seeds is not None:
        raise WpatError("--seeds chooses runs of a sweep directory; give one (a directory with sweep.json)")
    evaluate_one(args, args.target, attacks, args.out)
    return 0


def evaluate_one(args: argparse.Namespace, target: str | Path, attacks: list[str],
                 out: str | Path | None, quiet: bool = False) -> dict:
    """Evaluate one run directory or checkpoint, add the results to its ``eval.json``, print the
    table (with ``quiet``, the warnings only) and return the merged report."""
    # torch-heavy: imported only when evaluating
    from wpat.evaluation import (default_out_dir, evaluate_checkpoint, report_warnings, results_table,
                                 settings_lines, write_report)

    out = out or default_out_dir(target)
    report = evaluate_checkpoint(target, attacks, n_examples=args.n_examples, batch_size=args.batch_size,
                                 device=args.device, seed=args.seed, config=args.config, out_dir=out,
                                 checks=not args.no_checks, progress=not args.no_progress)
    merged, json_path, md_path = write_report(report, out)
    if not quiet:
        print(results_table(merged))
        for line in settings_lines(merged):
            print(line)
    for warning in report_warnings(merged):
        print(f"warning: {warning}")
    if quiet:
        return merged
    kept = []
    for name, r in merged["checkpoints"].items():
        earlier = [merged["labels"].get(a, a) for a in r["accuracy"] if a not in attacks]
        if r.get("superseded"):
            kept.append(f"{name} (other weights)")
        elif name not in report["checkpoints"]:
            kept.append(f"{name} (all columns)")
        elif earlier:
            kept.append(f"{name} {', '.join(earlier)}")
    if kept:
        print(f"kept from earlier evaluations: {'; '.join(kept)}")
    print(f"wrote {json_path} and {md_path} ({report['seconds']:.1f} s)")
    return merged


def run_sweep(args: argparse.Namespace, attacks: list[str]) -> int:
    """Every finished run of a sweep, one after another, each into its own directory."""
    import time

    from wpat.evaluation import label
    from wpat.evaluation.sweep import measured, sweep_runs
    from wpat.sweep import one_line, parse_seeds

    if args.out is not None or args.config is not None:
        raise WpatError("a sweep's runs are evaluated into their own directories with their own configs; "
                        "drop --out and --config")
    if args.n_examples < 0 or args.batch_size < 1:
        raise WpatError(f"--n-examples must be >= 0 (0 = all) and --batch-size >= 1, "
                        f"got {args.n_examples} and {args.batch_size}")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    runs, left_out = sweep_runs(args.target, seeds)
    counts = {"evaluated": 0, "already measured": 0, "failed": 0}
    sizes: dict = {}
    for index, run_dir in enumerate(runs, 1):
        head = f"[{index}/{len(runs)}] {run_dir.name}: "
        started = time.perf_counter()
        try:
            if measured(run_dir, attacks, n_examples=args.n_examples, seed=args.seed,
                        batch_size=args.batch_size, test_sizes=sizes):
                counts["already measured"] += 1
                print(head + "already measured, skipped", flush=True)
                continue
            merged = evaluate_one(args, run_dir, attacks, run_dir, quiet=True)
        except WpatError as err:
            counts["failed"] += 1
            print(head + f"FAILED: {one_line(err)}", flush=True)
            continue
        counts["evaluated"] += 1
        cells = [f"{name} " + ", ".join(f"{label(a)} {100 * merged['checkpoints'][name]['accuracy'][a]:.2f}%"
                                        for a in attacks)
                 for name in merged["checkpoints"] if not merged["checkpoints"][name].get("superseded")]
        print(head + "; ".join(cells) + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    for line in left_out:
        print(f"left out: {line}")
    print(f"sweep {args.target}: " + ", ".join(f"{n} {what}" for what, n in counts.items())
          + f" of {len(runs)} finished run(s); each run's eval.json holds its results (wpat report "
            f"{args.target} tabulates them)")
    return 1 if counts["failed"] else 0
