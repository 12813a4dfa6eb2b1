"""Run one attempt of a task and report what happened. No Redis.

The attempt's hard timeout is a timer that cancels the attempt's task and records why;
``await_attempt`` turns that cancellation, and only that one, into a 'timeout' outcome.
Any other cancellation (abort, shutdown, lost ownership) propagates: the caller knows why it
cancelled and decides what that means. Everything the task raises becomes an outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .exceptions import JobTimeout


@dataclass(slots=True)
class Outcome:
    """How an attempt ended: ``kind`` is 'ok', 'error' or 'timeout'."""

    kind: str
    value: Any = None
    error: BaseException | None = None
    duration_s: float = 0.0


async def await_attempt(
    fn: Callable[[], Awaitable[Any]],
    timeout_s: float | None,
    timed_out: Callable[[], bool],
) -> Outcome:
    """Await ``fn()``. ``timed_out()`` tells whether a cancellation came from the attempt's
    own timer (set up by the caller to cancel the current task after ``timeout_s``)."""
    started = time.perf_counter()
    try:
        value = await fn()
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling() == 0:
            # Nobody cancelled this task: the task's code raised CancelledError itself
            # (it awaited something another task cancelled). An error like any other.
            return Outcome("error", error=exc, duration_s=time.perf_counter() - started)
        if not timed_out():
            raise
        if task is not None:
            task.uncancel()  # our own cancellation, consumed here
        error = JobTimeout(f"the attempt exceeded its {timeout_s:g} s timeout and was cancelled")
        error.__cause__ = exc
        return Outcome("timeout", error=error, duration_s=time.perf_counter() - started)
    except (Exception, SystemExit) as exc:
        return Outcome("error", error=exc, duration_s=time.perf_counter() - started)
    return Outcome("ok", value=value, duration_s=time.perf_counter() - started)


async def run_attempt(fn: Callable[[], Awaitable[Any]], timeout_s: float | None) -> Outcome:
    """Await ``fn()`` under its own timer: cancelled after ``timeout_s`` seconds (None or 0:
    no limit). The worker's executor keeps its timers itself and uses ``await_attempt``."""
    task = asyncio.current_task()
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        if task is not None:
            task.cancel()

    handle = asyncio.get_running_loop().call_later(timeout_s, expire) if timeout_s else None
    try:
        return await await_attempt(fn, timeout_s, lambda: fired)
    finally:
        if handle is not None:
            handle.cancel()
