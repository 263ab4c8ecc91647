"""``wpat presets``: the configuration presets shipped with wpat."""

from __future__ import annotations

import argparse


from wpat.configuration.config import PRESET_DIR, list_presets


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="print this preset's YAML")


def run(args: argparse.Namespace) -> int:
    if args.name:
        from wpat.configuration.config import resolve_preset

        print(resolve_preset(args.name).read_text(), end="")
        return 0
    for name in list_presets():
        text = (PRESET_DIR / f"{name}.yaml").read_text()
        first = text.splitlines()[0].lstrip("# ") if text.startswith("#") else ""
        print(f"{name:<28} {first}")
    return 0
