"""Per-example adversarial training objectives (AT, TRADES, MART), registered in ``OBJECTIVES``,
and their contract (``Objective``, ``Batch``, ``Wrapper``).

Every file of this folder is imported here, so a new objective registers itself from its own file.
"""

from wpat.objectives.at import AT
from wpat.objectives.base import NEEDS, OBJECTIVES, Batch, Objective, Supplies, Wrapper
from wpat.objectives.mart import MART
from wpat.objectives.trades import TRADES
from wpat.helpers.registry import import_package

import_package(__name__, __path__)

__all__ = ["AT", "MART", "NEEDS", "OBJECTIVES", "TRADES", "Batch", "Objective", "Supplies", "Wrapper"]
