"""The context a task receives as its first argument."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._codec import progress_report
from ._model import ErrorInfo, from_ms

if TYPE_CHECKING:
    from ._producer.pool import Pool


class Context:
    """What a running task knows about its job and its worker.

    ``state`` is whatever the worker's lifespan yielded (an HTTP client, a DB pool...).
    ``pool`` enqueues follow-up jobs on the worker's own connection.
    """

    __slots__ = (
        "_log_context",
        "_loop",
        "_report",
        "_soft",
        "args",
        "attempt",
        "enqueued_ms",
        "errors",
        "headers",
        "job_id",
        "kwargs",
        "max_tries",
        "pool",
        "queue",
        "state",
        "task",
        "worker",
    )

    def __init__(
        self,
        *,
        job_id: str,
        task: str,
        queue: str,
        attempt: int,
        max_tries: int,
        enqueued_ms: int,
        errors: tuple[ErrorInfo, ...],
        headers: dict[str, str],
        state: Any,
        pool: Pool,
        worker: str,
        report: Callable[[str, str, bytes], Coroutine[Any, Any, None]],
        loop: asyncio.AbstractEventLoop | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.job_id = job_id
        """The job's id: the natural idempotency key for calls to other systems."""
        self.task = task
        self.queue = queue
        self.attempt = attempt
        """1 for the first attempt, 2 for the first retry, and so on."""
        self.max_tries = max_tries
        self.enqueued_ms = enqueued_ms
        self.errors = errors
        """Errors of earlier attempts, oldest first."""
        self.headers = headers
        self.state = state
        self.pool = pool
        self.worker = worker
        self._report = report
        self._loop = loop
        self.args = args
        """The job's positional arguments, as the task receives them (for middleware:
        tracing, auditing, a log context)."""
        self.kwargs = dict(kwargs or {})
        """The job's keyword arguments (a copy: changing it changes nothing)."""
        self._log_context: dict[str, object] = {}
        self._soft: asyncio.Event | None = None

    @property
    def log_context(self) -> dict[str, object]:
        """Fields added to this attempt's log lines (``tenant=acme``; in JSON logs, fields
        of their own): set them here, or for every job with ``Worker(log_context=...)``.
        Assigning a new mapping replaces the fields (the attempt's lines see it)."""
        return self._log_context

    @log_context.setter
    def log_context(self, fields: dict[str, object]) -> None:
        self._log_context.clear()
        self._log_context.update(fields)

    @property
    def enqueued_at(self) -> datetime:
        """When the job was enqueued (UTC, Redis clock)."""
        return from_ms(self.enqueued_ms)

    @property
    def soft_timeout(self) -> asyncio.Event:
        """Set when the task's ``soft_timeout`` has passed (never, without one): the hard
        timeout comes next. ``await ctx.soft_timeout.wait()`` in an async task, or check
        ``ctx.soft_timed_out`` between steps (in a plain ``def`` task too), to save partial
        work and return before the attempt is cancelled."""
        if self._soft is None:
            self._soft = asyncio.Event()
        return self._soft

    @property
    def soft_timed_out(self) -> bool:
        """True once the task's ``soft_timeout`` has passed (see ``soft_timeout``)."""
        return self._soft is not None and self._soft.is_set()

    @property
    def is_last_try(self) -> bool:
        """True when a failure now will not be retried because tries are used up."""
        return self.attempt >= self.max_tries

    def progress(self, value: float, detail: object = "") -> Awaitable[None]:
        """Report progress: a number (0.0 to 1.0, or items done) and a message, or data
        (``{"current": 40, "total": 100, "status": "..."}``: anything msgspec encodes, at
        most 8 KiB; ``SerializationError`` / ``ValueError`` beyond, nothing recorded).

        In an ``async def`` task, ``await ctx.progress(...)``. In a plain ``def`` task (it
        runs in a thread), call ``ctx.progress(...)`` without ``await``: it is recorded on
        the worker's event loop before the call returns (waiting at most 10 s)."""
        data = progress_report(value, detail, int(time.time() * 1000))
        report = self._report(self.queue, self.job_id, data)
        loop = self._loop
        if loop is None or _running_loop() is loop:
            return report
        asyncio.run_coroutine_threadsafe(report, loop).result(timeout=10)
        return _Recorded()

    def __repr__(self) -> str:
        return f"<Context job={self.job_id} task={self.task} attempt={self.attempt}>"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a worker thread: no loop runs here
        return None


class _Recorded:
    """What ``progress()`` returns in a thread: already done, awaiting it is a no-op."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator
