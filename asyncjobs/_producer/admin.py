"""Looking at queues and workers: ``pool.admin``. ``Admin`` reads queue counts, dead
letters, workers, outcomes per minute, leaders, cron jobs and concurrency limits (the
listings through ``listing``); what it changes (dead letters requeued or purged, jobs made
due, a queue's maximum length) it inherits from ``actions``.

Used by the ``asyncjobs info / job / dlq / check`` commands, health endpoints and metrics.
Everything read here may have been written by anyone who can write to Redis: entries that
cannot be read are skipped or shown with placeholders, never allowed to raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .._model import JobInfo
from .._options import check_count
from .._redis.health import memory_used
from .._redis.keys import GROUP
from .._redis.refusals import refused
from .._redis.values import max_length
from .actions import Actions
from .actions import OnProgress as OnProgress  # where ``_cli.ops`` imports it from
from .cursor import after
from .deadletters import DeadLetter, dead_letter, text
from .insight import (
    ConcurrencyInfo,
    CronInfo,
    MinuteCounts,
    concurrency_infos,
    cron_infos,
    holder,
    minute_counts,
)
from .listing import DeadRow, JobRow, Listing, Page
from .registry import (
    LIVE_WORKER_MS,
    WorkerInfo,
    json_record,
    time_ms,
    valid_queue,
    worker_info,
)
from .sources import whole

if TYPE_CHECKING:
    from .pool import Pool


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue at one moment."""

    queue: str
    waiting: int
    """In the stream, not yet delivered to a worker."""
    in_flight: int
    """Delivered to a worker and not settled (running, or held by a dead worker)."""
    delayed: int
    """Waiting for a due time (delayed jobs and retries)."""
    dead: int
    """Entries in the dead-letter stream."""
    oldest_waiting_s: float | None
    """Age of the oldest waiting job, None when nothing waits."""
    counters: dict[str, int]
    """Totals since the queue was created: enqueued, complete, failed, retry, ..."""
    max_length: int | None = None
    """The most jobs the queue takes (waiting, in flight and delayed; see
    ``Admin.set_max_length``), None when it has no maximum. ``counters['refused']`` counts
    the jobs refused for it."""


class Admin(Actions):
    """Inspection and dead-letter handling over a pool's connection."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.client = pool.client

    async def queues(self) -> list[str]:
        """Queue names known to this prefix (every queue a job was enqueued on)."""
        names = await self.pool.call(lambda: self.client.smembers(self.pool.global_keys.queues))
        return sorted(n for n in map(text, names) if valid_queue(n))

    async def queue_stats(self, queue: str | None = None) -> QueueStats:
        """Waiting, in flight, delayed, dead, the oldest waiting job's age, and counters."""
        name = queue or self.pool.default_queue
        keys = self.pool.keys(name)
        length, delayed, dead, counters, now, most = await self._pipe(
            lambda p: p.xlen(keys.stream).zcard(keys.delayed).xlen(keys.dead)
            .hgetall(keys.stats).execute_command("TIME").hget(keys.settings, "max_length"))
        in_flight, last_delivered = await self._group(keys.stream)
        oldest = await self._oldest_waiting(keys.stream, last_delivered)
        now_ms = time_ms(now)
        return QueueStats(
            queue=name, waiting=max(0, length - in_flight), in_flight=in_flight,
            delayed=delayed, dead=dead,
            oldest_waiting_s=None if oldest is None else max(0.0, (now_ms - oldest) / 1000),
            counters={text(k): n for k, v in counters.items()
                      if (n := whole(text(v))) is not None},
            max_length=max_length(most),
        )

    async def max_length(self, queue: str | None = None) -> int | None:
        """The queue's maximum length (``set_max_length``), None when it has none."""
        keys = self.pool.keys(queue or self.pool.default_queue)
        [most] = await self._pipe(lambda p: p.hget(keys.settings, "max_length"), errors=False)
        return max_length(most)

    async def _pipe(self, build: Callable[[Any], object], errors: bool = True) -> list[Any]:
        """The commands ``build(pipeline)`` adds, in one round trip; with ``errors`` false,
        a command's error is its reply instead of raised (a key of the wrong type), but for
        Redis refusing the command itself (NOPERM, BUSY, READONLY...: ``refusals``), which
        is raised still. (``TIME`` is sent as a plain command: redis-py's cluster pipeline
        refuses its ``time`` method.)"""

        async def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            return list(await pipe.execute(raise_on_error=errors))

        replies: list[Any] = await self.pool.call(run)
        for reply in replies:
            if isinstance(reply, Exception) and refused(reply):
                raise reply
        return replies

    async def _group(self, stream: str) -> tuple[int, str]:
        try:
            groups = await self.pool.call(lambda: self.client.xinfo_groups(stream))
        except ResponseError:  # no stream yet
            return 0, "0-0"
        for group in groups:
            if text(group.get("name")) == GROUP:
                return int(group.get("pending", 0)), text(group.get("last-delivered-id", "0-0"))
        return 0, "0-0"

    async def _oldest_waiting(self, stream: str, last_delivered: str) -> int | None:
        start = after(last_delivered)
        if start is None:  # the group has read the largest id there is: nothing follows
            return None
        entries = await self.pool.call(
            lambda: self.client.xrange(stream, min=start, max="+", count=1))
        if not entries:
            return None
        return int(text(entries[0][0]).split("-")[0])

    async def dead_letters(self, queue: str | None = None, *, limit: int = 100,
                           newest_first: bool = True) -> list[DeadLetter]:
        """Entries of the dead-letter stream, newest first by default; ``limit`` a whole
        number from 1 to 1,000,000 (``ValueError`` otherwise)."""
        check_count("limit", limit, 1_000_000)
        keys = self.pool.keys(queue or self.pool.default_queue)
        if newest_first:
            rows = await self.pool.call(lambda: self.client.xrevrange(keys.dead, count=limit))
        else:
            rows = await self.pool.call(lambda: self.client.xrange(keys.dead, count=limit))
        return [dead_letter(entry, fields) for entry, fields in rows]

    async def job(self, job_id: str, queue: str | None = None) -> JobInfo:
        """The whole record of a job."""
        return await self.pool.job(job_id, queue).info()

    async def workers(self) -> list[WorkerInfo]:
        """Live workers: those whose latest heartbeat is under 60 s old. Both ends are on the
        Redis clock (the registry's score, and ``TIME`` read with it), so a worker whose host
        clock is off is judged right. Entries that cannot be read are skipped."""
        keys = self.pool.global_keys
        now, entries = await self._pipe(
            lambda p: p.execute_command("TIME").zrange(keys.workers, 0, -1, withscores=True))
        now_ms = time_ms(now)
        live = [(text(n), min(score, now_ms)) for n, score in entries
                if now_ms - score < LIVE_WORKER_MS]
        if not live:
            return []
        blobs = await self.pool.call(
            lambda: self.client.mget([keys.worker(n) for n, _ in live]))
        found = [worker_info(name, blob, int(beat_ms), now_ms)
                 for (name, beat_ms), blob in zip(live, blobs, strict=True)]
        return sorted((w for w in found if w is not None), key=lambda w: w.name)

    async def throughput(self, queue: str | None = None, *,
                         minutes: int = 60) -> list[MinuteCounts]:
        """Jobs that ended in each of the last ``minutes`` minutes (Redis clock, oldest
        first, the current minute last), by outcome. Kept two hours: ``minutes`` is a whole
        number (``ValueError`` otherwise), 120 at most (a larger one reads 120)."""
        check_count("minutes", minutes, 10**9)
        keys = self.pool.keys(queue or self.pool.default_queue)
        [now] = await self._pipe(lambda p: p.execute_command("TIME"))
        current = time_ms(now) // 60_000
        span = list(range(current - max(1, min(minutes, 120)) + 1, current + 1))
        replies = await self._pipe(lambda p: [p.hgetall(keys.minute(m)) for m in span],
                                   errors=False)
        return minute_counts(span, replies)

    async def memory_used(self) -> float | None:
        """Redis's used_memory over its maxmemory (None without a maxmemory, or when the
        server hides INFO): at 1, enqueues fail with ``RedisFull``."""
        used: float | None = await self.pool.call(lambda: memory_used(self.client))
        return used

    async def leader(self, queue: str | None = None) -> str | None:
        """The worker whose scheduler leads ``queue`` (None when none holds the lease)."""
        keys = self.pool.keys(queue or self.pool.default_queue)
        [value] = await self._pipe(lambda p: p.get(keys.leader), errors=False)
        return None if isinstance(value, Exception) else holder(value)

    async def crons(self, queue: str | None = None) -> list[CronInfo]:
        """The cron jobs the live workers of ``queue`` declare, with their last tick, the
        next one due, and the last tick's job id."""
        name = queue or self.pool.default_queue
        keys, gkeys = self.pool.keys(name), self.pool.global_keys
        now, entries, cursors = await self._pipe(
            lambda p: p.execute_command("TIME").zrange(gkeys.workers, 0, -1, withscores=True)
            .hgetall(keys.cron), errors=False)
        now_ms = time_ms(now)
        if not isinstance(entries, list):  # the registry holds something else: no worker
            entries = []
        live = [text(n) for n, score in entries if now_ms - score < LIVE_WORKER_MS]
        blobs = await self.pool.call(
            lambda: self.client.mget([gkeys.worker(n) for n in live])) if live else []
        published = [(json_record(blob) or {}).get("crons") for blob in blobs]
        return cron_infos(name, published, cursors if isinstance(cursors, dict) else {},
                          now_ms)

    async def concurrency(self, queue: str | None = None) -> list[ConcurrencyInfo]:
        """The concurrency limits in use on a queue: per (task, key), the leases held (not
        expired, on the Redis clock) and the jobs waiting for one. A limit nothing holds
        or waits on is not listed."""
        keys = self.pool.keys(queue or self.pool.default_queue)
        limits_hash = keys.concurrency_limits
        names, now = await self._pipe(
            lambda p: p.hgetall(limits_hash).execute_command("TIME"), errors=False)
        if not isinstance(names, dict) or not names:
            return []
        now_ms = time_ms(now)

        def counts(p: Any) -> None:
            for name in names:
                label = text(name)
                p.zcount(keys.concurrency(label), f"({now_ms}", "+inf")
                p.zcard(keys.concurrency_wait(label))

        replies = await self._pipe(counts, errors=False)
        return concurrency_infos(names, replies)

    # -- listings (the dashboard's pages); read-only, bounded per page: see ``listing`` --

    async def jobs(self, state: str, queue: str | None = None, *, order: str | None = None,
                   task: str = "", cursor: str | None = None, limit: int = 50,
                   scan: int = 1000) -> Page[JobRow]:
        """A page of the jobs of a queue in ``state``: 'queued' (waiting for a worker),
        'running' (delivered, not settled), 'scheduled' (delayed, or a retry's backoff),
        'dead' (dead letters), 'complete', or 'failed' (ended failed, expired or aborted;
        the latest ended jobs, at least 2,000 per queue, while their records last).

        ``order`` is 'oldest' or 'newest' first (default: oldest for queued, running and
        scheduled, newest for the rest); ``task`` keeps one task's jobs. Pass the page's
        ``cursor`` back for the next page. Each call reads at most ``scan`` jobs (under a
        filter the page may hold fewer rows than ``limit``; its cursor goes on). One
        ``ValueError`` line for an unknown state or order, a limit outside 1..500, or a
        cursor that was altered or made for another listing."""
        return await Listing(self.pool).jobs(queue or self.pool.default_queue, state,
                                             order=order, cursor=cursor, limit=limit,
                                             task=task, scan=scan)

    async def waiting_jobs(self, queue: str | None = None, *, cursor: str | None = None,
                           limit: int = 50) -> Page[JobRow]:
        """``jobs("queued")``: waiting in the stream, oldest first."""
        return await self.jobs("queued", queue, cursor=cursor, limit=limit)

    async def in_flight_jobs(self, queue: str | None = None, *, cursor: str | None = None,
                             limit: int = 50) -> Page[JobRow]:
        """``jobs("running")``: delivered to a worker and not settled, oldest first."""
        return await self.jobs("running", queue, cursor=cursor, limit=limit)

    async def delayed_jobs(self, queue: str | None = None, *, cursor: str | None = None,
                           limit: int = 50) -> Page[JobRow]:
        """``jobs("scheduled")``: waiting for a due time (delays, retries), soonest first."""
        return await self.jobs("scheduled", queue, cursor=cursor, limit=limit)

    async def dead_letter_page(self, queue: str | None = None, *, cursor: str | None = None,
                               limit: int = 50, task: str = "", error: str = "",
                               scan: int = 1000) -> Page[DeadRow]:
        """Dead letters newest first, with their job's task and latest error type, by page.
        ``task`` / ``error`` filter them; at most ``scan`` letters are read per call (the
        page may then hold fewer rows, and its cursor goes on from there)."""
        return await Listing(self.pool).dead(queue or self.pool.default_queue, cursor, limit,
                                             task=task, error=error, scan=scan)

    async def find_job(self, job_id: str) -> list[str]:
        """The known queues that hold a record of ``job_id`` (one round trip)."""
        return await Listing(self.pool).find(job_id, await self.queues())
