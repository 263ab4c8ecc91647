"""What an objective needs from the run, checked against the config before any data is read.

An objective declares ``needs`` (:class:`wpat.objectives.Objective`); the assembly
(:mod:`wpat.training.parts`) supplies each one, and :func:`check_needs`, run by the validation
of every config (``experiment.build_components``), refuses in one line a config that cannot
supply them: the weight average with ``run.ema`` off, a second view with batch mixing or extra
data, a teacher checkpoint that is not there.
"""

from __future__ import annotations

from pathlib import Path

from wpat.training.batching import extra_batch_size
from wpat.configuration.config import Config
from wpat.helpers.errors import WpatError
from wpat.objectives import NEEDS, Objective


def views_needed(objective: Objective) -> int:
    """Augmented views of each batch the objective reads: 2 when it needs ``views``, else 1."""
    return 2 if "views" in objective.requirements() else 1


def check_needs(cfg: Config, objective: Objective) -> None:
    """One WpatError naming the config key when ``cfg`` cannot supply what ``objective`` needs."""
    name = cfg.objective.name
    needs = objective.requirements()
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise WpatError(f"objective.{name}: needs {', '.join(map(repr, unknown))}, which wpat does not supply "
                        f"(it supplies {', '.join(NEEDS)})")
    if "average" in needs and not cfg.run.ema:
        raise WpatError(f"run.ema: objective {name!r} trains towards the weight average; turn it on with its "
                        f"decay, e.g. run.ema=0.999")
    if "views" in needs and cfg.data.mix != "none":
        raise WpatError(f"data.mix: objective {name!r} reads two augmented views of each batch, which batch "
                        f"mixing does not define; use data.mix=none")
    if "views" in needs and extra_batch_size(cfg):
        raise WpatError(f"data.extra_fraction: objective {name!r} reads two augmented views of each batch, and "
                        f"extra data has one; use data.extra_fraction=0")
    if "teachers" in needs:
        for path in objective.teachers:  # type: ignore[attr-defined]
            if not Path(path).is_file():
                raise WpatError(f"objective.{name}: teacher checkpoint not found: {path}")
