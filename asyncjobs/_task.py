"""Tasks: the functions a worker runs, their options, and typed references to them.

A task is an ``async def`` (or a plain ``def``, run in a worker thread) whose first
parameter is the ``Context``. ``@asyncjobs.task`` attaches options; ``Task.options()`` makes
a copy with per-job options (job id, queue, delay...) for one enqueue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import anyio.to_thread

from ._context import Context
from ._durations import Seconds, to_seconds
from ._limits import RateKey, RateLimit, parse_concurrency, parse_rate
from ._options import JobOptions, check_headers, check_job_id, check_max_tries
from ._retry import RetryPolicy, exception_types
from ._routing import Priority, check_priority, check_queue, level_queue
from ._signature import ArgConverter, return_type
from .exceptions import ConfigurationError

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A registered task, or a reference to one by name (``fn`` is None then)."""

    def __init__(
        self,
        fn: Callable[Concatenate[Context, P], Any] | None,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: Seconds | None = None,
        max_tries: int | None = None,
        result_ttl: Seconds | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
        dont_retry_on: tuple[type[BaseException], ...] = (),
        retry_timeouts: bool | None = None,
        backoff: Seconds | None = None,
        backoff_cap: Seconds | None = None,
        rate_limit: str | None = None,
        rate_key: RateKey | None = None,
        soft_timeout: Seconds | None = None,
        priority: Priority | None = None,
        concurrency_limit: int | None = None,
        concurrency_key: RateKey | None = None,
    ) -> None:
        if fn is None and not name:
            raise ConfigurationError("a task reference needs a name")
        self.fn = fn
        named = name or getattr(fn, "__name__", "") or repr(fn)
        if not isinstance(named, str):  # a worker could not decode a job naming it
            raise ConfigurationError(f"a task name must be a str, not {type(named).__name__}")
        self.name: str = str.__str__(named)  # a subclass's text, never its __str__'s
        self.queue = check_queue(queue) if queue is not None else None
        self.priority: Priority | None = None
        """The level its jobs are enqueued at unless ``options(priority=...)`` says else."""
        if priority is not None:
            try:
                self.priority = check_priority(priority)
                level_queue(queue or "default", priority)
            except ConfigurationError as exc:
                raise ConfigurationError(f"task {self.name!r}: {exc}") from None
        self.timeout_s = to_seconds(timeout, "timeout")
        self.soft_timeout_s = to_seconds(soft_timeout, "soft_timeout")
        """When ``ctx.soft_timeout`` is set, before the hard timeout (None: never)."""
        if self.soft_timeout_s is not None and (
                self.soft_timeout_s <= 0
                or (self.timeout_s and self.soft_timeout_s >= self.timeout_s)):
            raise ConfigurationError(
                f"task {self.name!r}: soft_timeout must be more than 0 and less than the "
                f"timeout ({self.soft_timeout_s:g} s, timeout {self.timeout_s or 'default'})")
        self.max_tries = max_tries
        self.result_ttl_s = to_seconds(result_ttl, "result_ttl")
        try:  # one type, or any iterable of them; anything else is refused here
            retry_on = exception_types(retry_on, "retry_on") if retry_on is not None else None
            dont_retry_on = exception_types(dont_retry_on, "dont_retry_on")
        except ConfigurationError as exc:
            raise ConfigurationError(f"task {self.name!r}: {exc}") from None
        self._retry = {
            "retry_on": retry_on,
            "dont_retry_on": dont_retry_on or None,
            "retry_timeouts": retry_timeouts,
            "backoff_s": to_seconds(backoff, "backoff"),
            "backoff_cap_s": to_seconds(backoff_cap, "backoff_cap"),
        }
        self.job_options = JobOptions()
        self.is_async = fn is not None and _is_async(fn)
        if max_tries is not None:
            try:
                check_max_tries(max_tries)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"task {self.name!r}: {exc}") from None
        self.rate_limit: RateLimit | None = None
        """The limit shared by every worker of the queue (see ``_limits``), or None."""
        self.rate_key = rate_key
        if rate_limit is not None:
            try:
                self.rate_limit = parse_rate(rate_limit)
            except ConfigurationError as exc:
                raise ConfigurationError(f"task {self.name!r}: {exc}") from None
        if rate_key is not None and (self.rate_limit is None or not callable(rate_key)):
            raise ConfigurationError(f"task {self.name!r}: rate_key needs a rate_limit and "
                                     "must be a function of the task's arguments")
        self.concurrency_limit: int | None = None
        """How many jobs of this task (per ``concurrency_key``) run at once across every
        worker of the queue, or None: no limit."""
        self.concurrency_key = concurrency_key
        if concurrency_limit is not None:
            try:
                self.concurrency_limit = parse_concurrency(concurrency_limit)
            except ConfigurationError as exc:
                raise ConfigurationError(f"task {self.name!r}: {exc}") from None
        if concurrency_key is not None and (self.concurrency_limit is None
                                            or not callable(concurrency_key)):
            raise ConfigurationError(
                f"task {self.name!r}: concurrency_key needs a concurrency_limit and must be "
                "a function of the task's arguments")

    def options(
        self,
        *,
        job_id: str | None = None,
        queue: str | None = None,
        delay: Seconds | None = None,
        at: datetime | None = None,
        expires: datetime | Seconds | None = None,
        timeout: Seconds | None = None,
        max_tries: int | None = None,
        result_ttl: Seconds | None = None,
        headers: Mapping[str, str] | None = None,
        priority: Priority | None = None,
    ) -> Task[P, R]:
        """A copy of this task that enqueues with these per-job options. ``priority``
        (``"high"``, ``"normal"`` or ``"low"``) orders jobs within their queue: a worker
        starts a job only when no job of a higher level waits there. ``delay`` and ``at``
        are two ways to say when it is due: one replaces the other (the later call wins),
        and both in one call is a ``ValueError``."""
        if delay is not None and at is not None:
            raise ValueError("give delay= or at=, not both: they are two ways to say when "
                             "the job is due")
        if at is not None and not isinstance(at, datetime):
            raise TypeError(f"at= needs an aware datetime, not {type(at).__name__} {at!r:.80}")
        # naive: no tzinfo, or one that gives no offset (datetime.timestamp() then raised)
        if at is not None and at.utcoffset() is None:
            raise ValueError("at= needs an aware datetime (e.g. tzinfo=UTC)")
        if isinstance(expires, datetime) and expires.utcoffset() is None:
            raise ValueError("expires= needs an aware datetime or a duration")
        if queue is not None:  # "" is no queue name (it went to the default queue)
            queue = check_queue(queue)
        if max_tries is not None:
            check_max_tries(max_tries)
        if headers is not None:
            check_headers(headers)
        if job_id is not None:
            job_id = check_job_id(job_id)
        exp = expires if isinstance(expires, datetime) else to_seconds(expires, "expires")
        given = {
            "job_id": job_id, "queue": queue, "delay_s": to_seconds(delay, "delay"), "at": at,
            "expires": exp, "timeout_s": to_seconds(timeout, "timeout"), "max_tries": max_tries,
            "result_ttl_s": to_seconds(result_ttl, "result_ttl"),
            "headers": dict(headers) if headers is not None else None,
            "priority": check_priority(priority) if priority is not None else None,
        }
        changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if "delay_s" in changes or "at" in changes:  # the one given replaces the other
            changes.setdefault("delay_s", None)
            changes.setdefault("at", None)
        clone = _copy(self)
        clone.job_options = dataclasses.replace(self.job_options, **changes)
        return clone

    def retry_policy(self, defaults: RetryPolicy, max_tries: int | None) -> RetryPolicy:
        """This task's retry policy over the worker's defaults; a per-job max_tries wins."""
        changes: dict[str, Any] = {k: v for k, v in self._retry.items() if v is not None}
        tries = max_tries or self.max_tries
        if tries is not None:
            changes["max_tries"] = tries
        return dataclasses.replace(defaults, **changes) if changes else defaults

    @functools.cached_property
    def converter(self) -> ArgConverter:
        """Converts decoded arguments to the parameter types (worker side)."""
        if self.fn is None:
            raise TypeError(f"task {self.name!r} is a reference by name and cannot run here")
        return ArgConverter(self.fn)

    @functools.cached_property
    def param_names(self) -> tuple[str, ...]:
        """Positional parameter names after the context (for error messages)."""
        return ArgConverter(self.fn).names if self.fn is not None else ()

    @functools.cached_property
    def result_type(self) -> Any:
        """The declared return type (``Any`` for references by name)."""
        return return_type(self.fn) if self.fn is not None else Any

    async def __call__(self, ctx: Context, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function directly (sync functions in a worker thread)."""
        if self.fn is None:
            raise TypeError(f"task {self.name!r} is a reference by name and cannot run here")
        if self.is_async:
            result: R = await self.fn(ctx, *args, **kwargs)
            return result
        call = functools.partial(self.fn, ctx, *args, **kwargs)
        value: R = await anyio.to_thread.run_sync(call)
        return value

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


def _copy(task: Task[P, R]) -> Task[P, R]:
    clone = object.__new__(Task)
    clone.__dict__.update(task.__dict__)
    return clone


def _is_async(fn: Callable[..., Any]) -> bool:
    target = inspect.unwrap(fn)
    if isinstance(target, functools.partial):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async callable objects
    )


AsyncFn = Callable[Concatenate[Context, P], Coroutine[Any, Any, R]]
SyncFn = Callable[Concatenate[Context, P], R]


class TaskDecorator:
    """What ``@task(...)`` with options returns: applies them to a function."""

    def __init__(self, **options: Any) -> None:
        self._options = options

    @overload
    def __call__(self, fn: AsyncFn[P, R], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: SyncFn[P, R], /) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Task[Any, Any]:
        return Task(fn, **self._options)


@overload
def task(fn: AsyncFn[P, R], /) -> Task[P, R]: ...
@overload
def task(fn: SyncFn[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: Seconds | None = None,
    max_tries: int | None = None,
    result_ttl: Seconds | None = None,
    retry_on: tuple[type[BaseException], ...] | None = None,
    dont_retry_on: tuple[type[BaseException], ...] = (),
    retry_timeouts: bool | None = None,
    backoff: Seconds | None = None,
    backoff_cap: Seconds | None = None,
    rate_limit: str | None = None,
    rate_key: RateKey | None = None,
    soft_timeout: Seconds | None = None,
    priority: Priority | None = None,
    concurrency_limit: int | None = None,
    concurrency_key: RateKey | None = None,
) -> TaskDecorator: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Task[Any, Any] | TaskDecorator:
    """Declare a task, bare (``@task``) or with options (``@task(timeout=30, max_tries=5)``).

    Options: ``name`` (default: the function's name), ``queue`` (where producers send it),
    ``timeout``, ``max_tries``, ``result_ttl``, ``retry_on`` / ``dont_retry_on`` (exception
    types), ``retry_timeouts``, ``backoff`` / ``backoff_cap`` (seconds or timedelta),
    ``rate_limit`` (``"10/s"``, ``"100/m"``, ``"5/h"``: shared by every worker of the queue)
    and ``rate_key`` (a function of the job's arguments: one such limit per key),
    ``soft_timeout`` (seconds, less than ``timeout``: when it passes, ``ctx.soft_timeout``
    is set so the task can save partial work before the hard timeout cancels it),
    ``priority`` (``"high"``, ``"normal"`` or ``"low"``: the level of its jobs within their
    queue, unless ``options(priority=...)`` says else),
    ``concurrency_limit`` (an int: at most that many jobs of the task run at once across
    every worker of the queue) and ``concurrency_key`` (a function of the job's arguments:
    one such limit per key).
    """
    if fn is None:
        return TaskDecorator(**options)
    return Task(fn, **options)


def task_ref(name: str, *, queue: str | None = None,
             priority: Priority | None = None) -> Task[..., Any]:
    """A reference to a task by name, for producers that do not import the worker's code."""
    return Task(None, name=name, queue=queue, priority=priority)


_wrapped: weakref.WeakKeyDictionary[Callable[..., Any], Task[Any, Any]] = (
    weakref.WeakKeyDictionary()
)


def as_task(target: Task[Any, Any] | Callable[..., Any] | str) -> Task[Any, Any]:
    """A Task for a Task, a plain function, or a task name."""
    if isinstance(target, Task):
        return target
    if isinstance(target, str):
        return task_ref(target)
    if not callable(target):
        raise TypeError(f"expected a task, a function or a task name, got {target!r}")
    try:
        return _wrapped[target]
    except (KeyError, TypeError):
        wrapped: Task[Any, Any] = Task(target)
        with contextlib.suppress(TypeError):  # not weak-referenceable: do not cache
            _wrapped[target] = wrapped
        return wrapped


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One call of a task, ready for ``Pool.enqueue_many``; build it with ``call()``."""

    task: Task[Any, R]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@overload
def call(task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Call[R]: ...
@overload
def call(task: AsyncFn[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Call[R]: ...
@overload
def call(task: SyncFn[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Call[R]: ...
@overload
def call(task: str, /, *args: Any, **kwargs: Any) -> Call[Any]: ...
def call(task: Any, /, *args: Any, **kwargs: Any) -> Call[Any]:
    """Describe one enqueue (task and arguments, checked by mypy) for ``enqueue_many``."""
    return Call(as_task(task), args, kwargs)
