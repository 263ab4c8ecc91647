"""User-facing errors, and the one check of a value that raises them.

Anything a user can cause (a bad config value, a missing file, a foreign checkpoint) raises
:class:`WpatError`. The CLI prints its message on one line and exits non-zero; a raw traceback
is shown only with ``--debug``.

Every bad value, whether a config key or a component's option, is reported by :func:`check` in
one format, ``KEY: VALUE is invalid; expected WHAT``, e.g. ``attack.eps: 0.0 is invalid; expected a
number > 0`` or ``RWP c_min: -1.0 is invalid; expected a number >= 0``.
"""

from __future__ import annotations

import math
from typing import Iterable


class WpatError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


def check(ok: bool, key: str, value: object, expected: str) -> None:
    """Raise ``key: value is invalid; expected ...`` as a :class:`WpatError` unless ``ok``."""
    if not ok:
        raise WpatError(f"{key}: {value!r} is invalid; expected {expected}")


def is_number(value: object) -> bool:
    """An int or float that is not a bool (True is not a learning rate); NaN and inf count."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: object) -> bool:
    """A number that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)


def is_count(value: object, minimum: int = 1) -> bool:
    """An int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_choice(key: str, value: object, choices: Iterable[object]) -> None:
    """:func:`check` that ``value`` is one of ``choices`` (``expected one of a, b, c``)."""
    choices = list(choices)
    check(value in choices, key, value, "one of " + ", ".join(map(str, choices)))
