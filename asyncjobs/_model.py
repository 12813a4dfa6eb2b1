"""The data a job is made of: the spec written at enqueue, its states, errors and record.

A job's record is one Redis hash. Its field names are short (memory per queued job matters)
and are the contract between this module and the Lua scripts:

====  ======================================================================
j     the ``JobSpec``, msgpack; written once at enqueue
s     the ``JobState`` value
a     attempts started so far
q     enqueued at (ms, Redis clock); absent while a job queued directly has not started:
      its stream entry id (``e``) carries that time
d     due at (ms) while scheduled
x     expires at (ms), absent when the job never expires
e     the stream entry id while queued or running
st    started at (ms) of the latest attempt
et    ended at (ms)
w     the worker (consumer name) running the latest attempt
r     the result value, msgpack, once complete
h     error history: msgpack list of ``ErrorInfo``, one per failed attempt
ab    "1" once an abort was requested for a running job
p     progress, msgpack ``Progress``
dl    dead-letter reason
de    the dead-letter stream entry id, while dead-lettered
====  ======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec

ENDED_TTL_S = 24 * 3600
"""How long the record of an expired or aborted job is kept (complete: the result TTL;
failed: until purged)."""


class JobState(StrEnum):
    """Where a job is in its life. The last four are final."""

    SCHEDULED = "scheduled"
    """Waiting in the delayed set for its due time (a delay, or a retry's backoff)."""
    QUEUED = "queued"
    """In the stream, waiting for a worker."""
    RUNNING = "running"
    """A worker started an attempt."""
    COMPLETE = "complete"
    """The task returned; its value is kept for the result TTL."""
    FAILED = "failed"
    """Out of tries, a non-retryable error, or undeliverable: it is in the dead letters."""
    ABORTED = "aborted"
    """Stopped by ``Job.abort()``."""
    EXPIRED = "expired"
    """Not started before its expiry time; it never ran."""

    @property
    def is_final(self) -> bool:
        """True for complete, failed, aborted and expired."""
        return self in _FINAL


_FINAL = frozenset({JobState.COMPLETE, JobState.FAILED, JobState.ABORTED, JobState.EXPIRED})


class ErrorInfo(msgspec.Struct, array_like=True, frozen=True):
    """One failed attempt: what was raised, where, and when."""

    type: str
    """Qualified exception type, e.g. ``builtins.ValueError``; or a reason such as ``Timeout``."""
    message: str
    traceback: str
    attempt: int
    at_ms: int

    @property
    def at(self) -> datetime:
        """When the attempt failed (UTC)."""
        return from_ms(self.at_ms)


class JobSpec(msgspec.Struct, array_like=True, omit_defaults=True):
    """The immutable part of a job, written once at enqueue.

    Options left as None fall back to the task's, then the worker's, defaults.
    """

    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    timeout_s: float | None = None
    max_tries: int | None = None
    result_ttl_s: float | None = None
    headers: dict[str, str] = {}


class Progress(msgspec.Struct, array_like=True, frozen=True):
    """The latest progress a task reported: a number, and a message or structured data."""

    value: float
    message: str = ""
    at_ms: int = 0
    data: Any = None
    """What the task reported besides the number, when it is not text (a dict such as
    ``{"current": 40, "total": 100}``); None otherwise."""


@dataclass(frozen=True, slots=True)
class JobInfo:
    """The whole record of a job, as ``Job.info()`` and ``asyncjobs job ID`` show it."""

    id: str
    queue: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    state: JobState
    attempts: int
    enqueued_at: datetime | None
    scheduled_for: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    expires_at: datetime | None
    worker: str | None
    errors: tuple[ErrorInfo, ...]
    progress: Progress | None
    dead_letter_reason: str | None
    timeout_s: float | None
    max_tries: int | None
    headers: dict[str, str]
    result: Any = None
    """The value, once complete (decoded without the task's types)."""
    waiting_on: str | None = None
    """Why a scheduled job waits, when a limit made it wait: a concurrency limit (which
    limit, and that it starts when a lease is released) or a rate limit (its task, and the
    slot it was given); None otherwise."""

    @property
    def error(self) -> ErrorInfo | None:
        """The latest error, if any attempt failed."""
        return self.errors[-1] if self.errors else None


def from_ms(ms: int) -> datetime:
    """A UTC datetime from epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass an aware datetime (e.g. tzinfo=UTC)")
    return round(moment.timestamp() * 1000)
