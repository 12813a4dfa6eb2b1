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
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from ._context import Context
from ._events import JobEvent
from ._text import safe_str
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
            raise ConfigurationError(
                f"observer {safe_str(observer, 200)} has no job_event(event) method")
        try:
            inspect.signature(hook).bind(None)
        except TypeError:
            raise ConfigurationError(
                f"observer {safe_str(observer, 200)}: job_event must take one JobEvent "
                "(event.kind, event.queue, event.task, event.duration_s...), not "
                "(event, queue, task, duration_s)") from None
        except ValueError:  # no signature to read (a builtin): trust it
            continue
        if _is_async(hook):  # called and never awaited: it would never run
            raise ConfigurationError(
                f"observer {safe_str(observer, 200)}: job_event must be a plain def, not an "
                "async def (the worker calls it on its event loop and does not await it); "
                "hand slow or async work to a task or a queue of yours")


_HOOKS = (("before", ("ctx",)), ("around", ("ctx", "call_next")),
          ("after", ("ctx", "result", "error")))


def check_middleware(middleware: Sequence[object]) -> None:
    """``ConfigurationError`` for a middleware that would fail every attempt the same way:
    not an instance with ``before``, ``around`` and ``after`` (subclass ``Middleware``),
    one of them not an ``async def``, or taking other arguments."""
    for m in middleware:
        name = safe_str(m, 200)
        if isinstance(m, type):
            raise ConfigurationError(f"middleware {name} is a class: pass an instance "
                                     f"({m.__qualname__}())")
        for method, params in _HOOKS:
            hook = getattr(m, method, None)
            if not callable(hook):
                raise ConfigurationError(
                    f"middleware {name} has no {method}() method: subclass "
                    "asyncjobs.Middleware, whose hooks do nothing by default")
            if not inspect.iscoroutinefunction(hook):
                raise ConfigurationError(
                    f"middleware {name}: {method} must be an async def (it is awaited)")
            try:
                inspect.signature(hook).bind(*params)
            except TypeError:
                raise ConfigurationError(
                    f"middleware {name}: {method} must take ({', '.join(params)})") from None
            except ValueError:  # no signature to read: trust it
                pass


def check_log_context(hook: object) -> None:
    """``ConfigurationError`` for a ``log_context`` hook that cannot give fields: not
    callable, or an ``async def`` (its coroutine would never be awaited)."""
    if hook is None:
        return
    if not callable(hook):
        raise ConfigurationError(f"log_context must be a function of the job's context, not "
                                 f"{safe_str(hook, 200)}")
    if _is_async(hook):
        raise ConfigurationError(
            "log_context must be a plain def returning a mapping, not an async def "
            "(it is called as an attempt starts, and not awaited)")


def _is_async(fn: object) -> bool:
    """True for an ``async def`` (or an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - its __call__, not whether callable


LogContext = Callable[[Context], Mapping[str, object]]
"""Fields for a job's log lines, from its context (headers, task, queue...)."""


Invoke = Callable[[Context, Call], Awaitable[Any]]


def compose(middleware: Sequence[Middleware]) -> Invoke | None:
    """One function that runs a call through every middleware (None when there is none);
    ``ConfigurationError`` for a middleware that cannot work (``check_middleware``)."""
    chain = tuple(middleware)
    if not chain:
        return None
    check_middleware(chain)

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


class _Next:
    """The ``call_next`` one middleware's ``around`` gets: it runs the rest of the chain
    once. A second call raises (the task runs once per attempt: a retry is the retry
    policy's), and ``around`` returning the call unawaited fails the attempt (the task did
    not run; the coroutine is closed)."""

    __slots__ = ("inner", "made", "owner")

    def __init__(self, owner: Middleware, inner: Call) -> None:
        self.owner = owner
        self.inner = inner
        self.made: Awaitable[Any] | None = None

    def __call__(self) -> Awaitable[Any]:
        if self.made is not None:
            raise RuntimeError(
                f"middleware {type(self.owner).__qualname__} called call_next() a second time "
                "in one attempt: the task runs once per attempt (raise instead, and let the "
                "retry policy run it again)")
        self.made = self.inner()
        return self.made


def _wrap(m: Middleware, ctx: Context, inner: Call) -> Call:
    async def call() -> Any:
        nxt = _Next(m, inner)
        result = await m.around(ctx, nxt)
        if result is not None and result is nxt.made:
            if isinstance(result, Coroutine):
                result.close()
            raise TypeError(
                f"middleware {type(m).__qualname__} returned call_next() without awaiting it "
                "(return await call_next()): the task did not run")
        return result

    return call
