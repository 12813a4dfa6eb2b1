"""Where a listing finds the jobs of each state, read in order from a cursor position: the
stream after (queued) or up to (running) the group's last-delivered id, the pending entries,
the delayed set, the dead-letter stream and the ended index (see ``listing`` for what each
costs). A ``Source`` gives ``Spot``s: a job id, where to resume after it, and what the
source itself knew of the job; ``Listing.jobs`` reads the records and pages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .._redis.keys import GROUP
from .cursor import after, entry_id, entry_key
from .deadletters import dead_letter, text, when

if TYPE_CHECKING:
    from .listing import JobRow, Listing

ENDED = {"complete": frozenset({"complete"}),
         "failed": frozenset({"failed", "expired", "aborted"})}
"""The states of the ended index, and the record states each one lists."""


def whole(value: str, digits: int = 15) -> int | None:
    """A whole number written in ASCII digits (at most ``digits``), else None."""
    ok = value.isascii() and value.isdigit() and len(value) <= digits
    return int(value) if ok else None


SCORE = re.compile(r"-?(?:inf|\d{1,20}(?:\.\d{1,20})?(?:e[+-]\d{1,3})?)~?", re.ASCII)
"""A delayed-set score as a cursor holds it (what ``due_cursor`` writes)."""
LATIN = "~"
"""After a cursor's score: its member is bytes that are not UTF-8, held as Latin-1 text."""


def score_text(score: float) -> str:
    """A delayed-set score as a cursor holds it, exactly: whole ms as digits (what enqueue
    writes), else (a score written by hand) as Python writes the float."""
    whole_ms = score.is_integer() and abs(score) < 2**63
    return str(int(score)) if whole_ms else repr(score)


@dataclass(frozen=True, slots=True)
class Spot:
    """A job met along a listing: where to resume after it, its id, what the source knew."""

    cursor: list[str]
    job_id: str
    known: dict[str, Any] = field(default_factory=dict)
    ended_ms: int | None = None
    gone: bool = False
    """It left the state between the source's reads (settled, aborted): not shown."""


class Source:
    """Where the jobs of one state come from, read in order from a cursor position (parts
    of an opaque cursor, checked before use)."""

    def __init__(self, listing: Listing, queue: str, state: str, newest: bool) -> None:
        self.listing = listing
        self.pool = listing.pool
        self.client = listing.client
        self.queue = queue
        self.keys = listing.pool.keys(queue)
        self.state = state
        self.newest = newest

    def check(self, at: list[str]) -> None:
        """``ValueError`` unless ``at`` is a position this source made."""
        if self.state == "scheduled":
            latin = at[0].endswith(LATIN)
            if not SCORE.fullmatch(at[0]) or (latin and any(ord(c) > 255 for c in at[1])):
                raise ValueError("invalid cursor: it was not made by this listing")
        elif self.state in ENDED:
            entry_id(at[0])
            if whole(at[1], 6) is None:
                raise ValueError("invalid cursor: it was not made by this listing")
        else:
            entry_id(at[0])

    def shows(self, job: JobRow, spot: Spot) -> bool:
        """Whether a job read from the source is (still) in the listed state."""
        wanted = ENDED.get(self.state)
        if wanted is None:
            return not spot.gone
        ended = job.ended_at
        return (job.state in wanted and ended is not None and spot.ended_ms is not None
                and round(ended.timestamp() * 1000) == spot.ended_ms)

    async def read(self, at: list[str] | None, count: int) -> tuple[list[Spot], bool]:
        """Up to ``count`` positions after ``at`` (more for the ended index, whose entries
        hold several jobs), and whether there may be more after them."""
        reader = {"queued": self._queued, "running": self._running,
                  "scheduled": self._scheduled, "dead": self._dead}.get(self.state, self._ended)
        return await reader(at, count)

    async def _range(self, key: str, low: str, high: str, count: int) -> list[Any]:
        """XRANGE (XREVRANGE newest first) of ``key`` between ``low`` and ``high``."""
        if self.newest:
            found = await self.pool.call(lambda: self.client.xrevrange(
                key, max=high, min=low, count=count))
        else:
            found = await self.pool.call(lambda: self.client.xrange(
                key, min=low, max=high, count=count))
        rows: list[Any] = found
        return rows

    async def _queued(self, at: list[str] | None, count: int) -> tuple[list[Spot], bool]:
        delivered = await self.listing.last_delivered(self.queue)
        if self.newest:
            low, high = after(delivered), f"({at[0]}" if at else "+"
        else:
            low = after(max(at[0], delivered, key=entry_key) if at else delivered)
            high = "+"
        if low is None:  # the group read the largest id there is: nothing waits after it
            return [], False
        rows = await self._range(self.keys.stream, low, high, count)
        spots = [Spot([text(e)], job_id_of(f), {"entry": text(e),
                                               "at": when(entry_key(text(e))[0])})
                 for e, f in rows]
        return spots, len(rows) == count

    async def _running(self, at: list[str] | None, count: int) -> tuple[list[Spot], bool]:
        stream = self.keys.stream
        if self.newest:  # what is left up to last-delivered is pending: settling deletes
            delivered = await self.listing.last_delivered(self.queue)
            high = f"({at[0]}" if at else delivered
            rows = [] if delivered == "0-0" else await self._range(stream, "-", high, count)
            entries = [(text(e), job_id_of(f)) for e, f in rows]
            found = await self.listing.pipe(lambda p: [
                p.xpending_range(stream, GROUP, min=e, max=e, count=1) for e, _ in entries])
            pending = [f[0] if isinstance(f, list) and f else None for f in found]
            gone = [p is None for p in pending]  # settled since the XREVRANGE
            more = len(rows) == count
        else:
            start = after(at[0]) if at else "-"
            try:
                rows = [] if start is None else await self.pool.call(
                    lambda: self.client.xpending_range(stream, GROUP, min=start, max="+",
                                                       count=count))
            except ResponseError:  # no stream or no group yet
                rows = []
            got = await self.listing.pipe(lambda p: [
                p.xrange(stream, r["message_id"], r["message_id"]) for r in rows])
            entries = [(text(r["message_id"]),
                        job_id_of(g[0][1]) if isinstance(g, list) and g else "")
                       for r, g in zip(rows, got, strict=True)]
            gone = [g == [] for g in got]  # settled since the XPENDING (or its job aborted)
            pending, more = list(rows), len(rows) == count
        spots = []
        for (entry, job_id), p, left in zip(entries, pending, gone, strict=True):
            known: dict[str, Any] = {"entry": entry, "at": when(entry_key(entry)[0])}
            if p is not None:
                known.update(worker=text(p["consumer"]),
                             idle_s=int(p["time_since_delivered"]) / 1000,
                             deliveries=int(p["times_delivered"]))
            spots.append(Spot([entry], job_id, known, gone=left))
        return spots, more

    async def _scheduled(self, at: list[str] | None, count: int) -> tuple[list[Spot], bool]:
        """The delayed set in its own order (score, then member bytes). After a cursor:
        from its score on, past the members with that score at or before its member,
        whether or not that member is still there (promoted, aborted meanwhile)."""
        key = self.keys.delayed
        if not at:
            rows = await self.pool.call(lambda: self.client.zrange(
                key, 0, count - 1, desc=self.newest, withscores=True))
            return due_spots(rows), len(rows) == count
        score, member = due_mark(at)
        mark = (float(score), member)
        start, n = max(await self._ties_through(score, mark) - 1, 0), count + 1
        while True:  # a read from `start` on must begin at or before the cursor
            rows = await self._ties(score, start, n)
            lead = next((i for i, r in enumerate(rows) if self._beyond(r, mark)), len(rows))
            if start and not lead:  # ties before it left since counted: from the first tie
                start, n = 0, start + n
            elif lead == len(rows) == n:  # ties before it joined since counted: read on
                start += n - 1
            else:
                fresh = rows[lead:]
                return due_spots(fresh[:count]), len(rows) == n or len(fresh) > count

    def _beyond(self, row: Any, mark: tuple[float, bytes]) -> bool:
        """Whether a (member, score) row comes after ``mark`` in this listing's order."""
        member, score = row
        here = (float(score), member if isinstance(member, bytes) else str(member).encode())
        return here < mark if self.newest else here > mark

    async def _ties(self, score: str, start: int, count: int) -> list[Any]:
        """Up to ``count`` rows from the ``start``-th of those due at ``score`` or after."""
        key = self.keys.delayed
        if self.newest:
            found = await self.pool.call(lambda: self.client.zrevrangebyscore(
                key, score, "-inf", start=start, num=count, withscores=True))
        else:
            found = await self.pool.call(lambda: self.client.zrangebyscore(
                key, score, "+inf", start=start, num=count, withscores=True))
        rows: list[Any] = found
        return rows

    async def _ties_through(self, score: str, mark: tuple[float, bytes]) -> int:
        """How many members due at the cursor's score come at or before its member: from
        the member's rank while it is there, else by halving among those ties. A guess the
        read checks (the set may change meanwhile)."""
        key, member = self.keys.delayed, mark[1]
        rank, place, before, ties = await self.listing.pipe(lambda p: [
            p.zrevrank(key, member) if self.newest else p.zrank(key, member),
            p.zscore(key, member),
            p.zcount(key, f"({score}", "+inf") if self.newest
            else p.zcount(key, "-inf", f"({score}"),
            p.zcount(key, score, score)])
        if not (isinstance(before, int) and isinstance(ties, int)):
            return 0  # not a sorted set: the read says so
        if isinstance(rank, int) and place == mark[0]:
            return min(max(rank - before + 1, 0), ties)
        low, high = 0, ties  # the first tie beyond the cursor's member
        while low < high:
            mid = (low + high) // 2
            probe = await self._ties(score, mid, 1)
            if not probe or self._beyond(probe[0], mark):
                high = mid
            else:
                low = mid + 1
        return low

    async def _dead(self, at: list[str] | None, count: int) -> tuple[list[Spot], bool]:
        if at and not self.newest:
            low = after(at[0])
            if low is None:  # nothing follows the largest id there is
                return [], False
            rows = await self._range(self.keys.dead, low, "+", count)
        else:
            rows = await self._range(self.keys.dead, "-", f"({at[0]}" if at else "+", count)
        spots = []
        for e, f in rows:
            letter = dead_letter(e, f)
            spots.append(Spot([letter.entry], letter.job_id,
                               {"entry": letter.entry, "at": letter.at,
                                "reason": letter.reason}))
        return spots, len(rows) == count

    async def _ended(self, at: list[str] | None, count: int) -> tuple[list[Spot], bool]:
        """The ended index: entries of job id -> ended ms. A cursor is an entry and how
        many of its jobs were read; reading resumes inside that entry."""
        key = self.keys.ended
        skip, wanted = 0, count
        if at:
            skip = int(at[1])
            low, high = ("-", at[0]) if self.newest else (at[0], "+")
            wanted += 1  # the cursor's own entry may be used up: never read only that
        else:
            low, high = "-", "+"
        try:
            rows = await self._range(key, low, high, wanted)
        except ResponseError:  # the index key holds something else: nothing to list
            return [], False
        spots: list[Spot] = []
        for e, f in rows:
            entry = text(e)
            pairs = list((f or {}).items())
            if self.newest:
                pairs.reverse()
            start = skip if at and entry == at[0] else 0
            for n, (job_id, ms) in enumerate(pairs[start:], start + 1):
                if len(spots) == count:  # a big entry: the cursor resumes inside it
                    return spots, True
                spots.append(Spot([entry, str(n)], text(job_id), ended_ms=whole(text(ms))))
        return spots, len(rows) == wanted


def job_id_of(fields: Any) -> str:
    """The job id of a stream entry's fields ('' when it has none)."""
    return text(fields.get(b"i", b"")) if isinstance(fields, dict) else ""


def due_spots(rows: list[Any]) -> list[Spot]:
    """The spots of delayed-set rows (member, score); each one's cursor is where it is."""
    return [Spot(due_cursor(m, float(s)), text(m), {"at": when(s)}) for m, s in rows]


def due_cursor(member: bytes | str, score: float) -> list[str]:
    """Where a delayed-set member is, exactly: its score and its bytes, as text (bytes that
    are not UTF-8 as Latin-1, marked after the score: U+FFFD would name other bytes)."""
    if isinstance(member, str):
        return [score_text(score), member]
    try:
        return [score_text(score), member.decode()]
    except UnicodeDecodeError:
        return [score_text(score) + LATIN, member.decode("latin-1")]


def due_mark(at: list[str]) -> tuple[str, bytes]:
    """A scheduled cursor's score (as Redis reads it) and member bytes (``due_cursor``)."""
    if at[0].endswith(LATIN):
        return at[0].removesuffix(LATIN), at[1].encode("latin-1")
    return at[0], at[1].encode()
