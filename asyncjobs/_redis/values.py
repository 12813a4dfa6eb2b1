"""The values the job path's scripts take and give, as the worker and the producer see
them: a job to write, a delivery, a start's verdict, an attempt to settle, what a take or a
reclaim found. Plain data, no I/O (``store`` does the round trips)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job ready to be written: its id, encoded spec and timing (all ms, 0 = unset)."""

    id: str
    spec: bytes
    delay_ms: int = 0
    due_at_ms: int = 0
    expires_in_ms: int = 0
    expires_at_ms: int = 0


@dataclass(slots=True)
class Delivery:
    """A stream entry delivered to this consumer. ``readable`` is False when the job id it
    carries is not valid UTF-8 (an entry written by hand): it can name no job, and its
    text here is only a rendering of the bytes."""

    entry: str
    job_id: str
    deliveries: int = 1
    readable: bool = True


@dataclass(slots=True)
class Started:
    """What start.lua said about one delivery."""

    delivery: Delivery
    verdict: str
    spec: bytes
    attempts: int
    history: bytes
    enqueued_ms: int
    now_ms: int
    reserved_ms: int = 0
    """The slot a rate limit reserved for this job when it deferred it (0: none)."""
    plain: bool = False
    """The job runs with a plain record: if it completes without an error or a progress
    report, its result can be kept in a shared hash (see ``kept``)."""
    resumed: bool = False
    """The record said ``running`` already: an earlier attempt began and never ended (its
    worker stopped; the entry came back by a reclaim, a group made again or the leader's
    repair), so that attempt is recorded as lost (``outcomes.history_of``)."""
    confirm_after: float = math.inf
    """Not from Redis: the worker's monotonic time past which this start is confirmed
    (its entry touched) before the job runs (``_worker.late``)."""


@dataclass(frozen=True, slots=True)
class RateCheck:
    """A started job to check against its task's rate limit: its delivery, the limit's key
    and its interval (µs)."""

    delivery: Delivery
    limit_key: str
    interval_us: int


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    """A started job asking for a lease of its task's concurrency limit: its delivery, the
    limit's name (``keys.limit_name``) and its N."""

    delivery: Delivery
    name: str
    limit: int


@dataclass(slots=True)
class SettleOp:
    """One finished attempt to record. See settle.lua for the outcomes."""

    entry: str
    job_id: str
    outcome: str
    payload: bytes | str = b""
    number: int = 0
    history: bytes = b""
    lease: str = ""
    """The concurrency limit whose lease the attempt held ('' for none): released."""


@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    """How many dead letters a queue keeps, and for how long (its oldest go first, with the
    records of their jobs)."""

    most: int = 10_000
    max_age_ms: int = 180 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Promoted:
    """The result of one promotion pass."""

    promoted: int
    expired: int
    next_due_ms: int | None
    now_ms: int


@dataclass(frozen=True, slots=True)
class Orphan:
    """A running job whose stream entry no reclaim will ever take over (reschedule.lua): put
    back only once its worker is known to be gone."""

    level: int
    """The index of its level among the stores the repair was given."""
    job_id: bytes | str
    """Its id, as Redis replied (given back as is: an id need not be UTF-8)."""
    worker: bytes | str
    """The worker its record says runs it, as found."""
    attempts: bytes | str
    """Its attempts field, as found (compared, not read)."""
    entry: bytes | str
    """Its record's entry id, as found."""


@dataclass(frozen=True, slots=True)
class Rescheduled:
    """The result of one step of the waiting jobs' repair (reschedule.lua)."""

    cursor: str
    """Where the next step goes on ('0': the scan is over)."""
    restored: int
    """Scheduled jobs put back in their delayed set."""
    earliest_ms: int | None
    """The earliest due time among them (None: none)."""
    requeued: int = 0
    """Queued jobs whose stream entry no worker would be handed, added to the stream again."""
    orphans: tuple[Orphan, ...] = ()
    """Running jobs whose entry no reclaim will take over (put back once their worker is
    gone: ``revive_levels``)."""
    revived: int = 0
    """Running jobs given back (``revive_levels``) and added to the stream again."""


MAX_LENGTH_MOST = 10**12
"""The largest maximum length a queue takes (enqueue.lua reads whole numbers below 1e15)."""


def max_length(raw: Any) -> int | None:
    """A queue's maximum length as stored in its settings hash (None: no maximum, or a
    value enqueue.lua would not read as one)."""
    if isinstance(raw, bytes | str):
        value = reply_text(raw)
        digits = value.lstrip("0")  # leading zeros count for nothing, in Lua too
        if (value.isascii() and value.isdigit() and len(digits) <= 13
                and 0 < int(digits or "0") <= MAX_LENGTH_MOST):
            return int(digits)
    return None


def reply_text(value: Any) -> str:
    """Text of a reply; bytes that are not UTF-8 (an entry written by hand) are replaced,
    never raised: such an entry is dead-lettered, not allowed to stop a worker."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def delivery_of(entry: Any, job_id: Any, deliveries: int = 1) -> Delivery:
    """A delivery of ``entry`` carrying ``job_id``, as a reply gives them."""
    readable = True
    if isinstance(job_id, bytes):
        try:
            job_id.decode()
        except UnicodeDecodeError:
            readable = False
    return Delivery(reply_text(entry), reply_text(job_id), deliveries, readable)


@dataclass(frozen=True, slots=True)
class Taken:
    """What take.lua started, by level (an index into the stores it was given); when it
    started nothing, each level stream's newest entry id ('' for one that cannot be read;
    see take.lua); and the levels Redis refused to read, with its error."""

    rows: list[tuple[int, Started]]
    last: list[str]
    errors: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Looked:
    """What idle.lua found: the first entry idle past the threshold, as (level, entry id),
    if it read one; each level's next cursor ('-' once read to the end); the levels Redis
    refused to look at, with its error (levels are indexes into the stores it was given);
    the server's time (ms)."""

    found: tuple[int, str] | None
    cursors: list[str]
    errors: list[tuple[int, str]]
    now_ms: int


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """What reclaim.lua claimed, by level (an index into the stores it was given); each
    level's next cursor; the levels Redis refused to scan, with its error; the server's
    time (ms); and whether that time was past the latest the caller allowed (its clock
    stepped forward: then nothing was scanned)."""

    cursors: list[str]
    rows: list[tuple[int, Delivery]]
    errors: list[tuple[int, str]]
    now_ms: int = 0
    stepped: bool = False
