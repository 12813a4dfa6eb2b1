"""The operations behind ``asyncjobs info / job / enqueue / check / dlq``: each opens a pool,
does one thing, and returns data; the CLI only renders it."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from .._model import JobInfo
from .._producer.admin import OnProgress, QueueStats
from .._producer.deadletters import DeadLetter, RequeueReport
from .._producer.insight import ConcurrencyInfo
from .._producer.listing import JobRow, Page
from .._producer.opening import _PoolOpener, create_pool
from .._producer.registry import WorkerInfo
from .._redis.health import judge, read_settings
from .._task import task_ref
from ..exceptions import JobNotFound, RedisUnavailable

_NAMED_QUEUES = 10  # at most, in a "not found" message


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


async def info(target: Target, queues: list[str]
               ) -> tuple[list[QueueStats], list[WorkerInfo], dict[str, list[ConcurrencyInfo]]]:
    """Stats of the given queues (all known queues if none), the live workers, and the
    concurrency limits in use per queue (queues without any left out)."""
    async with _inspect(target) as pool:
        names = queues or await pool.admin.queues() or [pool.default_queue]
        stats = [await pool.admin.queue_stats(q) for q in names]
        limits = {q: found for q in names if (found := await pool.admin.concurrency(q))}
        return stats, await pool.admin.workers(), limits


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
            stats = await pool.admin.queue_stats(name)
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
