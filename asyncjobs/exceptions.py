"""Every error asyncjobs raises, under one root.

::

    AsyncJobsError
    ├── ConfigurationError      bad settings, a wrong import path, an unknown task option
    ├── SerializationError      an argument or a result that msgspec cannot encode
    ├── EnqueueError            some jobs of an enqueue could not be written (``.reasons``)
    │   ├── RedisFull           Redis is at its maxmemory: nothing more can be enqueued
    │   └── QueueFull           the queue is at its maximum length (backpressure)
    ├── NotReplicated           jobs written on the master, not acknowledged by enough replicas
    ├── RedisUnavailable        Redis could not be reached within the stated bound
    ├── PoolExhausted           every connection of the pool stayed busy (not an outage)
    ├── PoolClosed              the pool was closed (also a ``RuntimeError``)
    ├── JobNotFound             no record under that job id (never enqueued, or its result expired)
    ├── CorruptJob              the job's record holds data asyncjobs cannot read
    ├── ResultTimeout           ``Job.result(timeout=...)`` elapsed first (also a ``TimeoutError``)
    ├── JobTimeout              recorded when an attempt ran past its timeout and was cancelled
    └── JobError                the job ended without a value
        ├── JobFailed           the task raised (or timed out, or was dead-lettered)
        ├── JobAborted          ``Job.abort()`` stopped it
        └── JobExpired          it was not started before its ``expires`` time

``Retry`` is not an error: a task raises it to ask for another attempt.
Redis and codec errors are translated at the boundary and chained with ``from``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._durations import to_seconds

if TYPE_CHECKING:
    from ._model import ErrorInfo

__all__ = [
    "AsyncJobsError",
    "ConfigurationError",
    "CorruptJob",
    "EnqueueError",
    "RedisFull",
    "QueueFull",
    "JobAborted",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "NotDrained",
    "NotReplicated",
    "PoolClosed",
    "PoolExhausted",
    "RedisUnavailable",
    "ResultTimeout",
    "Retry",
    "SerializationError",
]


class AsyncJobsError(Exception):
    """The root of every error raised by asyncjobs."""


class ConfigurationError(AsyncJobsError):
    """A setting, an import path or a task declaration is wrong."""


class NotDrained(AsyncJobsError):
    """A burst run (``Worker(burst=True)``) ended with a queue it could not drain: a key of
    that queue holds what Redis refuses to read as asyncjobs wrote it (a string where the
    stream or the delayed set belongs). Every other queue was drained first."""


class SerializationError(AsyncJobsError, TypeError):
    """A value cannot be encoded with msgspec; the message names the argument and its type."""


class EnqueueError(AsyncJobsError):
    """Some jobs of an ``enqueue`` / ``enqueue_many`` were not written; the others were.

    ``reasons`` maps the job id of each job not written to why (e.g. its key holds data
    that is not a job record); ``enqueued`` holds the handles of the jobs that were written
    (or already existed). Each job is written whole or not at all.
    """

    def __init__(self, reasons: dict[str, str], enqueued: list[Any],
                 message: str | None = None) -> None:
        if message is None:
            first = next(iter(reasons.items()))
            more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
            message = f"job {first[0]!r} was not enqueued: {first[1]}{more}"
        super().__init__(message)
        self.reasons = reasons
        self.enqueued = enqueued


class RedisFull(EnqueueError):
    """Redis reached its ``maxmemory`` (with the ``noeviction`` policy): the jobs in
    ``reasons`` were not written (``enqueued`` says which were). Let workers drain the
    queues (settling frees memory) or raise ``maxmemory``; retrying later is safe with the
    same job ids."""

    def __init__(self, reasons: dict[str, str], enqueued: list[Any]) -> None:
        super().__init__(reasons, enqueued, (
            f"Redis is full (maxmemory reached): {len(reasons) or 'the'} job(s) not enqueued"
            f"{f', {len(enqueued)} enqueued' if enqueued else ''}; workers drain the queues "
            "(settling frees memory), or raise maxmemory"))


class QueueFull(EnqueueError):
    """A queue is at its maximum length (``Admin.set_max_length``): the jobs in ``reasons``
    were not written, each with why (``"queue 'emails' is full (max 1000 jobs)"``), and
    ``enqueued`` holds the handles of those that were. ``queues`` maps each full queue to
    its maximum. Nothing already accepted was dropped; enqueueing the refused jobs again
    (the same job ids) once workers have made room is safe."""

    def __init__(self, reasons: dict[str, str], enqueued: list[Any],
                 queues: dict[str, int]) -> None:
        names = ", ".join(f"{q!r} (max {n} jobs)" for q, n in queues.items())
        which = f"queues {names} are" if len(queues) > 1 else f"queue {names} is"
        got = f", {len(enqueued)} enqueued" if enqueued else ""
        super().__init__(reasons, enqueued, (
            f"{which} full: {len(reasons)} job(s) not enqueued{got}"))
        self.queues = queues


class NotReplicated(AsyncJobsError):
    """The jobs *are* in Redis, on the master, and will run; but fewer replicas than
    ``create_pool(wait_replicas=...)`` asked for acknowledged them within ``wait_timeout``,
    so a failover now could lose them. ``job_ids`` names the jobs of the call (any of them
    also refused for another reason, a full queue or a damaged key, is not in Redis);
    ``acknowledged`` and ``wanted`` count replicas. The caller decides: go on, wait and
    look again (``pool.job(job_id)``), or enqueue again with the same job ids (safe: a job
    already there is not enqueued twice)."""

    def __init__(self, job_ids: list[str], acknowledged: int, wanted: int,
                 timeout_s: float) -> None:
        more = f" (and {len(job_ids) - 1} more)" if len(job_ids) > 1 else ""
        super().__init__(
            f"job {job_ids[0]!r}{more} is in Redis on the master, but only {acknowledged} of "
            f"the {wanted} replica(s) asked for acknowledged it within {timeout_s:g} s: "
            "a failover now could lose it" if job_ids else
            f"only {acknowledged} of {wanted} replica(s) acknowledged within {timeout_s:g} s")
        self.job_ids = job_ids
        self.acknowledged = acknowledged
        self.wanted = wanted


class RedisUnavailable(AsyncJobsError, ConnectionError):
    """Redis did not answer within the stated bound (connection refused, reset or timed out)."""


class PoolExhausted(AsyncJobsError):
    """Every connection of the pool stayed in use for as long as a call may wait: too many
    calls at once for ``max_connections``. Redis itself is fine (not ``RedisUnavailable``).
    """


class PoolClosed(AsyncJobsError, RuntimeError):
    """The pool was closed (``await pool.close()``, or the end of ``async with
    create_pool(...)``): its calls, and those of its job handles, raise this instead of
    opening connections again, and a ``Job.result()`` waiting when it closed ends with it.
    A ``RuntimeError``, like using any closed client: a mistake in the program's order of
    things, not an outage (``RedisUnavailable``) to retry; open a new pool instead."""


class JobNotFound(AsyncJobsError, LookupError):
    """No job record exists under this id in this queue."""

    def __init__(self, job_id: str, queue: str) -> None:
        super().__init__(
            f"no job {job_id!r} in queue {queue!r} (never enqueued, or its result expired)"
        )
        self.job_id = job_id
        self.queue = queue


class CorruptJob(AsyncJobsError):
    """A job's record in Redis cannot be read: its state field holds something asyncjobs
    never writes (data written by hand, or by another program), or its result does not fit
    the task's declared return type. Other unreadable fields are shown as absent."""

    def __init__(self, job_id: str, why: str) -> None:
        super().__init__(f"the record of job {job_id!r} cannot be read: {why}")
        self.job_id = job_id


class ResultTimeout(AsyncJobsError, TimeoutError):
    """The job did not finish within the time given to ``Job.result``."""


class JobTimeout(AsyncJobsError, TimeoutError):
    """An attempt ran past its timeout and was cancelled (recorded in the job's errors)."""


class JobError(AsyncJobsError):
    """The job ended without a value; ``state`` says how."""

    state: str = "failed"

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(JobError):
    """The task raised, timed out, or the job was dead-lettered.

    ``error`` carries the remote exception's type, message and traceback text;
    ``errors`` is the whole history, one entry per failed attempt.
    """

    state = "failed"

    def __init__(self, job_id: str, error: ErrorInfo, errors: tuple[ErrorInfo, ...] = ()) -> None:
        super().__init__(job_id, f"job {job_id} failed: {error.type}: {error.message}")
        self.error = error
        self.errors = errors or (error,)

    @property
    def type(self) -> str:
        """The remote exception's qualified type name, e.g. ``builtins.ValueError``."""
        return self.error.type

    @property
    def remote_message(self) -> str:
        """The remote exception's message."""
        return self.error.message

    @property
    def remote_traceback(self) -> str:
        """The remote traceback, formatted as text."""
        return self.error.traceback


class JobAborted(JobError):
    """The job was aborted before or while it ran."""

    state = "aborted"


class JobExpired(JobError):
    """The job reached its expiry time before an attempt could start (the first one, or a
    retry): no attempt starts after it."""

    state = "expired"


class Retry(Exception):
    """Raise from a task to run it again later.

    ``delay`` overrides the task's backoff for this retry (seconds or timedelta).
    The retry still counts against ``max_tries``.
    """

    def __init__(self, delay: timedelta | float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        self.delay_s: float | None = to_seconds(delay, "Retry delay")
