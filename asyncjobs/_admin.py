"""Looking at queues and workers, and handling dead letters: ``pool.admin``.

Used by the ``asyncjobs info / job / dlq / check`` commands, health endpoints and metrics.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ._keys import GROUP
from ._model import JobInfo, from_ms

if TYPE_CHECKING:
    from ._pool import Pool

_LIVE_WORKER_S = 60


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


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker, from its latest heartbeat."""

    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    running: int
    started_at: datetime
    last_beat: datetime
    version: str
    tasks: list[str]
    stopping: bool = False
    """Shutting down: no longer taking jobs, finishing the ones it runs."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of a queue's dead-letter stream."""

    entry: str
    job_id: str
    reason: str
    at: datetime | None
    fields: dict[str, str]


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Admin:
    """Inspection and dead-letter handling over a pool's connection."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.client = pool.client

    async def queues(self) -> list[str]:
        """Queue names known to this prefix (every queue a job was enqueued on)."""
        names = await self.pool.call(lambda: self.client.smembers(self.pool.global_keys.queues))
        return sorted(_s(n) for n in names)

    async def queue_stats(self, queue: str | None = None) -> QueueStats:
        """Waiting, in flight, delayed, dead, the oldest waiting job's age, and counters."""
        name = queue or self.pool.default_queue
        keys = self.pool.keys(name)

        async def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.xlen(keys.stream)
            pipe.zcard(keys.delayed)
            pipe.xlen(keys.dead)
            pipe.hgetall(keys.stats)
            pipe.time()
            return list(await pipe.execute())

        length, delayed, dead, counters, now = await self.pool.call(read)
        in_flight, last_delivered = await self._group(keys.stream)
        oldest = await self._oldest_waiting(keys.stream, last_delivered)
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        return QueueStats(
            queue=name, waiting=max(0, length - in_flight), in_flight=in_flight,
            delayed=delayed, dead=dead,
            oldest_waiting_s=None if oldest is None else max(0.0, (now_ms - oldest) / 1000),
            counters={_s(k): int(v) for k, v in counters.items()},
        )

    async def _group(self, stream: str) -> tuple[int, str]:
        try:
            groups = await self.pool.call(lambda: self.client.xinfo_groups(stream))
        except ResponseError:  # no stream yet
            return 0, "0-0"
        for group in groups:
            if _s(group.get("name")) == GROUP:
                return int(group.get("pending", 0)), _s(group.get("last-delivered-id", "0-0"))
        return 0, "0-0"

    async def _oldest_waiting(self, stream: str, last_delivered: str) -> int | None:
        entries = await self.pool.call(
            lambda: self.client.xrange(stream, min=f"({last_delivered}", max="+", count=1)
        )
        if not entries:
            return None
        return int(_s(entries[0][0]).split("-")[0])

    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is current."""
        keys = self.pool.global_keys
        now_ms = int(datetime.now().timestamp() * 1000)
        since = now_ms - _LIVE_WORKER_S * 1000
        names = await self.pool.call(lambda: self.client.zrangebyscore(keys.workers, since, "+inf"))
        if not names:
            return []
        blobs = await self.pool.call(lambda: self.client.mget([keys.worker(_s(n)) for n in names]))
        found = []
        for blob in blobs:
            if blob:
                data = json.loads(blob)
                found.append(WorkerInfo(
                    name=data["name"], host=data["host"], pid=data["pid"], queues=data["queues"],
                    concurrency=data["concurrency"], running=data["running"],
                    started_at=from_ms(data["started"]), last_beat=from_ms(data["beat"]),
                    version=data["version"], tasks=data.get("tasks", []),
                    stopping=bool(data.get("stopping", False)),
                ))
        return sorted(found, key=lambda w: w.name)

    async def dead_letters(self, queue: str | None = None, *, limit: int = 100,
                           newest_first: bool = True) -> list[DeadLetter]:
        """Entries of the dead-letter stream, newest first by default."""
        keys = self.pool.keys(queue or self.pool.default_queue)
        if newest_first:
            rows = await self.pool.call(lambda: self.client.xrevrange(keys.dead, count=limit))
        else:
            rows = await self.pool.call(lambda: self.client.xrange(keys.dead, count=limit))
        return [_dead_letter(entry, fields) for entry, fields in rows]

    async def job(self, job_id: str, queue: str | None = None) -> JobInfo:
        """The whole record of a job."""
        return await self.pool.job(job_id, queue).info()

    async def requeue(self, job_ids: list[str], queue: str | None = None) -> dict[str, str]:
        """Requeue dead-lettered jobs by id (same id, history kept); per id: the outcome
        ('queued', 'missing', or the state of a job that is not dead)."""
        store = self.pool.store(queue or self.pool.default_queue)
        outcome: dict[str, str] = {}
        for job_id in job_ids:
            outcome[job_id] = await self.pool.call(functools.partial(store.requeue, job_id))
        return outcome

    async def requeue_all(self, queue: str | None = None) -> dict[str, str]:
        """Requeue every dead-lettered job that has a record."""
        letters = await self.dead_letters(queue, limit=1_000_000, newest_first=False)
        ids = [d.job_id for d in letters if d.job_id]
        return await self.requeue(ids, queue)

    async def purge_dead(self, queue: str | None = None) -> int:
        """Delete every dead letter and the records of those dead jobs; returns how many.
        A job requeued meanwhile keeps its record (checked and deleted in one step)."""
        store = self.pool.store(queue or self.pool.default_queue)
        letters = await self.dead_letters(queue, limit=1_000_000, newest_first=False)
        pairs = [(d.entry, d.job_id) for d in letters]
        deleted = 0
        for start in range(0, len(pairs), 500):
            chunk = pairs[start : start + 500]
            deleted += await self.pool.call(functools.partial(store.purge_dead, chunk))
        return deleted


def _dead_letter(entry: Any, raw: dict[Any, Any]) -> DeadLetter:
    fields = {_s(k): _s(v) for k, v in raw.items()}
    at = fields.get("t")
    return DeadLetter(
        entry=_s(entry), job_id=fields.get("i", ""), reason=fields.get("r", ""),
        at=from_ms(int(at)) if at and at.isdigit() else None, fields=fields,
    )
