"""The worker: what it runs and how (tasks, queues, cron jobs, hooks, configuration), and
its run: start-up (``startup``), serving until stopped (``serving``), the connections'
close; ``run_sync`` with signal handling in a process of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .._durations import Seconds, to_seconds
from .._exit_signals import SIGNALS, quiet_exit
from .._middleware import (
    LogContext,
    Middleware,
    Observer,
    check_log_context,
    check_middleware,
    check_observers,
)
from .._options import check_whole
from .._producer.pool import Pool
from .._redis.connection import ClientFactory, default_url, redact, url_factory
from .._retry import RetryPolicy
from .._routing import level_queue, parse_queues
from .._scheduling.declare import CronJob
from .._task import Task, as_task
from ..exceptions import ConfigurationError
from . import stop_signals
from .config import WorkerConfig
from .lifespan import held
from .loop import frozen, run_in_new_loop
from .runtime import Runtime
from .serving import serve
from .shutdown import CLOSE_S
from .startup import start_up

log = logging.getLogger("asyncjobs.worker")

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
        check_middleware(self.middleware)
        check_observers(observers)
        check_log_context(log_context)
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
        retrying its consumer groups through an outage, its lifespan starting: that start
        is cancelled), it gives the start-up up and ``run`` returns without serving.
        Outside a run it does nothing."""
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
                rt = await start_up(self, client, blocking, where)
            self._starting = None
            if rt is None or starting.cancel_called:
                log.info("worker %s stopped during start-up", self.name)
                return
            self._live = rt
            # A stop while the lifespan starts cancels its start, and ends the run.
            self._starting = starting = anyio.CancelScope()
            async with held(self.lifespan, self, starting, rt) as state:
                self._starting = None
                if starting.cancel_called:
                    log.info("worker %s stopped during start-up", self.name)
                    return
                rt.state = state
                with frozen(owns_process, cfg.concurrency):
                    await serve(self, rt, task_status)
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

    def run_sync(self, *, redis_url: str | None = None, use_uvloop: bool = True) -> None:
        """Run in a new event loop (uvloop when installed) with SIGTERM/SIGINT handling.

        Returns once the worker has stopped, within the grace period plus a few seconds,
        whatever task code does: tasks that ignore cancellation are left behind (see
        ``close_loop``), and sync tasks run on daemon threads."""
        run_in_new_loop(self._main(redis_url), use_uvloop=use_uvloop)

    async def _main(self, redis_url: str | None,
                    task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED, *,
                    exiting: bool = False) -> None:
        """``run_sync``'s run, with SIGTERM and SIGINT handled from the start (a stop during
        start-up counts too); ``task_status`` is told once the worker is ready.

        ``exiting``: the process exits once the run is over (the CLI). From the run's end,
        a signal is then ignored for a while (``_exit_signals``), so that the exit is the
        stop's: a second Ctrl-C that came just after the worker stopped ended the process by
        SIGINT's default action (130) instead. Otherwise the asyncio defaults come back
        (``KeyboardInterrupt`` for SIGINT), as for any loop's handlers."""
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
        kept = asyncio.ensure_future(stop_signals.keep(
            loop, {signal.SIGTERM: self.stop, signal.SIGINT: on_interrupt}))
        try:
            await self._run(redis_url, None, task_status, owns_process=True)
        finally:
            kept.cancel()
            while True:
                try:
                    for signum in SIGNALS:
                        loop.remove_signal_handler(signum)  # (again: False, nothing done)
                    if exiting:
                        quiet_exit()
                    break
                except KeyboardInterrupt:  # a SIGINT between asyncio's default and ours
                    if not exiting:
                        raise
                    # asyncio's remove may have stopped before letting go of the loop's
                    # wakeup fd (it does once no handler is left): not one left here.
                    signal.set_wakeup_fd(-1)


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
