"""Per-example adversarial training objectives (AT, TRADES, MART), registered in ``OBJECTIVES``."""

from wpat.objectives.at import AT
from wpat.objectives.base import OBJECTIVES, Objective
from wpat.objectives.mart import MART
from wpat.objectives.trades import TRADES

__all__ = ["AT", "MART", "OBJECTIVES", "Objective", "TRADES"]
