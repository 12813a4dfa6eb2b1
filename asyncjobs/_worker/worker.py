"""The worker: configuration, start-up, the task group of its loops, and shutdown.

Shutdown (SIGTERM, SIGINT, ``stop()``, or a drained queue in burst mode): stop reading; let
running jobs finish within the grace period; cancel the rest; record every outcome; hand
back every entry still held so other workers take it at once; leave the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from redis.exceptions import ResponseError

from .._durations import Seconds, to_seconds
from .._middleware import LogContext, Middleware, Observer, check_observers, compose
from .._options import check_whole
from .._producer.pool import Pool
from .._redis.connection import ClientFactory, default_url, redact, url_factory
from .._redis.health import judge, read_settings
from .._redis.keys import Keys
from .._redis.pubsub import sharded_pubsub
from .._redis.refusals import not_now, reply_code
from .._redis.store import QueueStore
from .._retry import RetryPolicy
from .._routing import describe_order, level_queue, parse_queues
from .._scheduling.declare import CronJob, cron_record
from .._scheduling.scheduler import Scheduler
from .._task import Task, as_task
from .._version import __version__
from ..exceptions import ConfigurationError, RedisUnavailable
from .config import WorkerConfig
from .executor import Executor
from .fetcher import Group, fetch_loop
from .loop import frozen, run_in_new_loop
from .reader import AnyReader, reader_for
from .runtime import OUTAGE_ERRORS, Runtime, supervised, transient
from .settler import Settler
from .shutdown import CLOSE_S, finish_running, give_up_leases, wrap_up
from .upkeep import events_loop, heartbeat_loop, keepalive_loop
from .watchdog import LoopWatchdog, describe_with

log = logging.getLogger("asyncjobs.worker")

_RELEASE_S = 4.5
"""At shutdown, the longest wait for Redis to end this worker's blocking read and to take
back its scheduler leases (a Redis that does not answer would hold each up to the socket
timeout)."""
banner = logging.getLogger("asyncjobs.worker.banner")
"""The start-up banner's logger (under ``--processes N`` only the first process logs it)."""

if TYPE_CHECKING:
    from ..metrics import WorkerMetrics

Lifespan = Callable[["Worker"], AbstractAsyncContextManager[Any]]


class Worker:
    """Runs the tasks of one or more queues. ``asyncjobs worker module:worker`` runs it.

    ``lifespan(worker)`` is an async context manager: what it yields becomes ``ctx.state``
    for every job (open an HTTP client or a DB pool there; it is closed after the last job).
    """

    def __init__(
        self,
        tasks: Iterable[Task[Any, Any] | Callable[..., Any]],
        *,
        queues: Sequence[str] | Mapping[str, int] | str = ("default",),
        concurrency: int = 100,
        sync_concurrency: int = 20,
        job_timeout: Seconds | None = 300.0,
        result_ttl: Seconds = 3600.0,
        retry: RetryPolicy | None = None,
        claim_timeout: Seconds = 15.0,
        max_deliveries: int = 5,
        shutdown_grace: Seconds = 30.0,
        burst: bool = False,
        lifespan: Lifespan | None = None,
        cron: Iterable[CronJob] = (),
        middleware: Sequence[Middleware] = (),
        observers: Sequence[Observer] = (),
        metrics_port: int | None = None,
        prefix: str = "asyncjobs",
        lease_ttl: Seconds = 5.0,
        dead_letter_limit: int = 10_000,
        dead_letter_max_age: Seconds = timedelta(days=180),
        allow_eviction: bool = False,
        log_context: LogContext | None = None,
        redis_url: str | None = None,
    ) -> None:
        names, weights = parse_queues(queues)
        self.config = WorkerConfig(
            queues=names,
            weights=weights,
            concurrency=concurrency,
            sync_concurrency=sync_concurrency,
            job_timeout_s=to_seconds(job_timeout, "job_timeout") or None,
            result_ttl_s=to_seconds(result_ttl, "result_ttl") or 0.0,
            retry=retry or RetryPolicy(),
            claim_timeout_s=to_seconds(claim_timeout, "claim_timeout") or 0.0,
            max_deliveries=max_deliveries,
            shutdown_grace_s=to_seconds(shutdown_grace, "shutdown_grace") or 0.0,
            burst=burst,
            prefix=prefix,
            lease_ttl_s=to_seconds(lease_ttl, "lease_ttl") or 0.0,
            dead_letter_limit=dead_letter_limit,
            allow_eviction=allow_eviction,
            dead_letter_max_age_s=to_seconds(dead_letter_max_age, "dead_letter_max_age") or 0.0,
            redis_url=redis_url,
        )
        if redis_url is not None:
            url_factory(redis_url)  # a URL that can never work: ConfigurationError here
        self.crons = tuple(cron)
        self.tasks = _registry([*tasks, *(c.task for c in self.crons if c.task.fn is not None)])
        self.lifespan = lifespan
        self.middleware = tuple(middleware)
        check_observers(observers)
        self.observers = list(observers)
        self.log_context = log_context
        if metrics_port is not None:
            check_whole("metrics_port", metrics_port, 0, 65535)
        self.metrics_port = metrics_port
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._live: Runtime | None = None
        self._now = False
        self._check_crons()

    def _check_crons(self) -> None:
        named: set[tuple[str, str]] = set()
        for job in self.crons:
            if job.task.name not in self.tasks:
                raise ConfigurationError(
                    f"cron {job.name!r}: task {job.task.name!r} is not registered")
            queue = self._cron_queue(job)
            if queue not in self.config.served:
                raise ConfigurationError(
                    f"cron {job.name!r} targets a queue this worker does not serve")
            # The name is the cron job's identity on its queue (its cursor, its tick ids):
            # two of one name would share them, and one would hardly ever run.
            if (queue, job.name) in named:
                raise ConfigurationError(
                    f"two cron jobs are named {job.name!r} on queue {queue!r}: give one "
                    "another name (cron(..., name=...))")
            named.add((queue, job.name))

    def _cron_queue(self, job: CronJob) -> str:
        """The queue (level) a cron job's ticks are enqueued to."""
        return level_queue(job.queue or job.task.queue or self.config.queues[0],
                           job.task.priority)

    def configure(self, **changes: Any) -> Worker:
        """A copy with some ``WorkerConfig`` fields changed (the CLI's overrides)."""
        clone = object.__new__(Worker)
        clone.__dict__.update(self.__dict__)
        clone.config = dataclasses.replace(self.config, **changes)
        clone._check_crons()
        return clone

    @property
    def pool(self) -> Pool | None:
        """While the worker runs (its lifespan included): a pool on the worker's own Redis
        connection and prefix, for code that runs beside it (``ctx.pool`` in tasks is the
        same); None before it connects and after it stops."""
        return self._live.pool if self._live is not None else None

    _starting: anyio.CancelScope | None = None
    """The start-up of the run in progress (connect, check Redis, create the groups)."""

    def stop(self, now: bool = False) -> None:
        """Ask the worker to shut down gracefully; ``now`` (or a second call with it, e.g. a
        second Ctrl-C) cuts the grace period short: running jobs are cancelled and handed
        back at once. Asked while the worker starts (before it is ready: connecting,
        retrying its consumer groups through an outage), it gives the start-up up and
        ``run`` returns without serving. Outside a run it does nothing."""
        if self._starting is None and self._live is None:
            return
        self._now = self._now or now
        if self._starting is not None:
            self._starting.cancel()
        elif self._live is not None:
            if self._now:
                self._live.hurry.set()
            self._live.stopping.set()

    async def run(
        self,
        *,
        redis_url: str | None = None,
        client_factory: ClientFactory | None = None,
        task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until stopped (or drained, in burst mode). Use ``tg.start(worker.run)`` to
        wait until it is ready."""
        await self._run(redis_url, client_factory, task_status, owns_process=False)

    async def _run(self, redis_url: str | None, client_factory: ClientFactory | None,
                   task_status: TaskStatus[Worker], *, owns_process: bool) -> None:
        """``run``; ``owns_process``: the process is the worker's (``run_sync``), which
        freezes what start-up made for the run's length (``loop.frozen``)."""
        cfg = self.config
        url = redis_url or cfg.redis_url or default_url()
        factory = client_factory or url_factory(url)
        where = redact(url) if client_factory is None else "custom client"
        client = factory(max_connections=cfg.concurrency + 20, socket_timeout=15.0)
        blocking = factory(max_connections=3,
                           socket_timeout=cfg.block_ms / 1000 + 10.0)
        # A stop asked from now until the worker is live cancels the start-up (its waits on
        # Redis, its retries through an outage) instead of being lost.
        self._starting = starting = anyio.CancelScope()
        rt: Runtime | None = None
        try:
            with starting:
                rt = await self._start_up(client, blocking, where)
            self._starting = None
            if rt is None or starting.cancel_called:
                log.info("worker %s stopped during start-up", self.name)
                return
            self._live = rt
            async with self._lifespan() as state:
                rt.state = state
                with frozen(owns_process):
                    await self._serve(rt, task_status)
        finally:
            self._live = self._starting = None
            self._now = False
            # Shielded: a run cancelled from outside (an app's task group) is cancelled at
            # every await here too, and the connections were left open (on uvloop, closing
            # the event loop then hung for ever). Bounded: a close waits on no reply.
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_S):
                if rt is not None:  # ctx.pool kept by task code now says PoolClosed
                    await rt.pool.close()
                await blocking.aclose()
                await client.aclose()

    async def _start_up(self, client: Any, blocking: Any, where: str) -> Runtime:
        """``_run``'s start-up: connect, check Redis, create the consumer groups."""
        cfg = self.config
        version = await _connect(client, where)
        verdict = judge(await read_settings(client), allow_eviction=cfg.allow_eviction)
        if verdict.errors:
            raise ConfigurationError(verdict.errors[0])
        await sharded_pubsub(client)  # which pub/sub, read while every master answers
        rt = self._runtime(client, blocking)
        self._banner(where, version)
        for warning in verdict.warnings:
            banner.warning("redis   %s", warning)
        for store in rt.stores.values():
            await _ensure_group(rt, store)
        return rt

    def _banner(self, where: str, redis_version: str) -> None:
        cfg = self.config
        banner.info("asyncjobs %s worker %s (pid %d)", __version__, self.name, os.getpid())
        banner.info("redis   %s (Redis %s), prefix %s", where, redis_version, cfg.prefix)
        banner.info("queues  %s: concurrency %d, job timeout %s, claim timeout %g s, "
                    "grace %g s%s", describe_order(cfg.queues, cfg.weights), cfg.concurrency,
                    f"{cfg.job_timeout_s:g} s" if cfg.job_timeout_s else "none",
                    cfg.claim_timeout_s, cfg.shutdown_grace_s, ", burst" if cfg.burst else "")
        banner.info("tasks   %s", ", ".join(sorted(self.tasks)) or "(none)")
        for job in self.crons:
            banner.info("cron    %s: %s -> %s", job.name, job.schedule.describe(),
                        job.task.name)

    def _runtime(self, client: Any, blocking: Any) -> Runtime:
        cfg = self.config
        stores = {q: QueueStore(client, Keys(cfg.prefix, q)) for q in cfg.served}
        pool = Pool(client, prefix=cfg.prefix, queue=cfg.queues[0], owns_client=False)
        crons = [cron_record(c, self._cron_queue(c)) for c in self.crons]
        return Runtime(cfg, self.tasks, client, blocking, stores, self.name, pool, crons=crons)

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[Any]:
        if self.lifespan is None:
            yield None
        else:
            async with self.lifespan(self) as state:
                yield state

    async def _serve(self, rt: Runtime, task_status: TaskStatus[Worker]) -> None:
        metrics = self._metrics(rt) if self.metrics_port is not None else None
        try:
            await self._run_loops(rt, task_status, metrics)
        finally:
            if metrics is not None:
                metrics.close()  # idempotent: also closed when its loop is cancelled

    async def _run_loops(self, rt: Runtime, task_status: TaskStatus[Worker],
                         metrics: WorkerMetrics | None) -> None:
        settler = Settler(rt)
        observers = [*self.observers, *([metrics] if metrics else [])]
        ex = Executor(rt, settler, compose(self.middleware), observers, self.log_context)
        groups = [Group(name, levels, [rt.stores[q] for q in levels])
                  for name, levels in rt.config.groups]
        wake = {q: asyncio.Event() for q in rt.config.queues}
        reader = reader_for(rt.client, rt.blocking, rt.config.block_ms / 1000 + 10.0)
        settling = asyncio.create_task(settler.run(), name="asyncjobs-settler")
        watchdog = LoopWatchdog(asyncio.get_running_loop(), describe_with(ex.describe))
        watchdog.start()
        try:
            await self._supervise(rt, ex, settler, settling, groups, reader, wake, metrics,
                                  task_status)
        finally:
            watchdog.stop()

    async def _supervise(self, rt: Runtime, ex: Executor, settler: Settler,
                         settling: asyncio.Task[None], groups: list[Group], reader: AnyReader,
                         wake: dict[str, asyncio.Event], metrics: WorkerMetrics | None,
                         task_status: TaskStatus[Worker]) -> None:
        vacated = {g.name: asyncio.Event() for g in groups}
        schedulers = [
            Scheduler(rt, g.name, g.queues,
                      [(c, self._cron_queue(c)) for c in self.crons
                       if self._cron_queue(c) in g.queues], wake[g.name], vacated[g.name])
            for g in groups
        ]
        async with anyio.create_task_group() as tg:
            for scheduler in schedulers:
                tg.start_soon(supervised, f"scheduler {scheduler.queue}", scheduler.run)
            tg.start_soon(supervised, "keep-alive", partial(keepalive_loop, rt, ex))
            wakes = {q: wake[g.name] for g in groups for q in g.queues}
            tg.start_soon(supervised, "events", partial(events_loop, rt, ex, wakes, vacated))
            tg.start_soon(supervised, "heartbeat", partial(heartbeat_loop, rt, ex))
            if metrics is not None:
                tg.start_soon(supervised, "metrics", partial(metrics.run, rt.pool, ex))
            fetching = anyio.CancelScope()
            fetched = anyio.Event()
            tg.start_soon(self._fetch_all, rt, ex, fetching, groups, reader, fetched)
            log.info("worker %s ready: queues=%s concurrency=%d tasks=%d", rt.consumer,
                     ",".join(rt.config.queues), rt.config.concurrency, len(rt.tasks))
            task_status.started(self)
            try:
                await rt.stopping.wait()
                await self._wind_down(rt, ex, settler, settling, fetching, fetched,
                                      schedulers)
            except BaseException:
                # Cancelled from outside (an app's task group, say), before or during a
                # graceful stop: stop at once, but still record what finished and hand back
                # what runs, shielded from the cancel (each step is bounded; one the cancel
                # cut short is done again, in a hurry).
                rt.stopping.set()
                rt.hurry.set()
                with anyio.CancelScope(shield=True):
                    await self._wind_down(rt, ex, settler, settling, fetching, fetched,
                                          schedulers)
                raise
            tg.cancel_scope.cancel()

    async def _wind_down(self, rt: Runtime, ex: Executor, settler: Settler,
                         settling: asyncio.Task[None], fetching: anyio.CancelScope,
                         fetched: anyio.Event, schedulers: list[Scheduler]) -> None:
        fetching.cancel()
        # The grace period counts from now, whatever Redis does: the running jobs finish
        # (or are cancelled) while the fetch loop ends and the leases are given up, which
        # wait on Redis side by side, each bounded by _RELEASE_S from now (a stalled Redis
        # costs the shutdown no more, however many queues this worker leads).
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(finish_running, rt, ex, now=self._now))
            await give_up_leases(schedulers, _RELEASE_S)
            await fetched.wait()  # no read of ours is left blocked in Redis (see _fetch_all)
        await wrap_up(rt, ex, settler, settling)

    def _metrics(self, rt: Runtime) -> WorkerMetrics:
        from ..metrics import WorkerMetrics

        assert self.metrics_port is not None
        metrics = WorkerMetrics(worker=rt.consumer, queues=rt.config.served,
                                concurrency=rt.config.concurrency, tasks=rt.tasks)
        metrics.serve(self.metrics_port)
        log.info("metrics served on port %s", metrics.port)
        return metrics

    async def _fetch_all(self, rt: Runtime, ex: Executor, scope: anyio.CancelScope,
                         groups: list[Group], reader: AnyReader, fetched: anyio.Event) -> None:
        try:
            with scope:
                await supervised("fetch", partial(fetch_loop, rt, ex, groups,
                                                  rt.config.weights, reader))
            rt.stopping.set()  # the fetcher returned: burst mode drained every queue
        finally:
            # Only once no fetch is left to send another read: then the reader's wait is
            # ended in Redis and its connection closed before the hand-back starts.
            with anyio.CancelScope(shield=True):
                # Bounded: a Redis that does not answer (paused, stalled) would hold the
                # shutdown up to the socket timeout. A wait left in Redis delivers nothing
                # (XREAD) and ends at its block time.
                with anyio.move_on_after(_RELEASE_S):
                    await reader.unblock(rt.client)
                await reader.close()
            fetched.set()

    def run_sync(self, *, redis_url: str | None = None, use_uvloop: bool = True) -> None:
        """Run in a new event loop (uvloop when installed) with SIGTERM/SIGINT handling.

        Returns once the worker has stopped, within the grace period plus a few seconds,
        whatever task code does: tasks that ignore cancellation are left behind (see
        ``close_loop``), and sync tasks run on daemon threads."""
        run_in_new_loop(self._main(redis_url), use_uvloop=use_uvloop)

    async def _main(self, redis_url: str | None,
                    task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED) -> None:
        """``run_sync``'s run, with SIGTERM and SIGINT handled from the start (a stop during
        start-up counts too); ``task_status`` is told once the worker is ready."""
        import signal

        loop = asyncio.get_running_loop()
        interrupts = 0

        def on_interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:
                log.warning("second interrupt: cancelling running jobs now")
            self.stop(now=interrupts > 1)

        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            await self._run(redis_url, None, task_status, owns_process=True)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)


async def _ensure_group(rt: Runtime, store: QueueStore) -> None:
    """Create the queue's consumer group, retrying through outages and a full Redis (it
    may be full of this very queue's jobs: the worker must start to drain it). A stream key
    holding something else is logged and left: the fetch loop leaves that queue alone and
    tries it again now and then (it makes the group once the key is repaired), and the
    worker's other queues are served."""
    while True:
        try:
            await store.ensure_group()
            rt.outage.ok()
            return
        except Exception as exc:
            if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
                log.error("queue %s cannot be read (its stream key %s holds another type); "
                          "serving the other queues", store.keys.queue, store.keys.stream)
                return
            if not transient(exc):
                raise
            await asyncio.sleep(rt.outage.failed(exc, f"create group {store.keys.queue}"))


async def _connect(client: Any, where: str) -> str:
    """Check that Redis answers; returns its version."""
    try:
        await client.ping()
    except OUTAGE_ERRORS as exc:
        raise RedisUnavailable(f"cannot reach Redis at {where}: {exc}") from exc
    except ResponseError as exc:
        if not not_now(exc):
            raise
        # A server that refuses even PING for now (MISCONF: its disk fails): no worker
        # starts on it, as none starts on a server it cannot reach.
        raise RedisUnavailable(
            f"Redis at {where} refuses commands for now: {reply_code(exc)[1]}") from exc
    try:
        info = await client.info("server")
    except ResponseError:  # servers that hide INFO (or in-memory fakes)
        return "unknown"
    return str(info.get("redis_version", "unknown"))


def _registry(tasks: Iterable[Task[Any, Any] | Callable[..., Any]]) -> dict[str, Task[Any, Any]]:
    registry: dict[str, Task[Any, Any]] = {}
    for item in tasks:
        task = as_task(item)
        if task.fn is None:
            raise ConfigurationError(
                f"task {task.name!r} is a reference by name; register the function")
        other = registry.get(task.name)
        if other is not None and other.fn is not task.fn:
            raise ConfigurationError(f"two different tasks are named {task.name!r}")
        registry[task.name] = task
    return registry
