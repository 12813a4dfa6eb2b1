"""The producer: ``Pool.enqueue`` (``opening.create_pool`` opens a pool).

Enqueue is one script call (``enqueue.lua``): the record and the stream entry (or the delayed
set entry) are written together, or not at all. The job id is chosen before the first try,
so retrying an enqueue after a lost reply cannot create a second job.

Backpressure: a queue may have a maximum length, stored in Redis with the queue
(``Admin.set_max_length``) so every producer enforces the same one. enqueue.lua checks it and
writes in one step, so producers racing each other never take the queue past it; a job
that finds no room is refused (``QueueFull`` names it), or tried again until
``wait_for_room`` seconds have passed.

Closing: once ``close()`` began, every call of the pool (and of its job handles and its
``admin``) raises ``PoolClosed`` before it sends anything: redis-py would otherwise open the
closed client's connections again. A call under way on the pool's own client when it closed
is cut (``cuts.Cuts``: cancelled, and ended with ``PoolClosed``, never retried), as is a
result wait still subscribing: closing the connections alone did not end a call whose
connection was in its handshake. One sleeping between retries ends with ``PoolClosed`` as
it wakes (within a second). On a client given to the pool (left
open) a call under way ends with its reply. redis-py itself may send a cut command once
more, on a new connection: that one is closed when the last call under way ends, so no
socket outlives them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._codec import encode_spec
from .._durations import Seconds, to_seconds
from .._model import JobSpec, to_ms
from .._redis.cluster import CLUSTER_OUTAGE
from .._redis.connection import pool_exhausted, tls_hint
from .._redis.kept import new_job_ids
from .._redis.keys import GlobalKeys, Keys, check_name
from .._redis.refusals import not_now, reply_code
from .._redis.replication import Replication
from .._redis.store import QueueStore
from .._redis.values import NewJob
from .._routing import level_queue
from .._task import AsyncFn, Call, SyncFn, Task, call
from ..exceptions import (
    ConfigurationError,
    EnqueueError,
    PoolClosed,
    PoolExhausted,
    QueueFull,
    RedisFull,
    RedisUnavailable,
    SerializationError,
)
from .cuts import Cuts
from .handle import Job
from .waiter import Waiter

if TYPE_CHECKING:
    from .admin import Admin

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

log = logging.getLogger("asyncjobs.pool")

_OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError, *CLUSTER_OUTAGE)
_RETRIED = (*_OUTAGE, ResponseError)
"""What a call may be retried for: an outage, or a reply refusing any command for now
(``not_now``: READONLY from a server that turned replica in a failover, BUSY...)."""

_FREE_CONNECTION_WAIT_S = 5.0
"""How long a call waits for a free connection of a Redis Cluster node (as long as one
server's pool waits by default)."""
_FREE_CONNECTION_POLL_S = 0.002


def _reason(exc: BaseException) -> str:
    """What Redis said, its code included (redis-py takes some off: a ReadOnlyError reads
    "You can't write against a read only replica.")."""
    if isinstance(exc, ResponseError):
        code, text = reply_code(exc)
        return text if text.startswith(code) else f"{code} {text}"
    return str(exc)


def _oom(reason: str) -> bool:
    return reason.startswith("OOM") or "maxmemory" in reason


_SMALLEST_BULK = 1024 * 1024
"""The smallest ``proto-max-bulk-len`` Redis takes: a job up to this size fits any Redis
(larger ones are checked against the server's, read once a minute)."""
_DEFAULT_BULK = 512 * 1024 * 1024

_FULL = "full: "
_ROOM_POLL_S = (0.01, 0.2)
"""While waiting for room: the first pause between looks, and the longest (doubling)."""


def _refusal(refused: dict[str, str], handles: list[Job[Any]], full: dict[str, int],
             full_ids: set[str]) -> EnqueueError:
    """The error for the jobs not written: ``RedisFull`` if Redis was out of memory,
    ``QueueFull`` when a full queue is the reason for each, else ``EnqueueError``."""
    enqueued = [h for h in handles if h.id not in refused]
    if any(_oom(r) for r in refused.values()):
        return RedisFull(refused, enqueued)
    if full_ids == refused.keys():
        return QueueFull(refused, enqueued, full)
    return EnqueueError(refused, enqueued)


class Pool:
    """A producer's handle on Redis: enqueue jobs, look them up, inspect queues.

    Create it with ``await create_pool(url)`` (or ``async with create_pool(url) as pool``).
    Calls that cannot reach Redis retry for up to ``retry_for`` seconds, then raise
    ``RedisUnavailable``; they never hang. After ``close()`` they raise ``PoolClosed``.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "asyncjobs",
        queue: str = "default",
        retry_for: float = 5.0,
        owns_client: bool = True,
        description: str = "",
        wait_for_room: Seconds | None = None,
        replication: Replication | None = None,
    ) -> None:
        self.client = client
        self.replication = replication
        """WAIT after each enqueue (``create_pool(wait_replicas=...)``), or None."""
        self.prefix = check_name("prefix", prefix)
        self.default_queue = check_name("queue name", queue)
        self.retry_for_s: float = _retry_for(retry_for)
        self.description = description
        self.wait_for_room_s: float = to_seconds(wait_for_room, "wait_for_room") or 0.0
        """How long an enqueue waits for room in a full queue before raising ``QueueFull``
        (0: it does not wait); ``enqueue_many(wait_for_room=...)`` overrides it."""
        self.global_keys = GlobalKeys(prefix)
        self._owns_client = owns_client
        self._closed = False
        self._calls = 0  # calls under way (between sending a command and its reply)
        self._cuts = Cuts(self._closed_error)  # the calls under way, cut by a close
        self._stores: dict[str, QueueStore] = {}
        self._known_queues: set[str] = set()
        self._waiter: Waiter | None = None
        self._bulk_most: int | None = None
        self._bulk_read_at = 0.0
        self.header_providers: list[Callable[[], Mapping[str, str]]] = []
        """Called at each enqueue; their headers travel with the job (e.g. trace context)."""

    def keys(self, queue: str) -> Keys:
        """The key names of a queue."""
        return self.store(queue).keys

    def store(self, queue: str) -> QueueStore:
        """The Redis operations of a queue (internal)."""
        store = self._stores.get(queue)
        if store is None:
            store = self._stores[queue] = QueueStore(self.client, Keys(self.prefix, queue))
            store.replication = self.replication
        return store

    @property
    def admin(self) -> Admin:
        """Queue statistics, live workers, and dead-letter handling."""
        # Imported here: the listings, insight and dead-letter code behind it (and cron's
        # zoneinfo) stay out of a worker process, whose pool only enqueues.
        from .admin import Admin

        return Admin(self)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called: every call that would reach Redis raises
        ``PoolClosed``."""
        return self._closed

    def _check_open(self) -> None:
        """``PoolClosed`` if the pool was closed (internal: before reaching Redis)."""
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> PoolClosed:
        where = f" ({self.description})" if self.description else ""
        return PoolClosed(f"the pool{where} is closed: open a new one to reach Redis again")

    @property
    def waiter(self) -> Waiter:
        """The pub/sub router used to wait for results (internal)."""
        self._check_open()
        if self._waiter is None:
            self._waiter = Waiter(self.client)
        return self._waiter

    async def call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run one Redis operation (``make()`` builds it, so it can be tried again), retrying
        connection failures for up to ``retry_for`` seconds, then raising
        ``RedisUnavailable``. A stale connection after a Redis restart costs one retry."""
        return await self._retrying(make)

    async def _retrying(self, make: Callable[[], Awaitable[T]]) -> T:
        began = time.monotonic()
        deadline = began + self.retry_for_s
        delay = 0.05
        room = _FREE_CONNECTION_POLL_S
        while True:
            self._check_open()
            try:
                return await self._counted(make)
            except OutOfMemoryError as exc:
                raise RedisFull({}, []) from exc
            except _RETRIED as exc:
                if self._closed and isinstance(exc, _OUTAGE):  # cut by the close
                    raise self._closed_error() from exc
                if not isinstance(exc, _OUTAGE) and not not_now(exc):
                    raise
                if isinstance(exc, MaxConnectionsError) \
                        and time.monotonic() - began < _FREE_CONNECTION_WAIT_S:
                    # a Redis Cluster node's connections are all busy: redis-py's
                    # cluster raises at once (before sending anything), where one
                    # server's pool waits for a free connection; wait here instead
                    await asyncio.sleep(room)
                    room = min(room * 2, 0.05)
                    continue
                if pool_exhausted(exc):
                    raise PoolExhausted(
                        f"every connection of the pool ({self.description}) stayed busy: "
                        "too many calls at once; raise create_pool(max_connections=...)"
                    ) from exc
                if time.monotonic() + delay > deadline:
                    raise RedisUnavailable(
                        f"Redis unavailable for {self.retry_for_s:g} s "
                        f"({self.description}): {_reason(exc)}"
                        f"{tls_hint(self.description, exc)}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _counted(self, make: Callable[[], Awaitable[T]]) -> T:
        """``make()``, counted as a call under way, which a close cuts: ``PoolClosed``
        (``Cuts``). The last call to end after a close closes the pool's own client again:
        the connection redis-py opened anew to send a command the close cut (its one
        retry) is not left open."""
        self._calls += 1
        try:
            if self._owns_client:  # a close cuts only the calls on its own client
                with self._cuts.step():
                    return await make()
            return await make()
        finally:
            self._calls -= 1
            if self._closed and not self._calls and self._owns_client:
                await self.client.aclose()

    async def once(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation once, never retried (internal: for a caller that backs
        off on its own, the outbox relay's lease); like every call of the pool, it raises
        ``PoolClosed`` once the pool is closed, and a close cuts it while under way."""
        self._check_open()
        try:
            return await self._counted(make)
        except _OUTAGE as exc:
            if self._closed:  # cut by the close
                raise self._closed_error() from exc
            raise

    # fmt: off
    @overload
    async def enqueue(self, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    @overload
    async def enqueue(self, task: AsyncFn[P, R], /, *args: P.args,
                      **kwargs: P.kwargs) -> Job[R]: ...
    @overload
    async def enqueue(self, task: SyncFn[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    @overload
    async def enqueue(self, task: str, /, *args: Any, **kwargs: Any) -> Job[Any]: ...
    # fmt: on
    async def enqueue(self, task: Any, /, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue one job and return its handle at once.

        ``task`` is a ``Task`` (``@asyncjobs.task``), a task function, or a task name. Give
        per-job options with ``task.options(job_id=..., queue=..., delay=..., ...)``. If the
        job id already names a queued, scheduled or running job, or one whose result is
        still kept, that job's handle is returned and nothing new is enqueued.

        A queue at its maximum length raises ``QueueFull`` (after waiting up to the pool's
        ``wait_for_room`` for a worker to make room).
        """
        (job,) = await self.enqueue_many([call(task, *args, **kwargs)])
        return job

    async def enqueue_many(self, calls: Iterable[Call[Any]], *,
                           wait_for_room: Seconds | None = None) -> list[Job[Any]]:
        """Enqueue many jobs in few round trips (batches of 500 per script call, pipelined).

        Every argument of every job is encoded before anything is written. Each job is
        written whole or not at all; jobs that were not raise ``EnqueueError`` (or a
        subclass), whose ``reasons`` name them and whose ``enqueued`` holds the others.

        A queue with a maximum length (``Admin.set_max_length``) takes jobs in order while
        it has room; the rest raise ``QueueFull``. With ``wait_for_room`` (seconds or a
        timedelta; default: the pool's), those are tried again, with the same job ids,
        until they fit or the time is up. Jobs already in a queue (dedup by job id) take
        no room and are never refused.
        """
        self._check_open()
        wait_s = (self.wait_for_room_s if wait_for_room is None
                  else to_seconds(wait_for_room, "wait_for_room") or 0.0)
        batch = list(calls)
        for c in batch:
            if not isinstance(c, Call):
                raise TypeError(f"enqueue_many takes asyncjobs.call(task, ...) items, not "
                                f"{type(c).__name__} {c!r:.80}")
        ids = new_job_ids(len(batch))
        prepared = [self.prepare(c, job_id) for c, job_id in zip(batch, ids, strict=True)]
        if any(len(new.spec) > _SMALLEST_BULK for _, new, _ in prepared):
            await self._check_sizes(batch, [new for _, new, _ in prepared])
        by_queue: dict[str, list[NewJob]] = {}
        for queue, new, _ in prepared:
            by_queue.setdefault(queue, []).append(new)
        deadline = time.monotonic() + wait_s
        refused: dict[str, str] = {}
        full: dict[str, int] = {}
        full_ids: set[str] = set()
        for queue, jobs in by_queue.items():
            existing = await self._write_until(queue, jobs, deadline)
            for i, state in existing.items():
                if state.startswith(_FULL):
                    full[queue] = int(state[len(_FULL):])
                    refused[jobs[i].id] = f"queue {queue!r} is full (max {full[queue]} jobs)"
                    full_ids.add(jobs[i].id)
                elif state.startswith("error: "):
                    refused[jobs[i].id] = state[7:]
        handles: list[Job[Any]] = [Job(self, new.id, queue, rtype)
                                   for queue, new, rtype in prepared]
        if refused:
            raise _refusal(refused, handles, full, full_ids)
        return handles

    async def _check_sizes(self, batch: Sequence[Call[Any]], jobs: Sequence[NewJob]) -> None:
        """``SerializationError`` for a job larger than Redis takes (its
        ``proto-max-bulk-len``), before anything is written: Redis would answer the whole
        script call with a protocol error and drop the connection (the jobs of an earlier
        call of the same pipeline written, the caller told only of the error)."""
        most = await self._largest_value()
        for c, new in zip(batch, jobs, strict=True):
            if len(new.spec) > most:
                raise SerializationError(
                    f"cannot enqueue job {new.id!r:.80} of task {c.task.name!r:.200}: it is "
                    f"larger than Redis takes: {len(new.spec):,} bytes encoded, over its "
                    f"proto-max-bulk-len of {most:,}")

    async def _largest_value(self) -> int:
        """Redis's ``proto-max-bulk-len``, read at most once a minute (512 MB, Redis's
        default, when ``CONFIG GET`` is refused or answers garbage). The outbox relay asks
        it too, to fail a row too large for Redis before the batch holding it is sent."""
        now = time.monotonic()
        if self._bulk_most is None or now >= self._bulk_read_at + 60:
            self._bulk_read_at = now
            try:
                reply = await self._retrying(
                    lambda: self.client.config_get("proto-max-bulk-len"))
                self._bulk_most = int(str(next(iter(reply.values()))))
            except (RedisUnavailable, PoolExhausted):
                raise
            except Exception:
                self._bulk_most = _DEFAULT_BULK
        return self._bulk_most

    async def _write_until(self, queue: str, jobs: Sequence[NewJob], deadline: float
                           ) -> dict[int, str]:
        """``write_jobs``, trying the jobs a full queue refused again (same ids) until they
        fit or ``deadline`` (monotonic) passes; the last try counts its refusals."""
        pending, replies = list(range(len(jobs))), dict[int, str]()
        pause = _ROOM_POLL_S[0]
        while True:
            last = time.monotonic() >= deadline
            got = await self.write_jobs(queue, [jobs[i] for i in pending], count_refused=last)
            retry = {pending[k] for k, state in got.items()
                     if state.startswith(_FULL) and not last}
            replies.update((pending[k], state) for k, state in got.items()
                           if pending[k] not in retry)
            if not retry:
                return replies
            pending = sorted(retry)
            await self._wait_for_room(queue, deadline, pause)
            pause = min(pause * 2, _ROOM_POLL_S[1])

    async def _wait_for_room(self, queue: str, deadline: float, pause: float) -> None:
        """Sleep until the queue has room (looked at every ``pause`` seconds, one cheap
        pipelined read) or the deadline passes."""
        store = self.store(queue)
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(pause, left))
            room = await self._retrying(store.room)
            if room is None or room > 0:
                return

    async def write_jobs(self, queue: str, jobs: Sequence[NewJob], *,
                         count_refused: bool = True) -> dict[int, str]:
        """Write jobs prepared by ``prepare`` to ``queue`` (retrying outages like every call);
        returns those not created, by index: the state of a job that already existed (dedup
        by job id), ``'full: <max>'`` for one a full queue refused, or
        ``'error: <reason>'``. Internal: ``enqueue_many`` and the outbox relay write
        through it."""
        await self._register_queue(queue)
        store = self.store(queue)
        existing: dict[int, str] = await self._retrying(
            lambda: store.enqueue(jobs, count_refused=count_refused))
        return existing

    def prepare(self, c: Call[Any], new_id: str | None = None) -> tuple[str, NewJob, Any]:
        """One call encoded exactly as ``enqueue`` writes it: (queue, the job, the task's
        result type). Arguments are checked and encoded here; nothing is written."""
        new_id = new_id or new_job_ids(1)[0]
        task, opts = c.task, c.task.job_options
        if task.fn is not None:  # a task known here: its arguments must bind
            task.converter.check(c.args, c.kwargs)
        queue = level_queue(opts.queue or task.queue or self.default_queue,
                            opts.priority or task.priority)
        spec = JobSpec(
            task=task.name,
            args=list(c.args),
            kwargs=c.kwargs,
            timeout_s=opts.timeout_s,
            max_tries=opts.max_tries,
            result_ttl_s=opts.result_ttl_s,
            headers=self._headers(opts.headers),
        )
        data = encode_spec(spec, task.param_names)
        expires_in_ms, expires_at_ms = _expiry(opts.expires)
        new = NewJob(
            id=opts.job_id or new_id,
            spec=data,
            delay_ms=round((opts.delay_s or 0) * 1000),
            # (at least 1 ms: 0 means "no due time", and a time before 1970 is negative;
            # such an `at` is now)
            due_at_ms=max(1, to_ms(opts.at)) if opts.at else 0,
            expires_in_ms=expires_in_ms,
            expires_at_ms=expires_at_ms,
        )
        return queue, new, task.result_type

    def _headers(self, given: Mapping[str, str]) -> dict[str, str]:
        if not self.header_providers:
            return dict(given)
        headers: dict[str, str] = {}
        for provider in self.header_providers:
            headers.update(provider())
        headers.update(given)
        return headers

    async def _register_queue(self, queue: str) -> None:
        if queue not in self._known_queues:
            await self._retrying(lambda: self.client.sadd(self.global_keys.queues, queue))
            self._known_queues.add(queue)

    def job(self, job_id: str, queue: str | None = None) -> Job[Any]:
        """A handle on an existing job (no Redis call until you use it); ``TypeError`` for
        an id that is not text (bytes would name another job: ``"b'...'"``)."""
        if not isinstance(job_id, str):
            raise TypeError(f"a job id is a str, not {type(job_id).__name__}: {job_id!r:.80}")
        return Job(self, str.__str__(job_id), queue or self.default_queue)

    async def close(self) -> None:
        """Close the pool: from now on its calls, and those of its job handles, raise
        ``PoolClosed`` (a ``job.result()`` waiting ends with it at once). Closes the
        connections it opened; a client given to it (``owns_client=False``) is left open.
        Closing again is harmless (and finishes a close that was cancelled)."""
        self._closed = True
        if self._waiter is not None:
            await self._waiter.close()
        if self._owns_client:
            self._cuts.cut()  # redis-py does not end a call whose connection is being made
            await self.client.aclose()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


__all__ = ["Pool"]


def _expiry(expires: datetime | float | None) -> tuple[int, int]:
    """A job's ``expires`` as the record takes it: (ms after the enqueue, epoch ms), 0 for
    none (0 in both: it never expires). A duration counts in whole milliseconds; one of
    0 ms (``expires=0``, or under half a millisecond) has passed by the time any worker
    could start the job: it is written as the earliest time (1 ms after the epoch), as a
    datetime before 1970 is, so that the job ends ``expired`` without running, however
    soon a worker takes it (1 ms after the enqueue let one that took it within that
    millisecond run it)."""
    if isinstance(expires, datetime):
        return 0, max(1, to_ms(expires))
    if expires is None:
        return 0, 0
    after_ms = round(expires * 1000)
    return (after_ms, 0) if after_ms > 0 else (0, 1)


def _retry_for(value: object) -> float:
    """``retry_for`` in seconds: a finite number, 0 or more (NaN or inf retried an
    unreachable Redis for ever); ``ConfigurationError`` naming it otherwise."""
    try:
        seconds = to_seconds(value, "retry_for")  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None
    return seconds or 0.0
