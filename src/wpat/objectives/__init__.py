"""Per-example adversarial training objectives (AT, TRADES, MART), built by name.

Importing this package registers every objective; see :mod:`wpat.objectives.base` for the contract.
"""

from wpat.objectives.at import AT
from wpat.objectives.base import OBJECTIVES, Objective, build_objective
from wpat.objectives.mart import MART
from wpat.objectives.trades import TRADES

__all__ = ["AT", "MART", "OBJECTIVES", "Objective", "TRADES", "build_objective"]
