"""Per-example adversarial training objectives (AT, TRADES, MART), registered in ``OBJECTIVES``.

Every file of this folder is imported here, so a new objective registers itself from its own file.
"""

from wpat.objectives.at import AT
from wpat.objectives.base import OBJECTIVES, Objective
from wpat.objectives.mart import MART
from wpat.objectives.trades import TRADES
from wpat.registry import import_package

import_package(__name__, __path__)

__all__ = ["AT", "MART", "OBJECTIVES", "Objective", "TRADES"]
