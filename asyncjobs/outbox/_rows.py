"""From an outbox row to the job the relay writes: pure, no I/O.

A row holds what ``Pool.prepare`` produced when the application enqueued, plus the
database's clock at insert. Relative times (``delay``, ``expires`` as a duration) count from
that insert: the relay subtracts how long the row waited, measured on the database's clock
both times, and hands Redis the rest as a relative time, so no two machines' clocks are ever
compared. Absolute times (``at=``, ``expires=`` a datetime) pass through unchanged.

Anything in a row that could not have come from ``Outbox.enqueue`` (a row written by hand,
damaged, or for a queue the relay was told not to serve) raises ``BadRow`` with the reason:
the relay marks that row failed and goes on with the others.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .._codec import decode_spec
from .._durations import MAX_DURATION_S
from .._options import check_job_id
from .._redis.keys import check_name
from .._redis.values import NewJob
from .._routing import check_queue, split_level
from ..exceptions import ConfigurationError

MAX_SPAN_MS = int(MAX_DURATION_S * 1000)
"""The longest delay or expiry a row may hold (10 years, as everywhere)."""
MAX_TIME_MS = 253_402_300_799_999
"""The latest absolute time a row may hold (the end of year 9999)."""
_SHOWN = 200  # characters of a bad value in a reason


class BadRow(ValueError):
    """A row the relay cannot turn into a job; its message is the reason stored in the row."""


@dataclass(frozen=True, slots=True)
class Row:
    """One pending row as read from the table (values not yet checked)."""

    row_id: int
    queue: Any
    job_id: Any
    spec: Any
    delay_ms: Any
    due_at_ms: Any
    expires_in_ms: Any
    expires_at_ms: Any
    created_at_ms: Any


def to_job(row: Row, now_ms: int, queues: Collection[str] | None = None) -> tuple[str, NewJob]:
    """The queue and the job to write for ``row``, ``now_ms`` being the database's clock
    when it was read; raises ``BadRow``."""
    queue = _queue(row.queue, queues)
    job_id = _job_id(row.job_id)
    spec = _spec(row.spec)
    delay = _number(row.delay_ms, "delay_ms", MAX_SPAN_MS)
    due_at = _number(row.due_at_ms, "due_at_ms", MAX_TIME_MS)
    expires_in = _number(row.expires_in_ms, "expires_in_ms", MAX_SPAN_MS)
    expires_at = _number(row.expires_at_ms, "expires_at_ms", MAX_TIME_MS)
    waited = max(0, now_ms - _number(row.created_at_ms, "created_at_ms", MAX_TIME_MS))
    left = remaining_expiry(expires_in, waited)
    return queue, NewJob(
        id=job_id, spec=spec, delay_ms=remaining_delay(delay, waited), due_at_ms=due_at,
        expires_in_ms=max(0, left), expires_at_ms=PASSED_MS if left < 0 else expires_at,
    )


def remaining_delay(delay_ms: int, waited_ms: int) -> int:
    """What is left of a delay after the row waited ``waited_ms``: 0 (run now) once it has
    passed."""
    return max(0, delay_ms - waited_ms) if delay_ms > 0 else 0


PASSED_MS = 1
"""An expiry time that has passed for any job (1 ms after the epoch; 0 is none)."""


def remaining_expiry(expires_in_ms: int, waited_ms: int) -> int:
    """What is left of a relative expiry: 0 for none (it never expires), -1 for one that
    passed while the row waited: the job is then written with an expiry time already past
    (``PASSED_MS``), and ends ``expired``, visibly, never silently dropped and never run
    (1 ms left would let a worker that takes it within that millisecond run it)."""
    if expires_in_ms <= 0:
        return 0
    left = expires_in_ms - waited_ms
    return left if left > 0 else -1


def _queue(value: Any, queues: Collection[str] | None) -> str:
    if not isinstance(value, str):
        raise BadRow(f"its queue is not text: {_shown(value)}")
    try:
        check_name("queue name", value)
    except ValueError as exc:
        raise BadRow(str(exc)) from None
    base = split_level(value)[0]
    try:  # as the producer does: the queue and its priority levels must all be valid
        check_queue(base)
    except ConfigurationError:
        raise BadRow(f"invalid queue name {_shown(value)}: no producer or worker can use it "
                     "(its priority levels, with '@high' and '@low' added, must be 1-200 "
                     "characters too)") from None
    if queues is not None and value not in queues and base not in queues:  # its levels too
        raise BadRow(f"unknown queue {_shown(value)}: this relay serves "
                     f"{', '.join(sorted(queues)) or 'no queue'}")
    return value


def _job_id(value: Any) -> str:
    try:
        return check_job_id(value)
    except ValueError as exc:
        raise BadRow(str(exc)) from None


def _spec(value: Any) -> bytes:
    if isinstance(value, memoryview | bytearray):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise BadRow(f"its spec is not bytes: {_shown(value)}")
    try:
        decode_spec(value)
    except Exception as exc:  # msgspec errors, RecursionError on deep garbage
        raise BadRow(f"its spec cannot be decoded: {_shown(exc)}") from None
    return value


def _number(value: Any, column: str, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
        raise BadRow(f"{column} must be an integer from 0 to {most}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}..."
