"""Per-example adversarial training objectives (AT, TRADES, MART), registered in ``OBJECTIVES``,
and their contract (``Objective``, ``Batch``, ``Wrapper``)."""

from wpat.objectives.at import AT
from wpat.objectives.base import NEEDS, OBJECTIVES, Batch, Objective, Supplies, Wrapper
from wpat.objectives.mart import MART
from wpat.objectives.trades import TRADES

__all__ = ["AT", "MART", "NEEDS", "OBJECTIVES", "TRADES", "Batch", "Objective", "Supplies", "Wrapper"]
