"""Job middleware and job-event observers: the worker's extension points.

A ``Middleware`` wraps every attempt, inside its timeout: ``before`` and ``after`` for
logging context or metrics, ``around`` to hold a resource (a DB session, a tracing span)
for the attempt's duration. Middleware run in the order given; ``after`` in reverse.

An ``Observer`` hears what the worker decided about each job (started, complete, retry,
failed, expired, aborted, interrupted) with its duration: that is where metrics live,
because it also sees jobs that never reach a task (dead-lettered, expired, aborted).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ._context import Context

Call = Callable[[], Awaitable[Any]]


class Middleware:
    """Override any of ``before``, ``after`` and ``around``; the defaults do nothing."""

    async def before(self, ctx: Context) -> None:
        """Called before the task runs."""

    async def after(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        """Called after the task returned (``error`` is None) or raised."""

    async def around(self, ctx: Context, call_next: Call) -> Any:
        """Wrap the task: ``return await call_next()``."""
        return await call_next()


class Observer(Protocol):
    """Receives job events: ``event`` is 'started', 'complete', 'retry', 'failed',
    'expired', 'aborted' or 'interrupted'; ``duration_s`` is 0 for 'started'."""

    def job_event(self, event: str, queue: str, task: str, duration_s: float) -> None: ...


Invoke = Callable[[Context, Call], Awaitable[Any]]


def compose(middleware: Sequence[Middleware]) -> Invoke | None:
    """One function that runs a call through every middleware (None when there is none)."""
    chain = tuple(middleware)
    if not chain:
        return None

    async def invoke(ctx: Context, call: Call) -> Any:
        for m in chain:
            await m.before(ctx)
        handler = call
        for m in reversed(chain):
            handler = _wrap(m, ctx, handler)
        try:
            result = await handler()
        except BaseException as exc:
            for m in reversed(chain):
                await m.after(ctx, None, exc)
            raise
        for m in reversed(chain):
            await m.after(ctx, result, None)
        return result

    return invoke


def _wrap(m: Middleware, ctx: Context, inner: Call) -> Call:
    async def call() -> Any:
        return await m.around(ctx, inner)

    return call
