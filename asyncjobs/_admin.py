"""Looking at queues and workers, and handling dead letters: ``pool.admin``.

Used by the ``asyncjobs info / job / dlq / check`` commands, health endpoints and metrics.
Everything read here may have been written by anyone who can write to Redis: entries that
cannot be read are skipped or shown with placeholders, never allowed to raise.

Bulk dead-letter work (``requeue_all``, ``purge_dead``) walks the dead-letter stream in
pages of 1,000 by entry id, one pipelined round trip of script calls per page, so memory
stays bounded however many letters there are. It visits the letters there were when it
started: a requeued job that is dead-lettered again at once waits for the next run.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from . import _scripts as s
from ._keys import GROUP, check_name
from ._model import JobInfo, from_ms

if TYPE_CHECKING:
    from ._pool import Pool

_LIVE_WORKER_MS = 60_000
_PAGE = 1_000
_EXAMPLES = 20

OnProgress = Callable[[int, int], None]
"""Called after each page of a bulk operation with (letters handled so far, letters there
were when it started)."""


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
    """When it started, on the Redis clock (its own clock's uptime, counted back from
    ``last_beat``); ``last_beat`` when its entry has no usable start time."""
    last_beat: datetime
    """Its latest heartbeat, on the Redis clock (the registry's score), whatever the clock
    of its host says."""
    version: str
    tasks: list[str]
    stopping: bool = False
    """Shutting down: no longer taking jobs, finishing the ones it runs."""
    beat_age_s: float = 0.0
    """Seconds from ``last_beat`` to when this was read, on the Redis clock."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of a queue's dead-letter stream."""

    entry: str
    job_id: str
    reason: str
    at: datetime | None
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class RequeueReport:
    """What ``Admin.requeue_all`` did."""

    requeued: int
    not_requeued: dict[str, int]
    """Letters left in the dead letters, by reason: 'no record' (purged, expired, or a
    letter written by hand), 'no job id', or 'job is <state>' (no longer dead-lettered)."""
    examples: dict[str, str]
    """Up to 20 of the letters left: job id (or '(entry <id>)') -> reason."""

    @property
    def left(self) -> int:
        """How many letters were not requeued."""
        return sum(self.not_requeued.values())


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
        return sorted(n for n in map(_s, names) if _valid_queue(n))

    async def queue_stats(self, queue: str | None = None) -> QueueStats:
        """Waiting, in flight, delayed, dead, the oldest waiting job's age, and counters."""
        name = queue or self.pool.default_queue
        keys = self.pool.keys(name)
        length, delayed, dead, counters, now = await self._pipe(
            lambda p: p.xlen(keys.stream).zcard(keys.delayed).xlen(keys.dead)
            .hgetall(keys.stats).time())
        in_flight, last_delivered = await self._group(keys.stream)
        oldest = await self._oldest_waiting(keys.stream, last_delivered)
        now_ms = _time_ms(now)
        return QueueStats(
            queue=name, waiting=max(0, length - in_flight), in_flight=in_flight,
            delayed=delayed, dead=dead,
            oldest_waiting_s=None if oldest is None else max(0.0, (now_ms - oldest) / 1000),
            counters={_s(k): int(v) for k, v in counters.items() if _s(v).isdigit()},
        )

    async def _pipe(self, build: Callable[[Any], object], errors: bool = True) -> list[Any]:
        """The commands ``build(pipeline)`` adds, in one round trip; with ``errors`` false,
        a command's error is its reply instead of raised."""

        async def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            return list(await pipe.execute(raise_on_error=errors))

        replies: list[Any] = await self.pool.call(run)
        return replies

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

    async def workers(self) -> list[WorkerInfo]:
        """Live workers: those whose latest heartbeat is under 60 s old. Both ends are on the
        Redis clock (the registry's score, and ``TIME`` read with it), so a worker whose host
        clock is off is judged right. Entries that cannot be read are skipped."""
        keys = self.pool.global_keys
        now, entries = await self._pipe(
            lambda p: p.time().zrange(keys.workers, 0, -1, withscores=True))
        now_ms = _time_ms(now)
        live = [(_s(n), min(score, now_ms)) for n, score in entries
                if now_ms - score < _LIVE_WORKER_MS]
        if not live:
            return []
        blobs = await self.pool.call(
            lambda: self.client.mget([keys.worker(n) for n, _ in live]))
        found = [_worker(name, blob, int(beat_ms), now_ms)
                 for (name, beat_ms), blob in zip(live, blobs, strict=True)]
        return sorted((w for w in found if w is not None), key=lambda w: w.name)

    async def requeue(self, job_ids: Sequence[str], queue: str | None = None) -> dict[str, str]:
        """Requeue dead-lettered jobs by id (same id, history kept); per id: the outcome
        ('queued', 'missing', or the state of a job that is not dead). Pipelined, 1,000
        jobs per round trip."""
        name = queue or self.pool.default_queue
        outcome: dict[str, str] = {}
        for start in range(0, len(job_ids), _PAGE):
            chunk = job_ids[start : start + _PAGE]
            outcome.update(zip(chunk, await self._requeue_page(name, chunk), strict=True))
        return outcome

    async def requeue_all(self, queue: str | None = None, *,
                          on_progress: OnProgress | None = None) -> RequeueReport:
        """Requeue every dead-lettered job that has a record; count the letters left.

        A letter is requeued when its job is still dead-lettered as that letter; a letter
        of a job that was requeued or dead-lettered again since is left, as the reasons say.
        """
        name = queue or self.pool.default_queue
        tally = _Tally()
        total, pages = await self._pages(name, on_progress)
        async for page in pages:
            await self._requeue_letters(name, page, tally)
            if on_progress is not None:
                on_progress(tally.handled, total)
        return tally.report()

    async def _requeue_letters(self, queue: str, page: list[DeadLetter], tally: _Tally) -> None:
        keys, ready = self.pool.keys(queue), []
        named = [d for d in page if d.job_id]
        records = await self._pipe(
            lambda p: [p.hmget(keys.job(d.job_id), ["s", "de"]) for d in named], errors=False)
        for letter, record in zip(named, records, strict=True):
            why = _not_requeueable(letter, record)
            if why:
                tally.left_over(letter, why)
            else:
                ready.append(letter)
        replies = await self._requeue_page(queue, [d.job_id for d in ready])
        for letter, reply in zip(ready, replies, strict=True):
            if reply == "queued":
                tally.requeued()
            else:
                tally.left_over(letter, _REPLIES.get(reply, f"job is {reply}"))
        for letter in page:
            if not letter.job_id:
                tally.left_over(letter, "no job id")

    async def _requeue_page(self, queue: str, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        keys, script = self.pool.keys(queue), s.load(s.REQUEUE)
        calls: list[s.Call] = [(script, [keys.job(i), keys.stream, keys.dead], [i])
                               for i in job_ids]
        replies = await self.pool.call(lambda: s.run_pipelined(self.client, calls))
        return [_s(r) for r in replies]

    async def purge_dead(self, queue: str | None = None, *,
                         on_progress: OnProgress | None = None) -> int:
        """Delete every dead letter and the records of those dead jobs; returns how many.
        A job requeued meanwhile keeps its record (checked and deleted in one step)."""
        name = queue or self.pool.default_queue
        store = self.pool.store(name)
        deleted = handled = 0
        total, pages = await self._pages(name, on_progress)
        async for page in pages:
            pairs = [(d.entry, d.job_id) for d in page]
            deleted += await self.pool.call(functools.partial(store.purge_dead, pairs))
            handled += len(page)
            if on_progress is not None:
                on_progress(handled, total)
        return deleted

    async def _pages(self, queue: str, on_progress: OnProgress | None
                     ) -> tuple[int, AsyncIterator[list[DeadLetter]]]:
        """How many letters there are, and those letters a page at a time, oldest first."""
        dead = self.pool.keys(queue).dead
        total, newest = await self._pipe(lambda p: p.xlen(dead).xrevrange(dead, count=1))
        if on_progress is not None:
            on_progress(0, int(total))
        return int(total), self._walk(dead, _s(newest[0][0]) if newest else None)

    async def _walk(self, dead: str, end: str | None) -> AsyncIterator[list[DeadLetter]]:
        start = "-"
        while end is not None:
            rows = await self.pool.call(functools.partial(
                self.client.xrange, dead, min=start, max=end, count=_PAGE))
            if not rows:
                return
            # Exclusive: the letters just handled may still be there (not requeued).
            start = f"({_s(rows[-1][0])}"
            yield [_dead_letter(entry, fields) for entry, fields in rows]

def _dead_letter(entry: Any, raw: dict[Any, Any]) -> DeadLetter:
    fields = {_s(k): _s(v) for k, v in raw.items()}
    at = fields.get("t")
    return DeadLetter(
        entry=_s(entry), job_id=fields.get("i", ""), reason=fields.get("r", ""),
        at=from_ms(int(at)) if at and at.isdigit() else None, fields=fields,
    )


class _Tally:
    """Counts what ``requeue_all`` did, letter by letter, keeping a few examples."""

    def __init__(self) -> None:
        self.handled = self.done = 0
        self.left: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def requeued(self) -> None:
        self.handled += 1
        self.done += 1

    def left_over(self, letter: DeadLetter, reason: str) -> None:
        self.handled += 1
        self.left[reason] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples[letter.job_id or f"(entry {letter.entry})"] = reason

    def report(self) -> RequeueReport:
        return RequeueReport(self.done, dict(self.left), self.examples)


_REPLIES = {"missing": "no record", "unreadable": "unreadable record"}


def _not_requeueable(letter: DeadLetter, record: Any) -> str:
    """Why a letter cannot be requeued, from its job's record (state, letter id); '' if it
    can: the job is dead-lettered, as this letter (or as no letter in particular)."""
    if isinstance(record, Exception):
        return "unreadable record"
    state, entry = (None if v is None else _s(v) for v in record)
    if state is None:
        return "no record"
    if state != "failed":
        return f"job is {state}"
    return "" if entry in (None, letter.entry) else "stale letter (dead-lettered again since)"


def _time_ms(reply: Any) -> int:
    """A ``TIME`` reply in epoch milliseconds."""
    return int(reply[0]) * 1000 + int(reply[1]) // 1000


def _valid_queue(name: str) -> bool:
    try:
        check_name("queue name", name)
    except ValueError:
        return False
    return True


def _worker(name: str, blob: bytes | None, beat_ms: int, now_ms: int) -> WorkerInfo | None:
    """A registry entry as a ``WorkerInfo``; None when its JSON is gone or not an object.
    Fields of the wrong type get placeholders; queue names that are not valid are left out."""
    try:
        data = json.loads(blob) if blob else None
    except (ValueError, RecursionError):  # not JSON, or not UTF-8
        return None
    if not isinstance(data, dict):
        return None
    started, own_beat = _number(data.get("started")), _number(data.get("beat"))
    up_ms = 0 if started is None or own_beat is None else own_beat - started
    up_ms = min(max(up_ms, 0), beat_ms)  # both from the worker's clock: skew cancels out
    return WorkerInfo(
        name=name, host=_text(data.get("host")), pid=_number(data.get("pid")) or 0,
        queues=[q for q in _texts(data.get("queues")) if _valid_queue(q)],
        concurrency=_number(data.get("concurrency")) or 0,
        running=_number(data.get("running")) or 0,
        started_at=from_ms(beat_ms - up_ms), last_beat=from_ms(beat_ms),
        version=_text(data.get("version")), tasks=_texts(data.get("tasks")),
        stopping=data.get("stopping") is True, beat_age_s=(now_ms - beat_ms) / 1000,
    )


def _number(value: Any) -> int | None:
    plain = isinstance(value, int | float) and not isinstance(value, bool)
    return int(value) if plain and math.isfinite(value) and abs(value) < 2**53 else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "?"


def _texts(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
