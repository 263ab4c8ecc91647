"""The ``wpat`` command line (also ``python -m wpat``, and ``torchrun ... -m wpat train``).

Commands: ``train``, ``eval``, ``presets``, ``landscape``, ``lsc``, ``plot``, ``export``,
``sweep``, ``report``, ``sensitivity``, ``pseudolabel`` (``COMMANDS`` below says what each does).
Each subcommand lives in :mod:`wpat.commands` as a module with ``configure(parser)`` and
``run(args) -> int``; this file only dispatches. User errors (:class:`WpatError`) print one line
and exit with status 2; ``--debug`` shows the traceback instead. Under ``torchrun`` only rank 0
prints the error line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from wpat import __version__
from wpat.helpers.errors import WpatError

COMMANDS = {
    "train": "train a model (AT/TRADES/MART with AWP/RWP/...) from a preset or YAML config",
    "eval": "robustness of a run's best/last checkpoints under the attacks of Table 2 (FGSM ... AA)",
    "presets": "list the configuration presets shipped with wpat",
    "landscape": "weight loss landscape of checkpoints (AWP Algorithm 1)",
    "lsc": "training adversarial losses in LSC groups per epoch (RWP Fig. 1c)",
    "plot": "learning curves of runs on one figure, weight histograms",
    "export": "a run's model for RobustBench's model zoo: state_dict + model_info JSON",
    "sweep": "train a grid of settings x seeds, with Ray (or --local), resuming unfinished runs",
    "report": "mean ± std over seeds of runs/sweeps as RWP Table 1 / AWP Table 4, ablation plots",
    "sensitivity": "adversarial loss under AWP vs random weight perturbations over gamma (AWP Fig. 3a)",
    "pseudolabel": "label unlabeled extra images (.npz or RST's pickle) with a trained model, resumably",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wpat", description="Adversarial training with weight perturbation.")
    parser.add_argument("--version", action="version", version=f"wpat {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"wpat.commands.{name}")
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
        module.configure(command)
        command.set_defaults(handler=module.run)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; KEY=VALUE overrides may also follow the options
    (``wpat train PRESET --no-progress run.seed=1``), which argparse alone refuses."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.parse_args(argv)  # argparse's own usage line and exit status 2
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = parse(argv)
        return int(args.handler(args) or 0)
    except WpatError as err:
        if debug:
            traceback.print_exc()
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: one message
            print(f"wpat: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `wpat presets | head`: the reader left, which is not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("wpat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
