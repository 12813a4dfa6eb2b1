"""Listing a queue's jobs by state a page at a time, and finding a job by id. Read-only;
what ``Admin.jobs``, ``asyncjobs jobs`` and the dashboard show.

Every page costs a bounded number of commands whatever the queue holds (never a KEYS scan,
never a pass over the whole queue), oldest or newest first:

- queued: the stream entries after the consumer group's last-delivered id (XRANGE /
  XREVRANGE, bounded by that id);
- running: delivered and not settled: oldest first, XPENDING ranges and each entry's job
  id; newest first, the stream entries up to the last-delivered id (XREVRANGE: settling
  deletes an entry, so what is left there is pending) and each one's XPENDING row; an entry
  settled between the two reads is left out;
- scheduled: the delayed set in its order (due time, then id bytes), resumed after the
  cursor's due time and id, whether or not that job is still there (``Source._scheduled``);
- dead: the dead-letter stream (XREVRANGE / XRANGE);
- complete, failed (failed, expired or aborted): the ended index, a capped stream the
  scripts that end jobs write in the same step (see ``index_ended`` in ``_prelude.lua``),
  so it is never out of step with the records, whatever crashes. A job is shown while its
  record still ends there (not requeued, ended again, or expired since); the index keeps at
  least the latest ``ENDED_KEEP`` ended jobs per queue.

Each record is read with one HMGET (pipelined per page). A filter (a task, or the state
check of complete / failed) is applied to at most ``scan`` jobs per call; the cursor
resumes where the scan stopped, so a million jobs are never read at once.

Each page comes with an opaque cursor for the next one (None at the end). A cursor that
was altered raises ``ValueError`` with one line saying so, and nothing else.
Records read along the way may be garbage: a field that cannot be read is shown as absent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from redis.exceptions import ResponseError

from .._codec import decode_errors, decode_progress, decode_spec
from .._model import Progress
from .._options import MAX_JOB_ID
from .._redis.kept import decode as kept_record
from .._redis.kept import tag_of
from .._redis.keys import GROUP
from .cursor import ENTRY, check_limit, check_scan, decode_cursor, encode_cursor, entry_id
from .deadletters import DeadLetter, dead_letter, text, when
from .sources import ENDED, Source, whole

if TYPE_CHECKING:
    from .pool import Pool

T = TypeVar("T")

_FIELDS = ["j", "s", "a", "st", "w", "h", "et", "p", "dl"]

STATES = ("queued", "running", "scheduled", "dead", "complete", "failed")
"""The states ``Admin.jobs`` lists."""
_NEWEST_FIRST = frozenset({"dead", "complete", "failed"})


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing."""

    items: list[T]
    cursor: str | None
    """Give it back for the next page; None when there is none."""
    scanned: int = 0
    """How many entries were read to fill the page (more than ``items`` under a filter)."""


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job in a listing, with what its record says (``task`` is ``?`` without one)."""

    job_id: str
    task: str = "?"
    state: str = "?"
    attempts: int = 0
    at: datetime | None = None
    """Enqueued (waiting), delivered (in flight) or due (delayed)."""
    entry: str | None = None
    worker: str | None = None
    """The worker holding it (in flight), or the one that ran its latest attempt."""
    idle_s: float | None = None
    """In flight: seconds since its worker last touched it."""
    deliveries: int | None = None
    error_type: str | None = None
    """The latest error's type, if an attempt failed."""
    started_at: datetime | None = None
    """When its latest attempt started."""
    ended_at: datetime | None = None
    progress: Progress | None = None
    """The latest progress its task reported."""
    reason: str | None = None
    """Why it was dead-lettered."""


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead letter, with its job's task, latest error type and attempts."""

    letter: DeadLetter
    job: JobRow = field(default_factory=lambda: JobRow(""))


def row(job_id: str, raw: Any, **known: Any) -> JobRow:
    """A ``JobRow`` from an HMGET of ``_FIELDS`` (or an error reply); never raises."""
    if not isinstance(raw, list) or raw[1] is None:
        return JobRow(job_id, state="unreadable" if isinstance(raw, Exception) else "missing",
                      **known)
    spec, state, attempts, started, worker, history, ended, progress, reason = raw
    task, error, report = "<undecodable>", None, None
    with contextlib.suppress(Exception):  # garbage is shown as such
        task = decode_spec(spec).task
    with contextlib.suppress(Exception):
        errors = decode_errors(history)
        error = errors[-1].type if errors else None
    with contextlib.suppress(Exception):
        report = decode_progress(progress)
    number = text(attempts or b"0")
    known.setdefault("worker", text(worker) if worker else None)
    known.setdefault("reason", text(reason) if reason is not None else None)
    started_at, ended_at = _time(started), _time(ended)
    if "at" not in known:
        known["at"] = started_at
    return JobRow(job_id, task=task, state=text(state),
                  attempts=whole(number) or 0, error_type=error,
                  started_at=started_at, ended_at=ended_at, progress=report, **known)


def _kept_fields(packed: bytes) -> list[bytes | None] | ValueError:
    """A kept result's ``_FIELDS``, as HMGET gives them; the ValueError for garbage (the
    row says unreadable)."""
    try:
        fields = kept_record(packed)
    except ValueError as exc:
        return exc
    return [fields.get(f.encode()) for f in _FIELDS]


def _time(raw: Any) -> datetime | None:
    """A time field (ms) of a record; None when absent or garbage."""
    return None if raw is None else when(raw)


class Listing:
    """The listings of one pool (``pool.admin`` delegates here)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.client = pool.client

    async def pipe(self, build: Any) -> list[Any]:
        async def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            return list(await pipe.execute(raise_on_error=False))

        replies: list[Any] = await self.pool.call(run)
        return replies

    async def records(self, queue: str, job_ids: Sequence[str]) -> list[Any]:
        """HMGET of the listing fields of each job (errors as values), one round trip."""
        if not job_ids:
            return []
        keys = self.pool.keys(queue)
        # An id longer than any job's (a damaged or hand-written entry) has no record: it is
        # not looked up (fifty of 2 MB would send Redis 100 MB for one page).
        asked = [n for n, i in enumerate(job_ids) if len(i) <= MAX_JOB_ID]
        found: list[Any] = [[None] * len(_FIELDS) for _ in job_ids]
        if asked:
            replies = await self.pipe(
                lambda p: [p.hmget(keys.job(job_ids[n]), _FIELDS) for n in asked])
            for n, reply in zip(asked, replies, strict=True):
                found[n] = reply
        # A job whose own key is gone may have its result kept in a shared hash (``kept``):
        # a second round trip, only for those.
        gone = [(n, kept) for n, (i, raw) in enumerate(zip(job_ids, found, strict=True))
                if isinstance(raw, list) and raw[1] is None and (kept := keys.kept(i))]
        if gone:
            packed = await self.pipe(lambda p: [p.hget(k, job_ids[n]) for n, k in gone])
            for (n, _), value in zip(gone, packed, strict=True):
                if isinstance(value, bytes):
                    found[n] = _kept_fields(value)
        return found

    async def last_delivered(self, queue: str) -> str:
        """The consumer group's last-delivered entry id ('0-0' without a group)."""
        stream = self.pool.keys(queue).stream
        try:
            groups = await self.pool.call(lambda: self.client.xinfo_groups(stream))
        except ResponseError:
            return "0-0"
        for group in groups:
            if text(group.get("name")) == GROUP:
                found = text(group.get("last-delivered-id", "0-0"))
                return found if ENTRY.fullmatch(found) else "0-0"
        return "0-0"

    async def jobs(self, queue: str, state: str, *, order: str | None = None,
                   cursor: str | None = None, limit: int = 50, task: str = "",
                   scan: int = 1000) -> Page[JobRow]:
        """One page of the jobs of ``queue`` in ``state`` (see ``STATES``), ``order``
        'oldest' or 'newest' first (default: oldest for queued, running and scheduled,
        newest for the rest); ``task`` keeps only that task's jobs. ``ValueError`` for an
        unknown state or order, a bad limit, or a cursor not made by this same listing."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}: one of {', '.join(STATES)}")
        order = order or ("newest" if state in _NEWEST_FIRST else "oldest")
        if order not in ("oldest", "newest"):
            raise ValueError(f"unknown order {order!r}: oldest or newest")
        check_limit(limit)
        check_scan(scan)
        kind = f"{state}.{order}"
        source = Source(self, queue, state, order == "newest")
        at: list[str] | None = None
        if cursor:
            at = decode_cursor(cursor, kind, 2 if state in ("scheduled", *ENDED) else 1)
            source.check(at)
        filtered = bool(task) or state in ENDED
        items: list[JobRow] = []
        scanned, more = 0, True
        while more and len(items) < limit and scanned < scan:
            want = min(limit, scan - scanned) if filtered else limit - len(items)
            found, more = await source.read(at, want)
            records = await self.records(queue, [f.job_id for f in found])
            for n, (spot, record) in enumerate(zip(found, records, strict=True)):
                job = row(spot.job_id, record, **spot.known)
                at, scanned = spot.cursor, scanned + 1
                if (not task or job.task == task) and source.shows(job, spot):
                    items.append(job)
                if len(items) == limit:
                    more = more or n + 1 < len(found)
                    break
        nxt = encode_cursor(kind, *at) if more and at else None
        return Page(items, nxt, scanned)

    async def dead(self, queue: str, cursor: str | None, limit: int, *, task: str = "",
                   error: str = "", scan: int = 1000) -> Page[DeadRow]:
        """Dead letters, newest first; with ``task`` or ``error``, only the letters whose
        job has that task, or whose latest error type (or reason) names that error. At most
        ``scan`` letters are read per call; the cursor resumes after the last one read."""
        check_limit(limit)
        check_scan(scan)
        end = f"({entry_id(decode_cursor(cursor, 'x', 1)[0])}" if cursor else "+"
        items: list[DeadRow] = []
        scanned, last, more = 0, "", True
        while more and len(items) < limit and scanned < scan:
            want = min(limit, scan - scanned) if task or error else limit - len(items)
            letters = await self._letters(queue, end, want)
            records = await self.records(queue, [d.job_id for d in letters])
            for letter, record in zip(letters, records, strict=True):
                found = DeadRow(letter, row(letter.job_id, record))
                last, scanned = letter.entry, scanned + 1
                if matches(found, task, error):
                    items.append(found)
                if len(items) == limit:
                    break
            more = len(letters) == want or len(items) == limit
            end = f"({last}"
        return Page(items, encode_cursor("x", last) if more and last else None, scanned)

    async def _letters(self, queue: str, end: str, count: int) -> list[DeadLetter]:
        dead = self.pool.keys(queue).dead
        rows = await self.pool.call(
            lambda: self.client.xrevrange(dead, max=end, min="-", count=count))
        return [dead_letter(e, f) for e, f in rows]

    async def find(self, job_id: str, queues: Sequence[str]) -> list[str]:
        """The queues (of ``queues``) that hold a record of ``job_id``."""
        if not job_id or len(job_id) > MAX_JOB_ID or not queues:
            return []
        shaped = tag_of(job_id) is not None  # then it may have a kept result

        def build(pipe: Any) -> None:  # per queue: the job's own key (and kept result)
            for q in queues:
                keys = self.pool.keys(q)
                pipe.exists(keys.job(job_id))
                if shaped:
                    pipe.hexists(keys.kept(job_id), job_id)

        found = await self.pipe(build)
        width = 2 if shaped else 1
        return [q for n, q in enumerate(queues)
                if found[width * n] == 1 or (shaped and found[width * n + 1] in (1, True))]


def matches(found: DeadRow, task: str, error: str) -> bool:
    """Whether a dead letter passes the filters (empty filters pass everything). ``error``
    matches the latest error's type, its last part (``ValueError`` for
    ``builtins.ValueError``), or a word of the dead-letter reason."""
    if task and found.job.task != task:
        return False
    if not error:
        return True
    kind = found.job.error_type or ""
    return error in (kind, kind.rpartition(".")[2]) or error in found.letter.reason.split()
