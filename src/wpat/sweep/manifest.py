"""``sweep.json``: the record of a sweep directory (its base config, grid, methods, seeds and
each run's settings, directory and latest result), written atomically and grown, never
rewritten with another base, by each invocation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from wpat.configuration.config import load_config
from wpat.helpers.errors import WpatError
from wpat.helpers.fs import write_text_atomic
from wpat.sweep.methods import Method
from wpat.sweep.runs import RunSpec, resolved, setting_of

MANIFEST = "sweep.json"
FORMAT = "wpat-sweep-v1"


def write_manifest(sweep_dir: str | os.PathLike, config: str | None, overrides: Sequence[str],
                   grid: Mapping[str, Sequence[str]], seeds: Sequence[int], specs: Sequence[RunSpec],
                   resources: Mapping[str, Any] | None = None,
                   results: Mapping[str, Mapping[str, Any]] | None = None,
                   methods: Sequence[Method] = ()) -> Path:
    """Write ``sweep.json`` atomically: base config (as given and resolved), grid, methods
    (name -> preset and settings), seeds, and each run's settings and directory (relative to
    the sweep directory), with its latest result once known. Returns its path.

    A sweep directory holds one base setting: an existing manifest of another base config, or
    one that defines a method of the same name with other settings, is a :class:`WpatError`.
    With the same base, its runs and methods that this invocation lacks are kept (a sweep
    re-invoked with more seeds, values or methods grows; ``grid`` and ``seeds`` are the latest
    ones)."""
    sweep_dir = Path(sweep_dir)
    base = load_config(config, overrides).to_dict()
    path = sweep_dir / MANIFEST
    before = read_manifest(sweep_dir) if path.exists() else {"runs": [], "methods": {}}
    earlier = before["runs"]
    if earlier:
        old, new = setting_of(resolved(before["base"])), setting_of(base)
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if differ:
            raise WpatError(f"{sweep_dir} holds a sweep of another base config (it differs in "
                            f"{', '.join(differ)}); choose another --name or --out")
    defined = dict(before.get("methods") or {})
    for method in methods:
        if method.name in defined and defined[method.name] != method.definition():
            raise WpatError(f"{sweep_dir} holds runs of another method named {method.name} "
                            f"({defined[method.name]}); rename the method or choose another --name or --out")
        defined[method.name] = method.definition()
    runs = [{"name": s.name, "dir": s.name, "settings": s.settings,
             **({"result": results[s.name]} if results and s.name in results else {})} for s in specs]
    runs += [r for r in earlier if r["name"] not in {s.name for s in specs}]
    manifest = {"format": FORMAT, "config": config, "overrides": list(overrides), "base": base,
                "grid": dict(grid), **({"methods": defined} if defined else {}), "seeds": list(seeds),
                "resources": dict(resources or {}), "runs": runs}
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
