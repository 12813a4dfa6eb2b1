"""Run one attempt of a task under a hard timeout and report what happened. No Redis.

Cancellation from outside (abort, shutdown, lost ownership) propagates: the caller knows why
it cancelled and decides what that means. Everything the task raises becomes an outcome.
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


async def run_attempt(fn: Callable[[], Awaitable[Any]], timeout_s: float | None) -> Outcome:
    """Await ``fn()``, cancelling it after ``timeout_s`` seconds (None or 0: no limit)."""
    started = time.perf_counter()
    scope: asyncio.Timeout | None = None
    try:
        if timeout_s:
            async with asyncio.timeout(timeout_s) as scope:
                value = await fn()
        else:
            value = await fn()
    except TimeoutError as exc:
        elapsed = time.perf_counter() - started
        if scope is None or not scope.expired():  # the task's own TimeoutError
            return Outcome("error", error=exc, duration_s=elapsed)
        error = JobTimeout(f"the attempt exceeded its {timeout_s:g} s timeout and was cancelled")
        error.__cause__ = exc
        return Outcome("timeout", error=error, duration_s=elapsed)
    except (Exception, SystemExit) as exc:
        return Outcome("error", error=exc, duration_s=time.perf_counter() - started)
    return Outcome("ok", value=value, duration_s=time.perf_counter() - started)
