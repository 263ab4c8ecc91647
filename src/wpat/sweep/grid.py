"""A sweep's runs planned: the grid expanded with the methods and seeds, named, and validated.

Names: ``perturb.name=awp, perturb.awp.gamma=0.005, seed 1`` -> ``awp__gamma-0.005__seed-1``;
with methods (:mod:`wpat.sweep.methods`) the method comes first: ``trades-awp__seed-1``. A
``name`` key and the method show their value only; any other key its shortest dotted suffix that no other grid
key shares (``gamma``, or ``awp.gamma`` beside ``perturb.rwp.gamma``); values keep only letters,
digits and ``. + - _`` (``8/255`` -> ``8_255``, ``[0.5,0.75]`` -> ``0.5_0.75``), so ``__`` only
ever separates parts. Names that would still collide (also ignoring case) or exceed
:data:`MAX_NAME` characters get a hash of their settings appended: names are deterministic,
filesystem-safe and unique. No torch or Ray at module level.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from wpat.configuration.config import component_sections, load_config
from wpat.helpers.errors import WpatError
from wpat.sweep.methods import METHOD_KEY, Method, check_conflicts
from wpat.sweep.runs import RunSpec, method_of, replicas

# Sections whose `section.component.option` keys belong to one component of a registry.
COMPONENT_SECTIONS = tuple(component_sections())
SEPARATOR = "__"
MAX_NAME = 120  # characters before a name is shortened with a hash


# ---------------------------------------------------------------------- naming


def short_labels(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with:
    ``perturb.awp.gamma`` -> ``gamma``, or ``awp.gamma`` beside ``perturb.rwp.gamma``."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if not any(o != key and (o == label or o.endswith("." + label)) for o in keys):
                break
        labels[key] = label
    return labels


def _safe(text: str) -> str:
    """Letters, digits and ``. _ + -`` only, never two ``_`` in a row (``__`` separates parts):
    ``[0.5,0.75]`` -> ``0.5_0.75``, ``8/255`` -> ``8_255``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.+-]", "_", text)).strip("._") or "_"


def run_names(assignments: Sequence[Mapping[str, str]]) -> list[str]:
    """A directory name per assignment (``{key: value}``, ``run.seed`` last): deterministic,
    filesystem-safe, and unique even where values differ only in unsafe characters or case."""
    keys = [k for k in assignments[0] if k != "run.seed"] if assignments else []
    labels = short_labels(keys)

    def part(key: str, value: str) -> str:
        if key == "run.seed":
            return f"seed-{value}"
        shown = key == METHOD_KEY or key.endswith(".name")
        return _safe(value) if shown else f"{_safe(labels[key])}-{_safe(value)}"

    def digest(a: Mapping[str, str]) -> str:
        return hashlib.sha1(json.dumps(list(a.items())).encode()).hexdigest()[:8]

    names = [SEPARATOR.join(part(k, v) for k, v in a.items()) for a in assignments]
    names = [n if len(n) <= MAX_NAME else f"{n[:MAX_NAME]}-h{digest(a)}" for n, a in zip(names, assignments)]
    folded = [n.lower() for n in names]
    return [f"{n}-h{digest(a)}" if folded.count(n.lower()) > 1 else n
            for n, a in zip(names, assignments)]


def expand(grid: Mapping[str, Sequence[str]], seeds: Sequence[int],
           methods: Sequence[Method] = ()) -> list[dict[str, str]]:
    """Every combination of the methods (slowest) and the grid's values (first key slowest),
    each with every seed."""
    axes = {**({METHOD_KEY: [m.name for m in methods]} if methods else {}), **grid}
    combos = itertools.product(*axes.values(), seeds)
    return [{**dict(zip(axes, combo[:-1])), "run.seed": str(combo[-1])} for combo in combos]


# ---------------------------------------------------------------------- validation


def _checked(config: str | None, overrides: Sequence[str]) -> WpatError | None:
    """The error of building ``config`` with ``overrides`` and its components, or None."""
    from wpat.training import experiment

    try:
        experiment.check_components(load_config(config, overrides))
    except WpatError as err:
        return err
    return None


def _blame(config: str | None, overrides: Sequence[str], settings: Sequence[str]) -> str | None:
    """The first of a failed run's grid settings that fails on the (valid) base config alone,
    as ``--grid KEY=VALUE: error``; None if the failure needs the combination."""
    for setting in settings:
        err = _checked(config, [*overrides, setting])
        if err is not None:
            return f"--grid {setting}: {err}"
    return None


def _check_used(grid: Mapping[str, Sequence[str]], specs: Sequence[RunSpec]) -> None:
    """A component option in the grid whose component no run selects changes nothing."""
    for key in grid:
        section, *rest = key.split(".")
        if len(rest) == 2 and section in COMPONENT_SECTIONS and \
                not any(spec.config[section]["name"] == rest[0] for spec in specs):
            raise WpatError(f"--grid {key}: no run selects {section}.name={rest[0]}, so its values "
                            f"would change nothing (add {section}.name={rest[0]} to the overrides or the grid)")


def plan(config: str | None, overrides: Sequence[str], grid: Mapping[str, Sequence[str]],
         seeds: Sequence[int], sweep_dir: str | os.PathLike, extra: Sequence[str] = (),
         methods: Sequence[Method] = ()) -> list[RunSpec]:
    """Validate the sweep and return its runs, before any of them starts.

    Every run's config is built (``load_config`` of its method's preset or ``config``, with the
    method's settings, ``overrides``, the run's grid settings (which win over a method's), its
    seed, name and directory, and
    ``extra`` run-time settings such as ``run.threads=1``) and checked by
    ``experiment.check_components`` (every component built, the model without weights). The
    first failure is a :class:`WpatError` of one line naming the method (``--methods NAME:
    ...``) or grid value at fault (``--grid KEY=VALUE: ...``) or, when only the combination
    fails, the run and its settings. A component option in the grid whose component no run
    selects is an error too, and so are two methods whose runs compute the same."""
    from wpat.training import experiment

    check_conflicts(methods, overrides)
    base_ok = _checked(config, overrides) is None  # if not, perhaps a grid value makes it whole
    starts: dict[str | None, tuple[str | None, list[str], bool]] = {None: (config, list(overrides), base_ok)}
    for method in methods:
        source, settings = method.base or config, [*method.settings, *overrides]
        err = _checked(source, settings)
        if err is not None and (method.base or base_ok):
            raise WpatError(f"--methods {method.name} ({method.describe()}): {err}")
        starts[method.name] = (source, settings, err is None)
    sweep_dir = Path(sweep_dir).resolve()
    assignments = expand(grid, seeds, methods)
    specs = []
    for assignment, name in zip(assignments, run_names(assignments)):
        settings = [f"{k}={v}" for k, v in assignment.items()]
        source, shared, start_ok = starts[assignment.get(METHOD_KEY)]
        grid_settings = [s for s in settings[:-1] if not s.startswith(f"{METHOD_KEY}=")]
        try:
            cfg = load_config(source, [*shared, *grid_settings, settings[-1], f"run.out_dir={sweep_dir}",
                                       f"run.name={name}", *extra])
            experiment.check_components(cfg)
        except WpatError as err:
            blame = _blame(source, shared, grid_settings) if start_ok else None
            raise WpatError(blame or f"run {name} ({', '.join(settings)}): {err}") from None
        specs.append(RunSpec(name, settings, str(sweep_dir / name), cfg.to_dict()))
    _check_used(grid, specs)
    _check_distinct(specs)
    return specs


def _check_distinct(specs: Sequence[RunSpec]) -> None:
    """Two methods whose runs at the same grid point and seed compute the same thing would be
    one row of a report under two names: refused."""
    by_name = {s.name: s for s in specs}

    def method_and_point(spec: RunSpec) -> tuple[str | None, list[str]]:
        return method_of(spec.settings), [s for s in spec.settings if not s.startswith(f"{METHOD_KEY}=")]

    for name, earlier in replicas(specs):
        (a, point_a), (b, point_b) = method_and_point(by_name[name]), method_and_point(by_name[earlier])
        if a != b and point_a == point_b:
            raise WpatError(f"--methods {b} and {a} compute the same runs (e.g. {earlier} and {name}); "
                            f"drop one of them")


