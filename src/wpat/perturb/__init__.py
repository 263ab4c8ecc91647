"""Weight perturbations for adversarial training: AWP, RWP, AWP-LSC and random.

Build one by name (``"none"`` is the caller's business: no perturbation object at all)::

    perturbation = build_perturbation("rwp", gamma=0.01, c_min=1.7)
    v = perturbation.compute(model, loss_fn)     # model, .grad and buffers left untouched
    with perturbed(model, v):                    # step at w + v, then v is subtracted
        ...

See ``base.py`` for the contract, ``ascent.py`` for the search AWP/AWP-LSC/RWP share.
"""

from __future__ import annotations

import inspect
from typing import Any

from wpat.errors import WpatError
from wpat.perturb.awp import AWP
from wpat.perturb.base import (PERTURBATIONS, WeightPerturbation, add_perturbation, perturbed,
                               perturbed_parameters)
from wpat.perturb.lsc import LSCRangeAWP
from wpat.perturb.random import RandomWP
from wpat.perturb.rwp import RWP

__all__ = ["AWP", "LSCRangeAWP", "PERTURBATIONS", "RWP", "RandomWP", "WeightPerturbation",
           "add_perturbation", "build_perturbation", "perturbed", "perturbed_parameters"]


def build_perturbation(name: str, **kwargs: Any) -> WeightPerturbation:
    """The perturbation registered as ``name`` (awp, awp-lsc, random, rwp) built with ``kwargs``."""
    cls = PERTURBATIONS.get(name)
    try:
        # Checks the caller's keywords only, so a bug inside a constructor still surfaces.
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise WpatError(f"perturbation {name!r}: bad arguments {sorted(kwargs)}: {e}") from None
    return cls(**kwargs)
