"""Seeds derived from a run's seed, for streams that must not depend on one another.

A stream keyed by ``(run seed, epoch, ...)`` is the same however much of the other streams a run
consumed before it: the data loader's order and augmentation per epoch, and the per-epoch
evaluation's PGD starts with ``eval.own_rng``.
"""

from __future__ import annotations

import numpy as np


def derived_seed(*key: int) -> int:
    """A 64-bit seed for a tuple of non-negative integers. NumPy's SeedSequence mixes the key, so
    nearby keys give unrelated streams and no two keys share one by simple arithmetic (as
    ``seed * K + epoch`` would)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0])
