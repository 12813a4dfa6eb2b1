"""Listing a queue's jobs a page at a time: waiting, in flight, delayed, dead letters, and
finding a job by id. Read-only; what the dashboard shows.

Every page costs a bounded number of commands whatever the queue holds (never a KEYS scan):

- waiting: the stream entries after the consumer group's last-delivered id (XRANGE with an
  exclusive start);
- in flight: XPENDING ranges, then each entry's job id (XRANGE of that one entry);
- delayed: the delayed set by due time (ZRANGE by rank, resumed from the last member's rank);
- dead: the dead-letter stream newest first (XREVRANGE). A filter (task, error type) is
  applied to at most ``scan`` letters per call; the cursor resumes where the scan stopped,
  so 100,000 letters are never read at once.

Each page comes with an opaque cursor for the next one (None at the end). A cursor that
was altered raises ``ValueError`` with one line saying so, and nothing else.
Records read along the way may be garbage: a field that cannot be read is shown as absent.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from redis.exceptions import ResponseError

from .._codec import decode_errors, decode_spec
from .._model import from_ms
from .._redis.keys import GROUP
from .deadletters import DeadLetter, dead_letter, text

if TYPE_CHECKING:
    from .pool import Pool

T = TypeVar("T")

MAX_LIMIT = 500
"""The most rows one page may hold."""

_ENTRY = re.compile(r"\d{1,20}-\d{1,20}")
_FIELDS = ["j", "s", "a", "st", "w", "h"]


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


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead letter, with its job's task, latest error type and attempts."""

    letter: DeadLetter
    job: JobRow = field(default_factory=lambda: JobRow(""))


def encode_cursor(kind: str, *parts: str) -> str:
    """An opaque cursor: base64url of ``kind|part|...`` and a checksum of it. Not a secret
    (a forged cursor can only start a listing somewhere else); the checksum makes any
    change to one a ``ValueError``."""
    raw = "|".join((kind, *parts)).encode()
    return base64.urlsafe_b64encode(_digest(raw) + raw).decode().rstrip("=")


def _digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=6, person=b"asyncjobs-cur").digest()


def decode_cursor(cursor: str, kind: str, count: int) -> list[str]:
    """The parts of a cursor made by ``encode_cursor(kind, ...)``; ``ValueError`` if it was
    made for another listing or altered."""
    raw = _checked(cursor)
    found, _, rest = (raw or "").partition("|")
    parts = rest.split("|", count - 1) if count else []
    if raw is None or found != kind or len(parts) != count:
        raise ValueError("invalid cursor: it was not made by this listing")
    return parts


def _checked(cursor: str) -> str | None:
    """A cursor's text if it is exactly what ``encode_cursor`` made, else None."""
    if not isinstance(cursor, str) or len(cursor) > 2048:
        return None
    try:
        blob = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        raw = blob[6:].decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    same = base64.urlsafe_b64encode(blob).decode().rstrip("=") == cursor
    return raw if same and hmac.compare_digest(blob[:6], _digest(blob[6:])) else None


def entry_id(value: str) -> str:
    """A stream entry id from a cursor, checked."""
    if not _ENTRY.fullmatch(value):
        raise ValueError("invalid cursor: it was not made by this listing")
    return value


def _entry_key(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


def check_limit(limit: int) -> int:
    """A page size between 1 and ``MAX_LIMIT``."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    return limit


def row(job_id: str, raw: Any, **known: Any) -> JobRow:
    """A ``JobRow`` from an HMGET of ``_FIELDS`` (or an error reply); never raises."""
    if not isinstance(raw, list) or raw[1] is None:
        return JobRow(job_id, state="unreadable" if isinstance(raw, Exception) else "missing",
                      **known)
    spec, state, attempts, started, worker, history = raw
    task, error = "<undecodable>", None
    with contextlib.suppress(Exception):  # garbage is shown as such
        task = decode_spec(spec).task
    with contextlib.suppress(Exception):
        errors = decode_errors(history)
        error = errors[-1].type if errors else None
    number = text(attempts or b"0")
    known.setdefault("worker", text(worker) if worker else None)
    if "at" not in known and started and text(started).isdigit():
        known["at"] = from_ms(int(text(started)))
    return JobRow(job_id, task=task, state=text(state),
                  attempts=int(number) if number.isdigit() else 0, error_type=error, **known)


class Listing:
    """The listings of one pool (``pool.admin`` delegates here)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.client = pool.client

    async def _pipe(self, build: Any) -> list[Any]:
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
        return await self._pipe(lambda p: [p.hmget(keys.job(i), _FIELDS) for i in job_ids])

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
                return found if _ENTRY.fullmatch(found) else "0-0"
        return "0-0"

    async def waiting(self, queue: str, cursor: str | None, limit: int) -> Page[JobRow]:
        """Jobs in the stream not yet delivered, oldest first."""
        check_limit(limit)
        after = entry_id(decode_cursor(cursor, "w", 1)[0]) if cursor else "0-0"
        delivered = await self.last_delivered(queue)
        start = max(after, delivered, key=_entry_key)
        stream = self.pool.keys(queue).stream
        entries = await self.pool.call(
            lambda: self.client.xrange(stream, min=f"({start}", max="+", count=limit))
        ids = [(text(e), text(f.get(b"i", b"")) if f else "") for e, f in entries]
        records = await self.records(queue, [i for _, i in ids])
        items = [row(i, r, entry=e, at=from_ms(_entry_key(e)[0]))
                 for (e, i), r in zip(ids, records, strict=True)]
        nxt = encode_cursor("w", ids[-1][0]) if len(ids) == limit else None
        return Page(items, nxt, len(ids))

    async def in_flight(self, queue: str, cursor: str | None, limit: int) -> Page[JobRow]:
        """Jobs delivered to a worker and not settled, oldest delivery first."""
        check_limit(limit)
        start = f"({entry_id(decode_cursor(cursor, 'f', 1)[0])}" if cursor else "-"
        stream = self.pool.keys(queue).stream
        try:
            pending = await self.pool.call(lambda: self.client.xpending_range(
                stream, GROUP, min=start, max="+", count=limit))
        except ResponseError:  # no stream or no group yet
            pending = []
        entries = [text(p["message_id"]) for p in pending]
        found = await self._pipe(lambda p: [p.xrange(stream, e, e) for e in entries])
        ids = [text(f[0][1].get(b"i", b"")) if isinstance(f, list) and f and f[0][1] else ""
               for f in found]
        records = await self.records(queue, ids)
        items = [row(i, r, entry=e, at=from_ms(_entry_key(e)[0]),
                     worker=text(p["consumer"]), idle_s=int(p["time_since_delivered"]) / 1000,
                     deliveries=int(p["times_delivered"]))
                 for i, r, e, p in zip(ids, records, entries, pending, strict=True)]
        nxt = encode_cursor("f", entries[-1]) if len(entries) == limit else None
        return Page(items, nxt, len(entries))

    async def delayed(self, queue: str, cursor: str | None, limit: int) -> Page[JobRow]:
        """Jobs waiting for a due time, soonest first."""
        check_limit(limit)
        key = self.pool.keys(queue).delayed
        rank, score = 0, ""
        if cursor:
            score, member = decode_cursor(cursor, "d", 2)
            if not score.lstrip("-").isdigit():
                raise ValueError("invalid cursor: it was not made by this listing")
            [found] = await self._pipe(lambda p: p.zrank(key, member))
            # It left the set meanwhile (promoted, aborted): resume after its due time.
            rank = found + 1 if isinstance(found, int) else -1
        if rank >= 0:
            rows = await self.pool.call(lambda: self.client.zrange(
                key, rank, rank + limit - 1, withscores=True))
        else:
            rows = await self.pool.call(lambda: self.client.zrangebyscore(
                key, f"({score}", "+inf", start=0, num=limit, withscores=True))
        members = [(text(m), int(s)) for m, s in rows]
        records = await self.records(queue, [m for m, _ in members])
        items = [row(m, r, at=from_ms(s)) for (m, s), r in zip(members, records, strict=True)]
        nxt = (encode_cursor("d", str(members[-1][1]), members[-1][0])
               if len(members) == limit else None)
        return Page(items, nxt, len(members))

    async def dead(self, queue: str, cursor: str | None, limit: int, *, task: str = "",
                   error: str = "", scan: int = 1000) -> Page[DeadRow]:
        """Dead letters, newest first; with ``task`` or ``error``, only the letters whose
        job has that task, or whose latest error type (or reason) names that error. At most
        ``scan`` letters are read per call; the cursor resumes after the last one read."""
        check_limit(limit)
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
        if not job_id or len(job_id) > 1024 or not queues:
            return []
        found = await self._pipe(
            lambda p: [p.exists(self.pool.keys(q).job(job_id)) for q in queues])
        return [q for q, n in zip(queues, found, strict=True) if n == 1]


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
