"""A sweep's runs and what each computes: :class:`RunSpec`, and a run's setting (its resolved
config without what only says where or how it runs), by which replicas are told apart.
No torch or Ray at module level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from wpat.configuration.config import config_from_dict, non_identity_keys
from wpat.sweep.methods import METHOD_KEY

# Settings that say where or how a run executes, never what it computes (marked so in the config's
# fields): runs that differ only in these are replicas of one experiment.
IGNORED_KEYS = tuple(non_identity_keys())


@dataclass
class RunSpec:
    """One run of a sweep: its directory name, its grid settings and its resolved config."""

    name: str
    settings: list[str]  # method=NAME (with methods), the grid's KEY=VALUE for this run, then run.seed=N
    run_dir: str  # absolute path
    config: dict[str, Any]  # Config.to_dict() of the run, as its worker rebuilds it



def method_of(settings: Sequence[str]) -> str | None:
    """The method of a run from its settings (``method=NAME``, as the manifest records
    them); None for a run of a sweep without methods."""
    prefix = f"{METHOD_KEY}="
    return next((s[len(prefix):] for s in settings if s.startswith(prefix)), None)



def setting_of(tree: Mapping[str, Any]) -> dict[str, Any]:
    """What a run computes: its resolved config tree (``Config.to_dict()``) as ``section.key``
    entries, without :data:`IGNORED_KEYS` and without the options of components it does not
    select (``perturb.rwp.*`` of an AWP run never reaches it). A selected wrapper's base is
    selected too (``objective.trades.*`` of consistency on TRADES)."""
    flat = {}
    for section, values in tree.items():
        selected = values.get("name")
        base = values.get(selected, {}).get("base") if isinstance(values.get(selected), dict) else None
        for key, value in values.items():
            if isinstance(value, dict):
                if key in (selected, base):
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
