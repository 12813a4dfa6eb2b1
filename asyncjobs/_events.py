"""What observers hear about each job: one ``JobEvent`` per decision the worker makes.

Kinds, in a job's life:

=============  ======================================================================
started        an attempt starts (``attempt`` counts from 1)
complete       the attempt returned; its value is recorded (``has_result``)
retry          the attempt failed and another is scheduled (``error``, ``retry_in_s``)
failed         the job is dead-lettered: out of tries, a non-retryable error, or it could
               not run at all (``error``, ``reason``; ``task`` may be '' for an entry
               with no readable job)
expired        it reached its expiry before an attempt could start
aborted        ``Job.abort()`` stopped it (before or while it ran)
interrupted    a shutdown stopped the attempt; the job is handed back and runs again
rate_limited   its task's rate limit deferred it to a later slot (``retry_in_s``); not an
               attempt: it was never called, and its attempt count is unchanged
concurrency_   its task's concurrency limit was full: it waits (not an attempt) until a
limited        lease is released, at the latest ``retry_in_s`` (the safety net)
=============  ======================================================================

The job's arguments are decoded only when an observer reads ``args`` / ``kwargs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._codec import decode_spec
from ._model import ErrorInfo

FINAL = frozenset({"complete", "failed", "expired", "aborted"})


class JobEvent:
    """One decision about one job (see the module docstring for the kinds)."""

    __slots__ = ("_decoded", "_spec", "attempt", "duration_s", "error", "has_result",
                 "headers", "job_id", "kind", "queue", "reason", "retry_in_s", "task")

    def __init__(self, kind: str, *, job_id: str, queue: str, task: str = "",
                 attempt: int = 0, duration_s: float = 0.0, error: ErrorInfo | None = None,
                 reason: str | None = None, retry_in_s: float | None = None,
                 has_result: bool = False, spec: bytes = b"",
                 headers: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.job_id = job_id
        self.queue = queue
        self.task = task
        """The task's name ('' when the job could not be read)."""
        self.attempt = attempt
        self.duration_s = duration_s
        """How long the attempt ran (0 for 'started' and for jobs that never ran)."""
        self.error = error
        """The attempt's error (type, message, traceback), or the reason a job could not
        run, as recorded in the job's history."""
        self.reason = reason
        """Why a job was dead-lettered ('failed')."""
        self.retry_in_s = retry_in_s
        self.has_result = has_result
        self.headers = dict(headers or {})
        self._spec = spec
        self._decoded: tuple[list[Any], dict[str, Any]] | None = None

    @property
    def final(self) -> bool:
        """True when the job has ended (complete, failed, expired, aborted)."""
        return self.kind in FINAL

    def _arguments(self) -> tuple[list[Any], dict[str, Any]]:
        if self._decoded is None:
            try:
                spec = decode_spec(self._spec)
                self._decoded = (list(spec.args), dict(spec.kwargs))
            except Exception:  # a job that could not be read has no arguments to show
                self._decoded = ([], {})
        return self._decoded

    @property
    def args(self) -> list[Any]:
        """The job's positional arguments (decoded on first use; [] if unreadable)."""
        return self._arguments()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        """The job's keyword arguments (decoded on first use; {} if unreadable)."""
        return self._arguments()[1]

    def __repr__(self) -> str:
        return (f"<JobEvent {self.kind} job={self.job_id} task={self.task} "
                f"queue={self.queue} attempt={self.attempt}>")
