"""A worker's lifespan hook (``Worker(lifespan=...)``), held so that it cannot hold the
worker: a stop asked while it starts cancels its start (the run then ends, as a stop during
start-up does), and its exit gets what is left of the grace period, at least
``EXIT_S``, then is cancelled and logged (the run goes on to close its connections)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

from .runtime import Runtime

log = logging.getLogger("asyncjobs.worker")

EXIT_S = 1.0
"""The least time a lifespan's exit gets (past the grace period, when the drain took it)."""


@contextlib.asynccontextmanager
async def held(lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None,
               worker: Any, starting: anyio.CancelScope, rt: Runtime) -> AsyncIterator[Any]:
    """``lifespan(worker)`` entered within ``starting`` (a stop cancels it: the caller sees
    ``starting.cancel_called``), exited within ``exit_bound(rt)``; what it yields, or None."""
    if lifespan is None:
        yield None
        return
    manager = lifespan(worker)
    entered, state = False, None
    with starting:
        state = await manager.__aenter__()
        entered = True
    if not entered:  # stopped while it started: its start was cancelled
        yield None
        return
    try:
        yield state
    except BaseException as exc:
        if not await _exit(manager, exc, rt):
            raise
    else:
        await _exit(manager, None, rt)


async def _exit(manager: AbstractAsyncContextManager[Any], exc: BaseException | None,
                rt: Runtime) -> bool:
    """Exit ``manager`` within ``exit_bound(rt)``; whether it suppressed ``exc``."""
    bound = exit_bound(rt, time.monotonic())
    with anyio.move_on_after(bound) as scope:
        suppressed = await manager.__aexit__(
            type(exc) if exc is not None else None, exc,
            exc.__traceback__ if exc is not None else None)
    if scope.cancelled_caught:
        log.warning("the worker's lifespan did not finish its exit within %g s: cancelled",
                    bound)
        return False
    return bool(suppressed)


def exit_bound(rt: Runtime, now: float) -> float:
    """How long the lifespan's exit may take at ``now``: what is left of the grace period
    (none in a hurry, or when the run did not drain), at least ``EXIT_S``."""
    if not rt.stopped_at or rt.hurry.is_set():
        return EXIT_S
    return max(EXIT_S, rt.stopped_at + rt.config.shutdown_grace_s - now)
