"""Shared rate limits: the spec parser and the decisions, all pure (no Redis, no clock).

A task declares ``rate_limit="10/s"`` (per second, minute or hour) and optionally
``rate_key=`` (a function of the job's arguments: one limit per customer, per provider...).
Every worker of the queue shares the limit through one Redis key per (task, key) holding
the *theoretical arrival time* (TAT) of GCRA with no burst: the earliest time the next job
may start. rate.lua applies ``gcra`` atomically with Redis's clock; this module holds the
same rule for tests and for the reader.

A job over its limit is given the next free slot (the TAT, which then moves on by one
interval), is moved to the delayed set until that slot with the slot noted on its record
(``rs``), and is not counted as an attempt. When it is delivered again start.lua hands the
noted slot back and clears it; ``keeps_slot`` then lets it run without asking Redis again.
So a flood of N jobs costs N checks, once each, and the scheduler releases them at the
allowed rate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._text import safe_str
from .exceptions import ConfigurationError

RateKey = Callable[..., "str | int"]
"""A function of a job's arguments (the task's own, without the context) returning the
key its limit is counted under."""

PERIODS_S: Mapping[str, int] = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
}
"""The period names a spec may use, in seconds."""

MAX_COUNT = 1_000_000
"""The largest count a spec may name (one job per microsecond per second)."""

LATE_GRACE_MS = 500
"""How late a deferred job may be delivered (after its slot) and still keep its slot: a
job later than this (or than one interval, if that is longer) lost its slot to a stall and
is checked again, so a stall bunches at most this much of the schedule together."""

TOLERANCE_US = 1000
"""How far ahead of its exact slot a job may start: one millisecond, the precision of the
delayed set a deferred job waits in. Without it, jobs started together (one script call,
one Redis clock reading) under a limit of thousands a second would be deferred by a few
microseconds each; with it, a window of any length holds at most 1 ms worth of jobs more
than the limit says (at 10/s, none: the interval is 100 ms)."""

_SPEC = re.compile(r"\s*(\d{1,7})\s*/\s*([a-z]+)\s*")


class RateKeyError(Exception):
    """A job's rate key could not be computed (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``count`` jobs per ``period_s`` seconds, evenly spaced (one every ``interval_us``)."""

    count: int
    period_s: int
    spec: str

    @property
    def interval_us(self) -> int:
        """Microseconds between two jobs, rounded up (the limit is never exceeded)."""
        return math.ceil(self.period_s * 1_000_000 / self.count)


def parse_rate(spec: object) -> RateLimit:
    """Read ``"<count>/<period>"`` (``10/s``, ``100/minute``, ``5/h``); anything else is a
    ``ConfigurationError`` with a one-line message."""
    if not isinstance(spec, str):
        raise ConfigurationError(f"rate_limit must be a str such as '10/s', not {spec!r:.80}")
    found = _SPEC.fullmatch(spec.lower())
    period = PERIODS_S.get(found.group(2)) if found else None
    if found is None or period is None:
        raise ConfigurationError(
            f"rate_limit {spec!r:.80} is not '<count>/<period>' with period s, m or h "
            "(e.g. '10/s', '100/m', '5/h')")
    count = int(found.group(1))
    if not 1 <= count <= MAX_COUNT:
        raise ConfigurationError(
            f"rate_limit {spec!r:.80}: the count must be between 1 and {MAX_COUNT:,}")
    return RateLimit(count, period, spec.strip())


@dataclass(frozen=True, slots=True)
class Verdict:
    """One GCRA decision: run now, or at ``slot_us``; the limit's TAT afterwards."""

    allowed: bool
    slot_us: int
    tat_us: int


def gcra(tat_us: int | None, now_us: int, interval_us: int,
         tolerance_us: int = TOLERANCE_US) -> Verdict:
    """The rule rate.lua applies: a job's slot is the stored TAT (or now, if that is later),
    and the TAT moves on by one interval. It runs now when its slot is at most
    ``tolerance_us`` away, else it waits for its slot (which is reserved for it)."""
    due = now_us if tat_us is None else max(tat_us, now_us)
    if due - now_us <= tolerance_us:
        return Verdict(True, now_us, due + interval_us)
    return Verdict(False, due, due + interval_us)


def keeps_slot(reserved_ms: int, now_ms: int, interval_us: int) -> bool:
    """Whether a job delivered with a reserved slot runs without a new check: its slot has
    come, and it is not late by more than ``LATE_GRACE_MS`` (or one interval)."""
    if reserved_ms <= 0 or now_ms < reserved_ms:
        return False
    return now_ms - reserved_ms <= max(LATE_GRACE_MS, interval_us // 1000)


def limit_key(key_fn: RateKey | None, args: Sequence[Any], kwargs: Mapping[str, Any]
              ) -> str:
    """The key a job is counted under ('' for the task-wide limit). Raises ``RateKeyError``
    with the reason when the key function fails or returns something other than a str or
    an int (the job is dead-lettered with it)."""
    if key_fn is None:
        return ""
    try:
        key = key_fn(*args, **kwargs)
    except Exception as exc:
        raise RateKeyError(f"rate_key raised {type(exc).__name__}: {safe_str(exc, 300)}"
                         ) from exc
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise RateKeyError(f"rate_key must return a str or an int, not {type(key).__name__}")
    text = str(key)
    if len(text) > 200:
        raise RateKeyError(f"rate_key returned {len(text)} characters (at most 200)")
    return text
