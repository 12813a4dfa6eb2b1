"""Durations as the public API takes them (``timedelta`` or seconds), validated where they
enter: every duration option goes through ``to_seconds``. No I/O, no imports of the rest of
the package (the exceptions module uses it too).

A duration must be a finite number of seconds between 0 and ``MAX_DURATION_S`` (10 years):
``inf`` and ``nan`` are floats that pass a naive ``>= 0`` check and then fail far from where
they were given (an EXPIRE that overflows after the task succeeded); anything over 10 years is
taken for a mistake (a timestamp passed where a duration belongs).
"""

from __future__ import annotations

import math
from datetime import timedelta

Seconds = timedelta | float
"""A duration: a ``timedelta`` or a number of seconds."""

MAX_DURATION_S = 10 * 365.25 * 24 * 3600
"""The longest duration any option accepts (10 years)."""


def to_seconds(value: Seconds | None, what: str) -> float | None:
    """Normalise a duration to seconds (None stays None); raises ``ValueError`` naming the
    option for anything negative, infinite, not a number or longer than 10 years."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        secs = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            secs = float(value)
        except OverflowError:  # an int too large for a float: far over 10 years
            secs = math.inf if value > 0 else -math.inf
    else:
        raise TypeError(f"{what} must be a number of seconds or a timedelta, got {value!r}")
    if math.isnan(secs) or (math.isinf(secs) and not isinstance(value, int)):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r:.80}")
    if secs < 0:
        raise ValueError(f"{what} must be >= 0, got {value!r:.80}")
    if secs > MAX_DURATION_S:
        raise ValueError(f"{what} must be at most 10 years ({MAX_DURATION_S:.0f} s), got "
                         f"{value!r:.80}: a timestamp passed as a duration?")
    return secs
