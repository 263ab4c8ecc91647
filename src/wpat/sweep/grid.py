"""A sweep's runs: the grid parsed, expanded with the seeds, named, validated, and recorded.

Names: ``perturb.name=awp, perturb.awp.gamma=0.005, seed 1`` -> ``awp__gamma-0.005__seed-1``. A
``name`` key shows its value only; any other key its shortest dotted suffix that no other grid
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from wpat.config import component_sections, config_from_dict, load_config, non_identity_keys
from wpat.errors import WpatError
from wpat.fs import write_text_atomic

MANIFEST = "sweep.json"
FORMAT = "wpat-sweep-v1"
RESERVED = {"run.seed": "use --seeds", "run.name": "runs are named after their settings",
            "run.out_dir": "runs go into the sweep directory (--out/--name)"}
# Sections whose `section.component.option` keys belong to one component of a registry.
COMPONENT_SECTIONS = tuple(component_sections())
# Settings that say where or how a run executes, never what it computes (marked so in the config's
# fields): runs that differ only in these are replicas of one experiment.
IGNORED_KEYS = tuple(non_identity_keys())
SEPARATOR = "__"
MAX_NAME = 120  # characters before a name is shortened with a hash


@dataclass
class RunSpec:
    """One run of a sweep: its directory name, its grid settings and its resolved config."""

    name: str
    settings: list[str]  # the grid's KEY=VALUE for this run, then run.seed=N
    run_dir: str  # absolute path
    config: dict[str, Any]  # Config.to_dict() of the run, as its worker rebuilds it


# ---------------------------------------------------------------------- parsing


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
        return _safe(value) if key.endswith(".name") else f"{_safe(labels[key])}-{_safe(value)}"

    def digest(a: Mapping[str, str]) -> str:
        return hashlib.sha1(json.dumps(list(a.items())).encode()).hexdigest()[:8]

    names = [SEPARATOR.join(part(k, v) for k, v in a.items()) for a in assignments]
    names = [n if len(n) <= MAX_NAME else f"{n[:MAX_NAME]}-h{digest(a)}" for n, a in zip(names, assignments)]
    folded = [n.lower() for n in names]
    return [f"{n}-h{digest(a)}" if folded.count(n.lower()) > 1 else n
            for n, a in zip(names, assignments)]


def expand(grid: Mapping[str, Sequence[str]], seeds: Sequence[int]) -> list[dict[str, str]]:
    """Every combination of the grid's values (first key slowest), each with every seed."""
    combos = itertools.product(*grid.values(), seeds)
    return [{**dict(zip(grid, combo[:-1])), "run.seed": str(combo[-1])} for combo in combos]


# ---------------------------------------------------------------------- validation


def _blame(config: str | None, overrides: Sequence[str], settings: Sequence[str]) -> str | None:
    """The first of a failed run's grid settings that fails on the (valid) base config alone,
    as ``--grid KEY=VALUE: error``; None if the failure needs the combination."""
    from wpat import experiment

    for setting in settings:
        try:
            experiment.check_components(load_config(config, [*overrides, setting]))
        except WpatError as err:
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
         seeds: Sequence[int], sweep_dir: str | os.PathLike, extra: Sequence[str] = ()) -> list[RunSpec]:
    """Validate the sweep and return its runs, before any of them starts.

    Every run's config is built (``load_config`` with ``overrides``, the run's settings, its
    seed, name and directory, and ``extra`` run-time settings such as ``run.threads=1``) and
    checked by ``experiment.check_components`` (every component built, the model without
    weights). The first failure is a :class:`WpatError` of
    one line naming the grid value at fault (``--grid KEY=VALUE: ...``) or, when only the
    combination fails, the run and its settings. A component option in the grid whose
    component no run selects is an error too."""
    from wpat import experiment

    base = load_config(config, overrides)
    try:
        experiment.check_components(base)
        base_ok = True
    except WpatError:
        base_ok = False  # perhaps a grid value makes it whole; each run says
    sweep_dir = Path(sweep_dir).resolve()
    assignments = expand(grid, seeds)
    specs = []
    for assignment, name in zip(assignments, run_names(assignments)):
        settings = [f"{k}={v}" for k, v in assignment.items()]
        try:
            cfg = load_config(config, [*overrides, *settings, f"run.out_dir={sweep_dir}",
                                       f"run.name={name}", *extra])
            experiment.check_components(cfg)
        except WpatError as err:
            blame = _blame(config, overrides, settings[:-1]) if base_ok else None
            raise WpatError(blame or f"run {name} ({', '.join(settings)}): {err}") from None
        specs.append(RunSpec(name, settings, str(sweep_dir / name), cfg.to_dict()))
    _check_used(grid, specs)
    return specs


def write_manifest(sweep_dir: str | os.PathLike, config: str | None, overrides: Sequence[str],
                   grid: Mapping[str, Sequence[str]], seeds: Sequence[int], specs: Sequence[RunSpec],
                   resources: Mapping[str, Any] | None = None,
                   results: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write ``sweep.json`` atomically: base config (as given and resolved), grid, seeds, and
    each run's settings and directory (relative to the sweep directory), with its latest
    result once known. Returns its path.

    A sweep directory holds one base setting: an existing manifest of another base config is a
    :class:`WpatError`. With the same base, its runs that ``specs`` lack are kept (a sweep
    re-invoked with more seeds or values grows; ``grid`` and ``seeds`` are the latest ones)."""
    sweep_dir = Path(sweep_dir)
    base = load_config(config, overrides).to_dict()
    path = sweep_dir / MANIFEST
    earlier = read_manifest(sweep_dir)["runs"] if path.exists() else []
    if earlier:
        old, new = setting_of(resolved(read_manifest(sweep_dir)["base"])), setting_of(base)
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if differ:
            raise WpatError(f"{sweep_dir} holds a sweep of another base config (it differs in "
                            f"{', '.join(differ)}); choose another --name or --out")
    runs = [{"name": s.name, "dir": s.name, "settings": s.settings,
             **({"result": results[s.name]} if results and s.name in results else {})} for s in specs]
    runs += [r for r in earlier if r["name"] not in {s.name for s in specs}]
    manifest = {"format": FORMAT, "config": config, "overrides": list(overrides), "base": base,
                "grid": dict(grid), "seeds": list(seeds), "resources": dict(resources or {}), "runs": runs}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a sweep directory, or a one-line error."""
    path = Path(sweep_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WpatError(f"{path}: not a readable sweep manifest ({err.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise WpatError(f"{path}: not a wpat sweep manifest (format {FORMAT!r})")
    return manifest


# ---------------------------------------------------------------------- settings


def setting_of(tree: Mapping[str, Any]) -> dict[str, Any]:
    """What a run computes: its resolved config tree (``Config.to_dict()``) as ``section.key``
    entries, without :data:`IGNORED_KEYS` and without the options of components it does not
    select (``perturb.rwp.*`` of an AWP run never reaches it)."""
    flat = {}
    for section, values in tree.items():
        for key, value in values.items():
            if isinstance(value, dict):
                if key == values.get("name"):
                    flat.update({f"{section}.{key}.{o}": v for o, v in value.items()})
            elif f"{section}.{key}" not in IGNORED_KEYS:
                flat[f"{section}.{key}"] = value
    return flat


def resolved(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A config tree written by this or an earlier wpat, with the settings it predates at their
    defaults: the tree a run's config has today, to compare with :func:`setting_of`."""
    return config_from_dict(dict(tree)).to_dict()


def replicas(specs: Sequence[RunSpec]) -> list[tuple[str, str]]:
    """Pairs (run, earlier run) of a sweep that compute the same thing with the same seed,
    e.g. ``perturb.name=none`` runs that differ only in ``perturb.awp.gamma``."""
    seen: dict[str, str] = {}
    pairs = []
    for spec in specs:
        key = json.dumps([spec.config["run"]["seed"], sorted(setting_of(spec.config).items())], default=str)
        if key in seen:
            pairs.append((spec.name, seen[key]))
        seen.setdefault(key, spec.name)
    return pairs
