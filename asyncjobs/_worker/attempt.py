"""One attempt in flight, as the executor tracks it. No I/O.

``Running`` is what the executor knows about a delivery it runs: its asyncio task, why it
was cancelled, whether its body may still run in this process (a zombie), whether its
entry is still held. ``Plan`` is what an attempt that started needs to be recorded later,
from whichever path records it (it returned, or it was abandoned).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .._model import ErrorInfo
from .._redis.values import Delivery, SettleOp, Started
from .._retry import RetryPolicy
from .._task import Task


class Plan:
    """What an attempt that started needs to be recorded later, from any path."""

    __slots__ = (
        "fields",
        "headers",
        "history",
        "policy",
        "started",
        "task",
        "timeout_s",
        "ttl_s",
    )

    def __init__(self, started: Started, task: Task[Any, Any], policy: RetryPolicy,
                 timeout_s: float | None, ttl_s: float | None,
                 history: tuple[ErrorInfo, ...], fields: dict[str, object] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.started = started
        self.task = task
        self.policy = policy
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.history = history
        self.fields = fields if fields is not None else {}
        """The attempt's log context (``ctx.log_context``), on its log lines."""
        self.headers = headers or {}


class Running:
    """One attempt in flight (or waiting for its settle to be recorded)."""

    __slots__ = ("abandoned", "began", "cancel_reason", "checking", "delivery", "entered",
                 "escalation", "holds_entry", "in_thread", "job_id", "lease", "plan", "queue",
                 "reported", "started", "task")

    def __init__(self, queue: str, delivery: Delivery) -> None:
        self.queue = queue
        self.delivery = delivery
        self.job_id = delivery.job_id
        self.task: asyncio.Task[SettleOp | None] | None = None
        self.cancel_reason = ""
        self.entered = False
        self.started = False
        self.began = time.monotonic()
        self.plan: Plan | None = None
        self.escalation: asyncio.TimerHandle | None = None
        self.abandoned = False
        self.in_thread = False
        self.holds_entry = True
        """Its stream entry is still pending for this worker (not settled, not lost)."""
        self.checking = False
        """A limit check (rate.lua, concurrency.lua) is deciding it: the script may defer
        the job and release its entry, and says so itself; the keep-alive leaves it alone
        meanwhile (it would take the released entry for one another worker took): it
        neither touches the entry nor cancels the attempt on the word of a touch that was
        already on its way when the check began."""
        self.lease = ""
        """The concurrency limit whose lease it asked for ('' for none): its settle
        releases it."""
        self.reported = False
        """The task reported progress (the record holds it: not plain, see ``kept``)."""

    def timed_out(self) -> bool:
        """True once the attempt's timer cancelled it."""
        return self.cancel_reason == "timeout"

    def body_alive(self) -> bool:
        """True while the task's code may still run in this process."""
        return self.in_thread or (self.task is not None and not self.task.done())
