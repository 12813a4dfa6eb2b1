"""A worker run once it is live: the task group of its loops (fetch, one scheduler per
queue, keep-alive, events, heartbeat, metrics) and, at shutdown, the wind-down.

Shutdown (SIGTERM, SIGINT, ``stop()``, or a drained queue in burst mode): stop reading; let
running jobs finish within the grace period; cancel the rest; record every outcome; hand
back every entry still held so other workers take it at once; leave the registry (the
steps and their bounds: ``shutdown``).

A worker whose own tasks a job's code cancelled (task code that cancels every asyncio task;
``Settling`` notes which job's code cancelled the settler's task, which only the worker
cancels otherwise, once closed) stops at once too, but is no clean shutdown: a hand-back
counts neither the attempt nor the delivery, so that job would run for ever, on every
worker in turn, taking the jobs beside it down each time. It records what finished, hands
back every job but that one (left pending: it runs again after the claim timeout, its
delivery counted, as a killed worker's jobs do: the poison guard ends it after
``max_deliveries``), and ``run`` raises ``AsyncJobsError`` saying so. The same cancels from
no job's code (an app, the event loop's end) are an ordinary stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from .._middleware import compose
from .._scheduling.scheduler import Scheduler
from .._text import clean, safe_str
from ..exceptions import AsyncJobsError, NotDrained
from .executor import RUNNING_JOB, Executor
from .fetcher import Group, fetch_loop
from .reader import AnyReader, reader_for
from .runtime import Runtime, supervised
from .settler import Settler
from .shutdown import finish_running, give_up_leases, wrap_up
from .upkeep import events_loop, heartbeat_loop, keepalive_loop
from .watchdog import LoopWatchdog, describe_with

if TYPE_CHECKING:
    from ..metrics import WorkerMetrics
    from .worker import Worker

log = logging.getLogger("asyncjobs.worker")

_RELEASE_S = 3.5
"""At shutdown, the longest wait for Redis to end this worker's blocking read and to take
back its scheduler leases (a Redis that does not answer would hold each up to the socket
timeout)."""


async def serve(worker: Worker, rt: Runtime, task_status: TaskStatus[Worker]) -> None:
    """Serve until the worker stops, then wind down (see the module docstring);
    ``task_status`` is told once every loop runs."""
    port = worker.metrics_port
    metrics = _metrics(rt, port) if port is not None else None
    try:
        await _run_loops(worker, rt, task_status, metrics)
    finally:
        if metrics is not None:
            metrics.close()  # idempotent: also closed when its loop is cancelled


async def _run_loops(worker: Worker, rt: Runtime, task_status: TaskStatus[Worker],
                     metrics: WorkerMetrics | None) -> None:
    settler = Settler(rt)
    observers = [*worker.observers, *([metrics] if metrics else [])]
    ex = Executor(rt, settler, compose(worker.middleware), observers, worker.log_context)
    groups = [Group(name, levels, [rt.stores[q] for q in levels])
              for name, levels in rt.config.groups]
    wake = {q: asyncio.Event() for q in rt.config.queues}
    reader = reader_for(rt.client, rt.blocking, rt.config.block_ms / 1000 + 10.0)
    settling = Settling(settler.run(), loop=asyncio.get_running_loop(),
                        name="asyncjobs-settler")
    settling.add_done_callback(partial(_settler_ended, rt, ex, settler))
    watchdog = LoopWatchdog(asyncio.get_running_loop(), describe_with(ex.describe))
    watchdog.start()
    try:
        await _supervise(worker, rt, ex, settler, settling, groups, reader, wake, metrics,
                         task_status)
    finally:
        watchdog.stop()


async def _supervise(worker: Worker, rt: Runtime, ex: Executor, settler: Settler,
                     settling: asyncio.Task[None], groups: list[Group], reader: AnyReader,
                     wake: dict[str, asyncio.Event], metrics: WorkerMetrics | None,
                     task_status: TaskStatus[Worker]) -> None:
    vacated = {g.name: asyncio.Event() for g in groups}
    schedulers = [
        Scheduler(rt, g.name, g.queues,
                  [(c, worker._cron_queue(c)) for c in worker.crons
                   if worker._cron_queue(c) in g.queues], wake[g.name], vacated[g.name])
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
        tg.start_soon(_fetch_all, rt, ex, fetching, groups, reader, fetched)
        log.info("worker %s ready: queues=%s concurrency=%d tasks=%d", rt.consumer,
                 ",".join(rt.config.queues), rt.config.concurrency, len(rt.tasks))
        task_status.started(worker)
        try:
            await rt.stopping.wait()
            rt.stopped_at = time.monotonic()
            await _wind_down(worker, rt, ex, settler, settling, fetching, fetched,
                             schedulers)
        except BaseException:
            # Cancelled from outside (an app's task group, say), before or during a
            # graceful stop: stop at once, but still record what finished and hand back
            # what runs, shielded from the cancel (each step is bounded; one the cancel
            # cut short is done again, in a hurry). Unless task code cancelled the
            # worker's own tasks (this one among them): then nothing is handed back.
            _cut_short(rt, ex, settler, settling)
            rt.stopping.set()
            rt.hurry.set()
            with anyio.CancelScope(shield=True):
                await _wind_down(worker, rt, ex, settler, settling, fetching, fetched,
                                 schedulers)
            if not rt.broken:
                raise
            _uncancel()  # (raised below, once the task group is over: not as a group)
        tg.cancel_scope.cancel()
    if rt.broken:
        raise _broken(rt)
    if rt.undrained:
        raise NotDrained(rt.undrained)


class Settling(asyncio.Task[None]):
    """The settler's task, which notes which job's code cancelled it, if one did
    (``executor.RUNNING_JOB`` where ``cancel`` is called): the worker cancels it only
    once it has closed the settler, and an app or the event loop (``asyncio.run`` at its
    end) from no job's code."""

    cancelled_by: str | None = None

    def cancel(self, msg: Any | None = None) -> bool:
        job = RUNNING_JOB.get()
        if job is not None and self.cancelled_by is None:
            self.cancelled_by = job
        return super().cancel(msg)


def _cut_short(rt: Runtime, ex: Executor, settler: Settler,
               settling: asyncio.Task[None]) -> bool:
    """Whether a job's code cancelled the settler's task (with the worker's others, as
    task code that cancels every asyncio task does): if so, ``rt.broken`` says so, and
    ``rt.suspects`` holds that job's attempt, if it still runs. A cancel from anyone else
    (the app, the event loop's end) is an ordinary stop."""
    culprit = getattr(settling, "cancelled_by", None)
    if not rt.broken and culprit is not None and not settler.closing and (
            settling.cancelled() or (not settling.done() and settling.cancelling() > 0)):
        rt.broken = (f"its own asyncio tasks were cancelled by the code of job "
                     f"{clean(safe_str(culprit, 200))}")
        rt.suspects = {key: r.job_id for key, r in ex.running.items() if r.job_id == culprit}
    return bool(rt.broken)


def _settler_ended(rt: Runtime, ex: Executor, settler: Settler,
                   settling: asyncio.Task[None]) -> None:
    """The settler's task ended: if code other than the worker's cancelled it, the worker
    cannot record outcomes any more: it stops at once (see the module docstring)."""
    if _cut_short(rt, ex, settler, settling):
        rt.hurry.set()
        rt.stopping.set()


def _broken(rt: Runtime) -> AsyncJobsError:
    return AsyncJobsError(f"worker {rt.consumer} stopped: {rt.broken} (its log names the "
                          "jobs it left pending)")


def _uncancel() -> None:
    """The cancellation being turned into ``_broken``'s error is consumed here: it was
    the culprit's, not a request to this run's caller."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()


async def _wind_down(worker: Worker, rt: Runtime, ex: Executor, settler: Settler,
                     settling: asyncio.Task[None], fetching: anyio.CancelScope,
                     fetched: anyio.Event, schedulers: list[Scheduler]) -> None:
    fetching.cancel()
    # The grace period counts from now, whatever Redis does: the running jobs finish
    # (or are cancelled) while the fetch loop ends and the leases are given up, which
    # wait on Redis side by side, each bounded by _RELEASE_S from now (a stalled Redis
    # costs the shutdown no more, however many queues this worker leads).
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(finish_running, rt, ex, now=worker._now))
        await give_up_leases(schedulers, _RELEASE_S)
        await fetched.wait()  # no read of ours is left blocked in Redis (see _fetch_all)
    await wrap_up(rt, ex, settler, settling)


def _metrics(rt: Runtime, port: int) -> WorkerMetrics:
    from ..metrics import WorkerMetrics

    metrics = WorkerMetrics(worker=rt.consumer, queues=rt.config.served,
                            concurrency=rt.config.concurrency, tasks=rt.tasks)
    metrics.serve(port)
    log.info("metrics served on port %s", metrics.port)
    return metrics


async def _fetch_all(rt: Runtime, ex: Executor, scope: anyio.CancelScope,
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
