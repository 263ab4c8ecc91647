"""``wpat eval RUN_DIR|CHECKPOINT``: robustness of a run's best and last checkpoints (or of one
checkpoint) under the attacks of AWP/RWP Table 2, on the same first N test examples.

Adds its results to ``eval.json`` in ``--out`` (default: the run directory; ``eval-<name>/``
beside a single checkpoint file): results of other checkpoints and attacks, measured before, are
kept, and an attack measured again replaces only its own. Writes ``eval.md`` and prints the
table of everything the file holds (rows: checkpoints; columns: Natural, FGSM, PGD-20, PGD-100,
CW∞, SPSA, AA in %) with the settings of each number, and the gradient-masking warnings.
``--config`` evaluates a foreign checkpoint, e.g. the authors' released state_dict, with a
preset's model and threat model.
"""

from __future__ import annotations

import argparse

ATTACK_HELP = ("comma-separated columns: natural, fgsm, pgd20, pgd100, cw, spsa, aa "
               "(default: natural,fgsm,pgd20,pgd100,cw; spsa and aa are slow)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a checkpoint file")
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


def run(args: argparse.Namespace) -> int:
    # torch-heavy: imported only when evaluating
    from wpat.evaluation import (DEFAULT_ATTACKS, default_out_dir, evaluate_checkpoint,
                                 report_warnings, results_table, settings_lines, write_report)

    attacks = [a.strip() for a in args.attacks.split(",")] if args.attacks is not None else DEFAULT_ATTACKS
    out = args.out or default_out_dir(args.target)
    report = evaluate_checkpoint(args.target, attacks, n_examples=args.n_examples, batch_size=args.batch_size,
                                 device=args.device, seed=args.seed, config=args.config, out_dir=out,
                                 checks=not args.no_checks, progress=not args.no_progress)
    merged, json_path, md_path = write_report(report, out)
    print(results_table(merged))
    for line in settings_lines(merged):
        print(line)
    for warning in report_warnings(merged):
        print(f"warning: {warning}")
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
    return 0
