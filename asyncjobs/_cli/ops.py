"""The operations behind ``asyncjobs info / job / enqueue / check / dlq``: each opens a pool,
does one thing, and returns data; the CLI only renders it."""

from __future__ import annotations

import socket
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from .._model import JobInfo
from .._producer.admin import OnProgress, QueueStats
from .._producer.damage import DamagedQueue, wrong_type
from .._producer.deadletters import DeadLetter, RequeueReport
from .._producer.insight import ConcurrencyInfo
from .._producer.listing import JobRow, Page
from .._producer.opening import _PoolOpener, create_pool
from .._producer.registry import WorkerInfo
from .._redis.health import judge, read_settings
from .._task import task_ref
from ..exceptions import JobNotFound, RedisUnavailable

_NAMED_QUEUES = 10  # at most, in a "not found" message
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """Which Redis and prefix a command works on."""

    url: str | None
    prefix: str
    allow_eviction: bool = False
    """Enqueue into a Redis whose eviction policy may delete jobs (inspecting never asks)."""


def _inspect(target: Target, **options: Any) -> _PoolOpener:
    """A pool for looking and repairing: opened whatever Redis's eviction policy (check
    reports it)."""
    return create_pool(target.url, prefix=target.prefix, allow_eviction=True, **options)


@dataclass(frozen=True)
class Info:
    """What ``asyncjobs info`` shows."""

    stats: list[QueueStats]
    workers: list[WorkerInfo]
    limits: dict[str, list[ConcurrencyInfo]]
    damaged: list[DamagedQueue]
    """Queues whose keys Redis will not read as asyncjobs wrote them: the rest are shown."""


async def _readable(queue: str, read: Awaitable[T], damaged: list[DamagedQueue]) -> T | None:
    """``read``'s value; None (and ``queue`` noted in ``damaged``, once) when Redis refuses
    it for a damaged key of the queue."""
    try:
        return await read
    except ResponseError as exc:
        problem = wrong_type(exc)
        if problem is None:
            raise
        if not any(d.queue == queue for d in damaged):
            damaged.append(DamagedQueue(queue, problem))
        return None


async def info(target: Target, queues: list[str]) -> Info:
    """Stats of the given queues (all known queues if none), the live workers, and the
    concurrency limits in use per queue (queues without any left out); a damaged queue
    is named as such and the others are shown."""
    async with _inspect(target) as pool:
        names = queues or await pool.admin.queues() or [pool.default_queue]
        damaged: list[DamagedQueue] = []
        stats = [s for q in names
                 if (s := await _readable(q, pool.admin.queue_stats(q), damaged))]
        limits = {q: found for q in names if not any(d.queue == q for d in damaged)
                  and (found := await _readable(q, pool.admin.concurrency(q), damaged))}
        return Info(stats, await pool.admin.workers(), limits, damaged)


async def job(target: Target, job_id: str, queue: str | None) -> JobInfo:
    """The record of a job; without a queue, every known queue is searched."""
    async with _inspect(target) as pool:
        candidates = [queue] if queue else await pool.admin.queues() or [pool.default_queue]
        for name in candidates:
            try:
                return await pool.job(job_id, name).info()
            except JobNotFound:
                continue
        if queue:
            raise JobNotFound(job_id, queue)
        raise NotInAnyQueue(job_id, candidates)


class NotInAnyQueue(JobNotFound):
    """``asyncjobs job ID`` without ``--queue`` searched every known queue in vain."""

    def __init__(self, job_id: str, searched: list[str]) -> None:
        super().__init__(job_id, ", ".join(searched))
        names = ", ".join(repr(q) for q in searched[:_NAMED_QUEUES])
        if len(searched) > _NAMED_QUEUES:
            names += f" and {len(searched) - _NAMED_QUEUES} more"
        where = (f"queue {names} (the only known queue)" if len(searched) == 1 else
                 f"any of the {len(searched)} known queues ({names})")
        self.args = (f"no job {job_id!r} in {where}: never enqueued, or its result expired",)


async def enqueue(target: Target, task: str, args: list[Any], kwargs: dict[str, Any],
                  options: dict[str, Any]) -> tuple[str, str, str]:
    """Enqueue a task by name; returns (job id, queue, state)."""
    async with create_pool(target.url, prefix=target.prefix,
                           allow_eviction=target.allow_eviction) as pool:
        handle = await pool.enqueue(task_ref(task).options(**options), *args, **kwargs)
        return handle.id, handle.queue, (await handle.status()).value


@dataclass(frozen=True)
class CheckResult:
    """The outcome of ``asyncjobs check``."""

    healthy: bool
    problems: list[str]
    warnings: list[str] = field(default_factory=list)


async def check(target: Target, queues: list[str], *, this_host: bool, max_waiting: int | None,
                max_age_s: float | None) -> CheckResult:
    """Healthy when every queue has a live worker (on this host, with ``this_host``) and its
    backlog is within the limits.

    With ``this_host`` (a liveness probe) an unreachable Redis counts as healthy, with a
    warning: the worker cannot be judged, and restarting it would not bring Redis back.
    """
    try:
        return await _check(target, queues, this_host=this_host, max_waiting=max_waiting,
                            max_age_s=max_age_s)
    except RedisUnavailable as exc:
        if not this_host:
            raise
        return CheckResult(True, [], [f"cannot judge this host's worker: {exc}"])


async def _check(target: Target, queues: list[str], *, this_host: bool,
                 max_waiting: int | None, max_age_s: float | None) -> CheckResult:
    async with _inspect(target, retry_for=2.0,
                           timeout=2.0) as pool:
        workers = await pool.admin.workers()
        if this_host:
            host = socket.gethostname()
            workers = [w for w in workers if w.host == host]
        names = queues or sorted({q for w in workers for q in w.queues}) or [pool.default_queue]
        problems: list[str] = []
        warnings: list[str] = []
        verdict = judge(await read_settings(pool.client), allow_eviction=target.allow_eviction)
        # A liveness probe (this host) must not fail for Redis's settings: restarting the
        # worker would not change them.
        (warnings if this_host else problems).extend(verdict.errors)
        warnings.extend(verdict.warnings)
        for name in names:
            if not any(name in w.queues for w in workers):
                where = " on this host" if this_host else ""
                problems.append(f"queue {name}: no live worker{where}")
            damaged: list[DamagedQueue] = []
            stats = await _readable(name, pool.admin.queue_stats(name), damaged)
            if stats is None:
                problems.append(f"queue {name}: cannot be read: {damaged[0].problem}")
                continue
            if max_waiting is not None and stats.waiting > max_waiting:
                problems.append(f"queue {name}: {stats.waiting} waiting > {max_waiting}")
            age = stats.oldest_waiting_s
            if max_age_s is not None and age is not None and age > max_age_s:
                problems.append(f"queue {name}: oldest waited {age:.0f}s > {max_age_s:g}s")
        return CheckResult(not problems, problems, warnings)


async def dead_letters(target: Target, queue: str | None, limit: int) -> list[DeadLetter]:
    """The newest dead letters of a queue."""
    async with _inspect(target) as pool:
        return await pool.admin.dead_letters(queue, limit=limit)


async def jobs(target: Target, state: str, queue: str | None, *, order: str | None,
               task: str, cursor: str | None, limit: int) -> Page[JobRow]:
    """A page of a queue's jobs in a state (see ``Admin.jobs``)."""
    async with _inspect(target) as pool:
        return await pool.admin.jobs(state, queue, order=order, task=task, cursor=cursor,
                                     limit=limit)


async def requeue(target: Target, queue: str | None, job_ids: list[str]) -> dict[str, str]:
    """Requeue dead-lettered jobs by id; per id, the outcome."""
    async with _inspect(target) as pool:
        return await pool.admin.requeue(job_ids, queue)


async def requeue_all(target: Target, queue: str | None,
                      on_progress: OnProgress | None = None) -> RequeueReport:
    """Requeue every dead letter of a queue that has a record; count those left."""
    async with _inspect(target) as pool:
        return await pool.admin.requeue_all(queue, on_progress=on_progress)


async def purge(target: Target, queue: str | None, on_progress: OnProgress | None = None) -> int:
    """Delete every dead letter of a queue and the records of those jobs."""
    async with _inspect(target) as pool:
        return await pool.admin.purge_dead(queue, on_progress=on_progress)
