"""Weight perturbations for adversarial training: AWP, RWP, AWP-LSC and random.

Build one by name from ``PERTURBATIONS`` (a config's ``perturb.name=none`` builds None through
``PERTURBATIONS.build_from``: no perturbation object at all)::

    perturbation = PERTURBATIONS.build("rwp", gamma=0.01, c_min=1.7)
    result = perturbation.compute(model, loss_fn)   # model, .grad and buffers left untouched
    with perturbed(model, result.v):                # step at w + v, then v is subtracted
        ...

See ``base.py`` for the contract, ``ascent.py`` for the search AWP/AWP-LSC/RWP share. Every file
of this folder is imported here, so a new perturbation registers itself from its own file.
"""

from wpat.perturb.awp import AWP
from wpat.perturb.ascent import MaskedAscent
from wpat.perturb.base import (PERTURBATIONS, Perturbation, WeightPerturbation, add_perturbation,
                               held_at, perturbed, perturbed_parameters)
from wpat.perturb.lsc import LSCRangeAWP
from wpat.perturb.random_direction import RandomWP
from wpat.perturb.rwp import RWP
from wpat.helpers.registry import import_package

import_package(__name__, __path__)

__all__ = ["AWP", "LSCRangeAWP", "MaskedAscent", "PERTURBATIONS", "Perturbation", "RWP", "RandomWP",
           "WeightPerturbation", "add_perturbation", "held_at", "perturbed", "perturbed_parameters"]
