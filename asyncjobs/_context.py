"""The context a task receives as its first argument."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._model import ErrorInfo, from_ms

if TYPE_CHECKING:
    from ._pool import Pool


class Context:
    """What a running task knows about its job and its worker.

    ``state`` is whatever the worker's lifespan yielded (an HTTP client, a DB pool...).
    ``pool`` enqueues follow-up jobs on the worker's own connection.
    """

    __slots__ = (
        "_report",
        "attempt",
        "enqueued_ms",
        "errors",
        "headers",
        "job_id",
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
        report: Callable[[str, str, float, str], Awaitable[None]],
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

    @property
    def enqueued_at(self) -> datetime:
        """When the job was enqueued (UTC, Redis clock)."""
        return from_ms(self.enqueued_ms)

    @property
    def is_last_try(self) -> bool:
        """True when a failure now will not be retried because tries are used up."""
        return self.attempt >= self.max_tries

    async def progress(self, value: float, message: str = "") -> None:
        """Report progress (e.g. 0.0 to 1.0, or items done) and a short message."""
        await self._report(self.queue, self.job_id, float(value), message)

    def __repr__(self) -> str:
        return f"<Context job={self.job_id} task={self.task} attempt={self.attempt}>"
