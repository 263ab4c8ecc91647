"""The threat model and the closed sets of values shared by training, evaluation and the config.

Nothing here imports torch: the configuration layer checks its values against these sets.

- :class:`Norm`: the norm of the ε-ball, ``linf`` or ``l2``.
- :class:`BNMode`: the mode the whole model is put in while an attack crafts its examples,
  ``train`` (BatchNorm uses and updates batch statistics, as the authors' AT code) or ``eval``.
- :class:`ThreatModel`: norm, radius ε and PGD step α, in pixel units of inputs in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wpat.helpers.errors import check, check_choice, is_finite


class Choice(str, Enum):
    """A closed set of string values; ``Choice.parse(text, key)`` checks with a one-line error."""

    @classmethod
    def parse(cls, value: "str | Choice", key: str) -> "Choice":
        check_choice(key, value, [m.value for m in cls])
        return cls(value)

    def __str__(self) -> str:
        return self.value


class Norm(Choice):
    LINF = "linf"
    L2 = "l2"


class BNMode(Choice):
    TRAIN = "train"
    EVAL = "eval"


@dataclass(frozen=True)
class ThreatModel:
    """An ε-ball in the given norm, and the PGD step used to search it.

    Args:
        norm: ``Norm.LINF`` or ``Norm.L2`` (a string is accepted and checked).
        eps: radius ε > 0, pixel units of inputs in [0, 1] (papers: 8/255 L∞, 128/255 L2).
        alpha: PGD step size > 0, pixel units (papers: 2/255 L∞, 15/255 L2; SVHN L∞ 1/255).
    """

    norm: Norm
    eps: float
    alpha: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm, "norm"))
        for key in ("eps", "alpha"):
            value = getattr(self, key)
            check(is_finite(value) and value > 0, f"threat model {key}", value,
                  "a number > 0 (pixel units, e.g. 8/255)")
            object.__setattr__(self, key, float(value))

    def as_dict(self) -> dict[str, object]:
        return {"norm": self.norm.value, "eps": self.eps, "alpha": self.alpha}
