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

Shared concurrency limits (``concurrency_limit=N``, ``concurrency_key=``) are held as
*leases*: one sorted set per (task, key), job id -> lease expiry on the Redis clock.
concurrency.lua applies ``acquire`` atomically; the worker's keep-alive renews the leases
of the jobs it runs, settle.lua and handback.lua release them, and a lease whose worker
died expires within the claim timeout. A job that finds no free lease waits (deferred,
not counted as an attempt) until a release lets it go, or until ``acquire``'s ``due_ms``,
the safety net for a holder that died.
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


MAX_CONCURRENCY = 100_000
"""The largest ``concurrency_limit`` a task may declare."""


class RateKeyError(Exception):
    """A job's rate or concurrency key could not be computed (the reason is the
    message)."""


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


def limit_key(key_fn: RateKey | None, args: Sequence[Any], kwargs: Mapping[str, Any],
              what: str = "rate_key") -> str:
    """The key a job is counted under ('' for the task-wide limit). Raises ``RateKeyError``
    with the reason (naming the option, ``what``) when the key function fails (whatever it
    raises, ``BaseException`` included: it is the task's code, not the worker's) or returns
    something other than a str or an int of at most 200 characters that UTF-8 can encode
    (the job is dead-lettered with it)."""
    if key_fn is None:
        return ""
    try:
        key = key_fn(*args, **kwargs)
    except BaseException as exc:  # the task's code: its job's reason, never the worker's
        raise RateKeyError(f"{what} raised {type(exc).__name__}: {safe_str(exc, 300)}"
                         ) from exc
    kind = type(key)  # not isinstance: a mock can claim to be a str
    if kind is bool or not issubclass(kind, str | int):
        raise RateKeyError(f"{what} must return a str or an int, not {kind.__name__}")
    # The value itself, through str's and int's own methods, never a subclass's (which may
    # raise); an int too long to be a key is refused before Python is asked for its digits.
    if isinstance(key, int) and int.bit_length(key) > 700:
        raise RateKeyError(f"{what} returned an int of more than 200 digits (at most 200)")
    text = str.__str__(key) if isinstance(key, str) else int.__repr__(key)
    if len(text) > 200:
        raise RateKeyError(f"{what} returned {len(text)} characters (at most 200)")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise RateKeyError(f"{what} returned a str that is not valid UTF-8 (it holds a lone "
                           f"surrogate: {text.encode(errors='backslashreplace').decode()!r:.80})"
                           ) from None
    return text


def parse_concurrency(limit: object) -> int:
    """A ``concurrency_limit``: an int from 1 to ``MAX_CONCURRENCY`` (not a bool); anything
    else is a ``ConfigurationError`` with a one-line message."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ConfigurationError(
            f"concurrency_limit must be an int, not {type(limit).__name__} {limit!r:.80}")
    if not 1 <= limit <= MAX_CONCURRENCY:
        raise ConfigurationError(
            f"concurrency_limit must be between 1 and {MAX_CONCURRENCY:,}, not {limit}")
    return limit


@dataclass(frozen=True, slots=True)
class Lease:
    """One acquisition: run now (the lease is held until ``leases[job] ``), or wait until
    a release lets the job go, at the latest ``due_ms``."""

    run: bool
    due_ms: int
    leases: Mapping[str, int]
    """The limit's leases afterwards: job id -> expiry (ms)."""


def acquire(leases: Mapping[str, int], job_id: str, now_ms: int, limit: int, lease_ms: int,
            expires_ms: int | None = None, stepped: bool = False) -> Lease:
    """The rule concurrency.lua applies. Expired leases are dropped; a job that holds a
    lease already (delivered again) renews it and runs; one that finds fewer than ``limit``
    leases takes one and runs. Any other waits: it is looked at again when the earliest
    lease expires (the safety net if its holder died; a release comes sooner), or at its
    own expiry if that is earlier. ``stepped``: the server's clock is past the worker's
    forecast (a step forward): no lease is dropped for its expiry, and a job that waits is
    looked at again one lease period on at the earliest (or at its own expiry)."""
    live = dict(leases) if stepped else {
        job: until for job, until in leases.items() if until > now_ms}
    if job_id in live or len(live) < limit:
        live[job_id] = now_ms + lease_ms
        return Lease(True, now_ms, live)
    due = min(live.values())
    if stepped:
        due = max(due, now_ms + lease_ms)
    if expires_ms is not None:
        due = min(due, expires_ms)
    return Lease(False, max(due, now_ms), live)
