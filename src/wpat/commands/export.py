"""``wpat export RUN_DIR|CHECKPOINT [--robustbench OUT]``: the run's model for RobustBench's model zoo.

Writes ``OUT/<name>.pt`` (OUT by default ``robustbench/`` inside the run directory, or beside a
checkpoint file, so an export stays with the run it came from), the plain state_dict (tensors only, normalization inside, inputs in
[0, 1], to be used in eval mode) of the run's best checkpoint (``--checkpoint last`` for the
last), and ``OUT/<name>.json``, a RobustBench ``model_info`` record filled from the run's config
and its ``eval.json``; fields only a person can fill say ``TO FILL``. See :mod:`wpat.evaluation.export`.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a checkpoint file")
    parser.add_argument("--robustbench", metavar="OUT", nargs="?",
                        help="write OUT/<name>.pt (state_dict) and OUT/<name>.json (model_info) "
                             "(default: RUN_DIR/robustbench, or robustbench/ beside a checkpoint file)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint of a run directory (default best)")
    parser.add_argument("--name", help="file names and model id (default: the run directory's name)")
    parser.add_argument("--config", metavar="PRESET_OR_YAML",
                        help="the model and dataset of a foreign checkpoint (as for `wpat eval`)")
    parser.add_argument("--force", action="store_true", help="replace existing OUT/<name>.pt/.json")


def run(args: argparse.Namespace) -> int:
    from wpat.evaluation.export import TO_FILL, default_export_dir, export_robustbench  # torch-heavy

    out = args.robustbench or default_export_dir(args.target)
    result = export_robustbench(args.target, out, checkpoint=args.checkpoint, name=args.name,
                                config=args.config, force=args.force)
    info = result["info"]
    acc = ", ".join(f"{label} {info[key]}%" if info[key] is not None else f"{label} unknown"
                    for label, key in (("clean", "clean_acc"), ("AutoAttack", "autoattack_acc")))
    print(f"wrote {result['pt']} (state_dict, {result['tensors']} tensors, {result['bytes'] / 1e6:.1f} MB; "
          f"{info['architecture']}, {info['dataset']}, {info['threat_model']} eps {info['eps']}; {acc})")
    print(f"wrote {result['json']} (RobustBench model_info; for model_info/{info['dataset']}/"
          f"{info['threat_model']}/)")
    for key, m in info["wpat"]["measurements"].items():
        print(f"{key} {info[key]}: {m['in_words']}")
    to_fill = [k for k, v in info.items() if isinstance(v, str) and v.startswith(TO_FILL)]
    print(f"to fill by hand in {result['json'].name}: {', '.join(to_fill)}")
    for key, note in info["notes"].items():
        if info.get(key) is None:
            print(f"note: {key}: {note}")
    return 0
