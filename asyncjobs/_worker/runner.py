"""Run one attempt of a task and report what happened. No Redis.

The attempt's hard timeout is a timer that cancels the attempt's task and records why. The
outcome is decided from what the runner saw, never from what the body did afterwards:

- the timer fired (``timed_out()``): the attempt is a **timeout**, whether the body then
  raised ``CancelledError``, swallowed it and returned a value, or raised something else;
- the body returned or raised after running longer than its timeout (an ``async def`` that
  blocked the event loop, so the timer could not fire in time): a **timeout** too;
- anything else the body raises, ``BaseException`` subclasses included (``SystemExit``,
  ``KeyboardInterrupt``, ``GeneratorExit``, custom ones), is an **error** outcome, never a
  crash of the worker (a ``GeneratorExit`` thrown in because the coroutine is being closed
  is not an outcome: it propagates);
- any other cancellation (abort, shutdown, lost ownership) propagates: the caller knows why
  it cancelled and decides what that means.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..exceptions import JobTimeout


@dataclass(slots=True)
class Outcome:
    """How an attempt ended: ``kind`` is 'ok', 'error' or 'timeout'."""

    kind: str
    value: Any = None
    error: BaseException | None = None
    duration_s: float = 0.0


def timeout_outcome(timeout_s: float | None, duration_s: float, how: str,
                    cause: BaseException | None = None) -> Outcome:
    """A 'timeout' outcome whose error says how the attempt overran."""
    error = JobTimeout(f"the attempt exceeded its {timeout_s or 0:g} s timeout{how}")
    error.__cause__ = cause
    return Outcome("timeout", error=error, duration_s=duration_s)


async def await_attempt(
    fn: Callable[[], Awaitable[Any]],
    timeout_s: float | None,
    timed_out: Callable[[], bool],
    owner: asyncio.Task[Any] | None = None,
) -> Outcome:
    """Await ``fn()``. ``timed_out()`` tells whether the attempt's own timer (set up by the
    caller to cancel the current task after ``timeout_s``) has fired. ``owner``: the task
    this runs in (a ``GeneratorExit`` raised while it runs is the code's own error, not
    this coroutine being closed)."""
    started = time.perf_counter()
    try:
        value = await fn()
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if timed_out():
            if task is not None and task.cancelling():
                task.uncancel()  # our own cancellation, consumed here
            return timeout_outcome(timeout_s, time.perf_counter() - started,
                                   " and was cancelled", exc)
        if task is not None and task.cancelling() == 0:
            # Nobody cancelled this task: the task's code raised CancelledError itself
            # (it awaited something another task cancelled). An error like any other.
            return Outcome("error", error=exc, duration_s=time.perf_counter() - started)
        raise
    except GeneratorExit as exc:
        if owner is None or current_task() is not owner:
            raise  # the coroutine itself is being closed (not running in its task): no outcome
        return _ended(exc, None, timeout_s, timed_out, started)  # raised by the code
    except BaseException as exc:
        return _ended(exc, None, timeout_s, timed_out, started)
    return _ended(None, value, timeout_s, timed_out, started)


def current_task() -> asyncio.Task[Any] | None:
    """The task running now: None outside one, and when no event loop runs (a coroutine
    closed as its loop is closed)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _ended(error: BaseException | None, value: Any, timeout_s: float | None,
           timed_out: Callable[[], bool], started: float) -> Outcome:
    duration = time.perf_counter() - started
    if timed_out():  # cancelled on time, but the body swallowed it and went on
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        return timeout_outcome(timeout_s, duration, " and ignored its cancellation", error)
    if timeout_s and duration > timeout_s:  # the timer could not fire: the loop was blocked
        return timeout_outcome(timeout_s, duration, f": it ended after {duration:.3f} s, "
                               "while the event loop was blocked", error)
    if error is not None:
        return Outcome("error", error=error, duration_s=duration)
    return Outcome("ok", value=value, duration_s=duration)


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
        return await await_attempt(fn, timeout_s, lambda: fired, task)
    finally:
        if handle is not None:
            handle.cancel()
