"""What an objective needs from the run, checked against the config before any data is read.

An objective declares ``needs`` (:class:`wpat.objectives.Objective`); the assembly
(:mod:`wpat.training.parts`) supplies each one, and :func:`check_needs`, run by the validation
of every config (``experiment.build_components``), refuses in one line a config that cannot
supply them: no weight average (``run.ema`` off, no SWA), a second view with batch mixing or extra
data, a teacher checkpoint that is not there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from wpat.optim.averaging import keeps_average
from wpat.training.batching import extra_batch_size
from wpat.configuration.config import Config, component_options
from wpat.helpers.errors import WpatError
from wpat.objectives import NEEDS, OBJECTIVES, Objective
from wpat.checkpoints.run_dir import find_checkpoint


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
    if "average" in needs and not keeps_average(cfg.run):
        raise WpatError(f"run.ema: objective {name!r} trains towards the weight average; turn it on with its "
                        f"decay, e.g. run.ema=0.999 (or run.average=swa)")
    if "views" in needs and cfg.data.mix != "none":
        raise WpatError(f"data.mix: objective {name!r} reads two augmented views of each batch, which batch "
                        f"mixing does not define; use data.mix=none")
    if "views" in needs and extra_batch_size(cfg):
        raise WpatError(f"data.extra_fraction: objective {name!r} reads two augmented views of each batch, and "
                        f"extra data has one; use data.extra_fraction=0")
    if "teachers" in needs:
        section = teachers_section(cfg)
        for label, path in named_teachers(objective):
            if path is not None:  # an unset teacher is refused when the teachers are loaded
                teacher_file(f"{section}.{label}", path)


def named_teachers(objective: Objective) -> list[tuple[str, str | None]]:
    """(option, path) of each teacher an objective that needs ``teachers`` names, in order: its
    attribute ``teachers`` is a mapping of option names to paths (None: not set yet, as in a
    preset, which cannot ship them), or a sequence of paths (labelled ``teachers[i]``)."""
    teachers = objective.teachers  # type: ignore[attr-defined]
    if isinstance(teachers, Mapping):
        return [(str(k), None if v is None else str(v)) for k, v in teachers.items()]
    return [(f"teachers[{i}]", str(p)) for i, p in enumerate(teachers)]


def teachers_section(cfg: Config) -> str:
    """The config section of the objective that holds the teachers' options: ``objective.<name>``,
    or a wrapper's base's."""
    name = cfg.objective.name
    if name in OBJECTIVES and "objectives" in OBJECTIVES.get(name).needs:
        name = str({**OBJECTIVES.defaults(name), **component_options(cfg.objective)}["base"])
    return f"objective.{name}"


def teacher_file(key: str, path: str | os.PathLike) -> Path:
    """The checkpoint a teacher option names: the file itself, or a run directory's ``best.pt``
    (else its ``last.pt``); one WpatError naming ``key`` if there is none."""
    try:
        return find_checkpoint(path)
    except WpatError as err:
        raise WpatError(f"{key}: teacher {err}") from None
