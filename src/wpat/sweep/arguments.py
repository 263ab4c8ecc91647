"""The sweep's command-line words: ``--grid KEY=V1,V2``, ``--seeds 0-4`` and ``--methods ...``.

``--methods`` names methods as :mod:`wpat.sweep.methods` describes (library bundles, groups,
method files, ``NAME=SETTING,...`` on the command line, presets, ``OBJECTIVE[-PERTURBATION]``);
this module turns the words into :class:`~wpat.sweep.methods.Method` values, each once.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from wpat.helpers.errors import WpatError
from wpat.sweep.methods import Library, Method, check_name, check_setting, read_method_file

RESERVED = {"run.seed": "use --seeds", "run.name": "runs are named after their settings",
            "run.out_dir": "runs go into the sweep directory (--out/--name)"}


def split_values(text: str) -> list[str]:
    """``"0.005,0.01"`` -> ["0.005", "0.01"]; commas inside brackets are kept:
    ``"[0.5,0.75],[0.3,0.6]"`` -> ["[0.5,0.75]", "[0.3,0.6]"]."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(items: Iterable[str]) -> dict[str, list[str]]:
    """``["perturb.name=awp,rwp", "perturb.awp.gamma=0.005,0.01"]`` -> {key: [values]}, in order."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        values = split_values(text)
        if not sep or not key or any(v == "" for v in values):
            raise WpatError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. perturb.awp.gamma=0.005,0.01)")
        if key in RESERVED:
            raise WpatError(f"--grid {key}: not a grid key ({RESERVED[key]})")
        if key in grid:
            raise WpatError(f"--grid {key}: given twice; put all its values in one --grid {key}=V1,V2")
        if len(set(values)) < len(values):
            raise WpatError(f"--grid {item!r}: a value is repeated")
        grid[key] = values
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (both ends included) -> seeds, each an integer ≥ 0, distinct."""
    try:
        if re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", text):
            first, last = (int(t) for t in text.split("-"))
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(t) for t in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise WpatError(f"--seeds {text!r}: expected distinct integers >= 0, e.g. 0,1,2 or 0-4")
    return seeds



def _split_items(items: Sequence[str]) -> list[str]:
    """``["at,at-awp", "x=a,b=1;y=c"]`` -> ["at", "at-awp", "x=a,b=1", "y=c"]."""
    words = []
    for item in items:
        for part in (p.strip() for p in item.split(";")):
            if not part:
                continue
            words += [part] if "=" in part else [w for w in split_values(part) if w]
    return words


def _inline(word: str, library: Library) -> Method:
    """``NAME=FIRST,KEY=VALUE,...``: FIRST is a setting or a method/preset to start from."""
    name, _, text = word.partition("=")
    name = check_name(name.strip(), "--methods")
    where = f"--methods {name}"
    parts = split_values(text)
    if not parts or any(not p for p in parts):
        raise WpatError(f"{where}: expected NAME=SETTING,SETTING,... (e.g. awp2=at-awp,perturb.awp.steps=2)")
    base, settings = None, []
    if "=" not in parts[0]:
        start = library.resolve_one(parts[0], f"{where}: starts from", (name,))
        base, settings, parts = start.base, list(start.settings), parts[1:]
    settings += [check_setting(p, where) for p in parts]
    return Method(name, base, tuple(settings), word)


def parse_methods(items: Sequence[str], library: Library | None = None) -> list[Method]:
    """The methods of ``--methods`` items (see the module docstring), in order, each once; a
    name given twice for different methods, or an unknown one, is a one-line error."""
    words = _split_items(items)
    files = [w for w in words if "=" not in w and w.endswith((".yaml", ".yml"))]
    library = library or Library(files)
    groups = library.groups()
    methods: list[Method] = []
    for word in words:
        if "=" in word:
            chosen = [_inline(word, library)]
        elif word in files:
            chosen = [library.method(n) for n in read_method_file(word)]
        elif word in groups and word not in library.raw:
            chosen = [library.method(n) for n in groups[word]]
        else:
            chosen = [library.resolve_one(word, "--methods")]
        for method in chosen:
            same = next((m for m in methods if m.name == method.name), None)
            if same is None:
                methods.append(method)
            elif same.definition() != method.definition():
                raise WpatError(f"--methods {method.name}: named twice with different settings "
                                f"({same.describe()} / {method.describe()})")
    if not methods:
        raise WpatError("--methods: no method given")
    return methods

