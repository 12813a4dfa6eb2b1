"""Job middleware and job-event observers: the worker's extension points.

A ``Middleware`` wraps every attempt, inside its timeout: ``before`` and ``after`` for
logging context or metrics, ``around`` to hold a resource (a DB session, a tracing span)
for the attempt's duration. Middleware run in the order given; ``after`` in reverse.

An ``Observer`` hears what the worker decided about each job (started, complete, retry,
failed, expired, aborted, interrupted) as a ``JobEvent``: the job's id, task, queue,
attempt, duration, error, and its arguments on demand. That is where metrics and alerts
live, because it also sees jobs that never reach a task (dead-lettered, expired, aborted).

A ``LogContext`` hook (``Worker(log_context=...)``) returns fields for a job's log lines,
e.g. ``lambda ctx: {"tenant": ctx.headers.get("tenant", "-")}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from ._context import Context
from ._events import JobEvent
from .exceptions import ConfigurationError

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
    """Receives every job event (see ``JobEvent`` for the kinds). Called on the worker's
    event loop: keep it quick (hand slow work to a task or a queue); an exception it raises
    is logged and never breaks a job."""

    def job_event(self, event: JobEvent) -> None: ...


def check_observers(observers: Sequence[object]) -> None:
    """``ConfigurationError`` for an observer that cannot take ``job_event(event)``: none
    at all, or the four-argument form of earlier releases (one line saying how to port it)."""
    for observer in observers:
        hook = getattr(observer, "job_event", None)
        if not callable(hook):
            raise ConfigurationError(f"observer {observer!r} has no job_event(event) method")
        try:
            inspect.signature(hook).bind(None)
        except TypeError:
            raise ConfigurationError(
                f"observer {observer!r}: job_event must take one JobEvent "
                "(event.kind, event.queue, event.task, event.duration_s...), not "
                "(event, queue, task, duration_s)") from None
        except ValueError:  # no signature to read (a builtin): trust it
            continue


LogContext = Callable[[Context], Mapping[str, object]]
"""Fields for a job's log lines, from its context (headers, task, queue...)."""


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
