"""``wpat train [CONFIG] [section.key=value ...]`` and ``wpat train --resume RUN_DIR``."""

from __future__ import annotations

import argparse

from wpat.configuration.config import load_config
from wpat.helpers.errors import WpatError
from wpat.helpers.tables import training_table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a preset name (see `wpat presets`) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. perturb.name=rwp attack.eps=8/255")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")


def run(args: argparse.Namespace) -> int:
    from wpat.training.loop import resume, train  # torch-heavy: imported only when training

    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # `wpat train key=value` without a preset
        overrides.insert(0, args.config)
        args.config = None
    if args.resume:
        if args.config or overrides:
            raise WpatError("--resume continues a run with its stored config; drop the config and overrides")
        summary = resume(args.resume, progress=False if args.no_progress else None)
    else:
        cfg = load_config(args.config, overrides)
        if args.no_progress:
            cfg.run.progress = False
        summary = train(cfg)
    if summary.get("rank", 0) == 0:  # under torchrun, one table
        print(training_table(summary, attack_name=f"PGD-{summary['eval_steps']}"))
        print(f"run directory: {summary['run_dir']}")
    return 0
