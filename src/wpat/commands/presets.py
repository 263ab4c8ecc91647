"""``wpat presets``: the configuration presets shipped with wpat."""

from __future__ import annotations

import argparse
import shutil
import textwrap


from wpat.configuration.config import list_presets, preset_description


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="print this preset's YAML")


def run(args: argparse.Namespace) -> int:
    if args.name:
        from wpat.configuration.config import resolve_preset

        print(resolve_preset(args.name).read_text(), end="")
        return 0
    names = list_presets()
    indent = max(map(len, names)) + 2  # one column for the descriptions, however long a name is
    width = max(shutil.get_terminal_size((100, 24)).columns - indent, 40)
    for name in names:
        lines = textwrap.wrap(preset_description(name), width, break_on_hyphens=False) or [""]
        print(f"{name:<{indent}}{lines[0]}".rstrip())
        for line in lines[1:]:
            print(" " * indent + line)
    return 0
