"""Sweeps: methods × a grid of config settings × seeds, expanded to named runs and run to completion.

    grid = parse_grid(["perturb.name=awp,rwp", "perturb.awp.gamma=0.005,0.01"])
    specs = plan("fmnist-smallcnn-linf", [], grid, [0, 1, 2], "runs/gamma-sweep")
    write_manifest("runs/gamma-sweep", "fmnist-smallcnn-linf", [], grid, [0, 1, 2], specs)
    results = run_local(specs, print)        # or run_with_ray(specs, print, cpus=1, gpus=0.25)

    methods = parse_methods(["leaderboard"])   # AT, TRADES, MART x none, AWP, RWP
    specs = plan("fmnist-mlp-linf-overfit", [], {}, [0, 1, 2], "runs/lb", methods=methods)

``methods.py``: method bundles (an objective, a perturbation and their options, or a whole
preset) named from wpat's library, a file or the command line, as one axis of the sweep.

``arguments.py``: the words of ``--grid``, ``--seeds`` and ``--methods``.
``grid.py``: each run gets a readable directory name from its settings (``awp__gamma-0.005__seed-1``);
:func:`plan` builds every run's config with ``load_config`` and ``experiment.build_components``
before anything runs, so a bad key or value fails at once with one line. ``runs.py``: a run
(:class:`RunSpec`) and what it computes (:func:`setting_of`), by which replicas are found.
``manifest.py``: ``sweep.json`` in the sweep directory records the base config, the grid, the
seeds and each run's settings and directory. ``runner.py``: :func:`execute` trains, resumes or skips one run and never raises, so
one failed run never stops the others. No torch or Ray at module level: both are imported where
a run is checked or executed (``wpat sweep`` builds its parser without them).
"""

from wpat.sweep.arguments import parse_grid, parse_methods, parse_seeds, split_values
from wpat.sweep.grid import COMPONENT_SECTIONS, expand, plan, run_names, short_labels
from wpat.sweep.manifest import FORMAT, MANIFEST, read_manifest, write_manifest
from wpat.sweep.methods import METHOD_KEY, Library, Method, list_methods
from wpat.sweep.runs import IGNORED_KEYS, RunSpec, method_of, replicas, setting_of
from wpat.sweep.runner import Result, execute, one_line, run_local, run_with_ray

__all__ = [
    "COMPONENT_SECTIONS", "FORMAT", "IGNORED_KEYS", "Library", "MANIFEST", "METHOD_KEY", "Method",
    "Result", "RunSpec", "execute", "expand", "list_methods", "method_of", "one_line", "parse_grid",
    "parse_methods", "parse_seeds", "plan", "read_manifest", "replicas", "run_local", "run_names",
    "run_with_ray", "setting_of", "short_labels", "split_values", "write_manifest",
]
