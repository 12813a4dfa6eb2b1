"""The Redis I/O of one queue's job path: enqueue, read, start, settle, reclaim, touch,
hand back, promote, abort, cron ticks, the delayed sets' repair. Everything here is one
round trip.

Each method is the one typed wrapper of its script (see ``scripts/``); callers get plain
Python values back and never see a Redis reply shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import scripts as s
from .keys import GROUP, Keys, job_pattern
from .replication import Replication
from .values import (
    DeadLetterLimits,
    Delivery,
    LeaseAsk,
    Looked,
    NewJob,
    Orphan,
    Promoted,
    RateCheck,
    Reclaimed,
    Rescheduled,
    SettleOp,
    Started,
    Taken,
    delivery_of,
    max_length,
    reply_text,
)

_ENQUEUE_BATCH = 500


def take_call(stores: Sequence[QueueStore], consumer: str, count: int) -> s.Call:
    """The take.lua call that ``take_levels`` makes, for a caller that sends it itself (the
    fetch loop's wait sends it right behind its blocking read); ``taken_from`` reads the
    reply."""
    keys: list[s.KeyOrArg] = [st.keys.stream for st in stores]
    args: list[s.KeyOrArg] = [GROUP, consumer, count, *(st.keys.job_prefix for st in stores)]
    return s.load(s.TAKE), keys, args


TAKE_ROW = 12
"""Values take.lua returns per started entry, one after the other in one flat array: level,
entry id, job id, then start_entry()'s nine."""


def taken_from(reply: Any) -> Taken:
    """What a take.lua call (``take_call``) started, from its reply."""
    flat, last, errors = reply
    rows = [flat[i:i + TAKE_ROW] for i in range(0, len(flat), TAKE_ROW)]
    return Taken(
        [(int(level) - 1,
          Started(Delivery(reply_text(e), reply_text(j)), reply_text(v), spec or b"", int(a),
                  hist or b"", int(q or 0), int(now), int(rs or 0), plain == 1, resumed == 1))
         for level, e, j, v, spec, a, hist, q, now, rs, plain, resumed in rows],
        [reply_text(x) for x in last],
        [(int(level) - 1, reply_text(why)) for level, why in errors])


async def take_levels(stores: Sequence[QueueStore], consumer: str, count: int) -> Taken:
    """Read up to ``count`` new entries from the stores (the levels of one queue, highest
    first: their keys share one hash tag) without blocking, and start them, in one round
    trip; see take.lua and ``taken_from``."""
    script, keys, args = take_call(stores, consumer, count)
    return taken_from(await script(stores[0].client, keys, args))


async def reclaim_levels(stores: Sequence[QueueStore], consumer: str, min_idle_ms: int,
                         count: int, cursors: Sequence[str], latest_ms: int | None = None
                         ) -> Reclaimed:
    """Claim up to ``count`` entries idle for ``min_idle_ms`` from the stores (the levels of
    one queue, highest first: one hash tag), each scanned from its cursor, in one round
    trip; see reclaim.lua. With ``latest_ms``, claim nothing if the server's clock reads
    later than that (it stepped forward: ``stepped``)."""
    keys: list[s.KeyOrArg] = [st.keys.stream for st in stores]
    args: list[s.KeyOrArg] = [GROUP, consumer, min_idle_ms, count,
                              "" if latest_ms is None else latest_ms, *cursors]
    nxt, rows, errors, now, stepped = await s.load(s.RECLAIM)(stores[0].client, keys, args)
    return Reclaimed([reply_text(c) for c in nxt],
                     [(int(level) - 1, delivery_of(e, j, int(n))) for level, e, j, n in rows],
                     [(int(level) - 1, reply_text(why)) for level, why in errors],
                     int(now), bool(int(stepped)))


def touched(reply: Any) -> tuple[list[str], list[str]]:
    """A touch.lua reply: (lost entry ids, job ids whose abort was requested)."""
    lost, aborted = reply
    return [reply_text(x) for x in lost], [reply_text(x) for x in aborted]


async def idle_levels(stores: Sequence[QueueStore], min_idle_ms: int, most: int,
                      cursors: Sequence[str]) -> Looked:
    """The first entry of the stores (the levels of one queue: one hash tag) pending
    ``min_idle_ms`` or longer, reading at most ``most`` pending entries from the levels'
    cursors ('-' for the start), in one round trip, writing nothing; see idle.lua."""
    keys: list[s.KeyOrArg] = [st.keys.stream for st in stores]
    found, nxt, errors, now = await s.load(s.IDLE)(stores[0].client, keys,
                                                   [GROUP, min_idle_ms, most, *cursors])
    return Looked((int(found[0]) - 1, reply_text(found[1])) if found else None,
                  [reply_text(c) for c in nxt],
                  [(int(level) - 1, reply_text(why)) for level, why in errors], int(now))


async def reschedule_levels(stores: Sequence[QueueStore], cursor: str, count: int
                            ) -> Rescheduled:
    """One step of the waiting jobs' repair over the stores (the levels of one queue: one
    hash tag): SCAN from ``cursor`` (COUNT ``count``) for job records that say scheduled but
    whose level's delayed set lacks them, or queued but whose stream entry no worker will be
    handed, and put them back; see reschedule.lua."""
    return await _reschedule(stores, cursor, count, (), 0)


async def revive_levels(stores: Sequence[QueueStore], orphans: Sequence[Orphan],
                        claim_ms: int) -> int:
    """Put back in their streams the running jobs in ``orphans`` (found by
    ``reschedule_levels`` on these stores) still running as found, with their entry still
    unreachable and their record untouched for ``claim_ms``; how many were. See
    reschedule.lua."""
    return (await _reschedule(stores, "", 0, orphans, claim_ms)).revived


async def _reschedule(stores: Sequence[QueueStore], cursor: str, count: int,
                      orphans: Sequence[Orphan], claim_ms: int) -> Rescheduled:
    keys: list[s.KeyOrArg] = [*(st.keys.delayed for st in stores),
                              *(st.keys.stream for st in stores)]
    args: list[s.KeyOrArg] = [cursor, job_pattern([st.keys for st in stores]), count,
                              *(st.keys.job_prefix for st in stores), GROUP, claim_ms]
    for o in orphans:
        args += [o.level + 1, o.job_id, o.worker, o.attempts, o.entry]
    nxt, restored, earliest, requeued, found, revived = await s.load(s.RESCHEDULE)(
        stores[0].client, keys, args)
    return Rescheduled(
        reply_text(nxt), int(restored), None if int(earliest) < 0 else int(earliest),
        int(requeued),
        tuple(Orphan(int(level) - 1, job, worker, attempts, entry)
              for level, job, worker, attempts, entry in found),
        int(revived))


class QueueStore:
    """Redis operations on one queue's keys."""

    replication: Replication | None = None
    """Set on the stores of a pool made with ``wait_replicas``: enqueues wait for replicas."""

    def __init__(self, client: Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group at id 0 (so nothing queued is skipped)."""
        await s.load(s.GROUP)(self.client, [self.keys.stream], [GROUP])

    async def enqueue(self, jobs: Sequence[NewJob], *, count_refused: bool = True
                      ) -> dict[int, str]:
        """Write jobs (pipelined batches of 500), each all or nothing. Returns the jobs not
        created, by index in ``jobs``: the state of a job that already existed (dedup by job
        id), ``'full: <max>'`` for one refused because the queue is at its maximum length,
        or ``'error: <reason>'`` for one that could not be written. ``count_refused``: add
        refused jobs to the queue's ``refused`` counter (not while a caller will retry)."""
        calls = [self._enqueue_call(jobs[i : i + _ENQUEUE_BATCH], count_refused)
                 for i in range(0, len(jobs), _ENQUEUE_BATCH)]
        if self.replication is not None:
            replies = await self.replication.run(self.client, calls, [j.id for j in jobs])
        elif len(calls) == 1:
            replies = [await calls[0][0](self.client, calls[0][1], calls[0][2])]
        else:
            replies = await s.run_pipelined(self.client, calls)
        existing: dict[int, str] = {}
        for batch, reply in enumerate(replies):
            for k in range(0, len(reply), 2):
                existing[batch * _ENQUEUE_BATCH + int(reply[k]) - 1] = reply_text(reply[k + 1])
        return existing

    async def room(self) -> int | None:
        """Jobs the queue can still take before its maximum length (None: no maximum), as
        enqueue.lua counts: the maximum less the stream's and the delayed set's lengths."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(k.settings, "max_length")
        pipe.xlen(k.stream)
        pipe.zcard(k.delayed)
        most, length, delayed = await pipe.execute(raise_on_error=False)
        limit = max_length(most)
        if limit is None:
            return None
        return limit - sum(n for n in (length, delayed) if isinstance(n, int))

    def _enqueue_call(self, jobs: Sequence[NewJob], count_refused: bool) -> s.Call:
        k = self.keys
        keys: list[s.KeyOrArg] = [k.stream, k.delayed, k.stats, k.settings,
                                  *(k.job(j.id) for j in jobs)]
        args: list[s.KeyOrArg] = [k.wake_channel, int(count_refused)]
        for j in jobs:
            args += [j.id, j.spec, j.delay_ms, j.due_at_ms, j.expires_in_ms, j.expires_at_ms]
        return (s.load(s.ENQUEUE), keys, args)

    async def read(
        self, client: Redis, consumer: str, count: int, block_ms: int | None
    ) -> list[Delivery]:
        """XREADGROUP new entries for this consumer (``client`` is the blocking connection)."""
        reply: Any = await client.xreadgroup(
            GROUP, consumer, {self.keys.stream: ">"}, count=count, block=block_ms
        )
        if not reply:
            return []
        return [delivery_of(entry, fields.get(b"i", b"") if fields else b"")
                for entry, fields in reply[0][1]]

    async def take(self, consumer: str, count: int) -> list[Started]:
        """Read up to ``count`` new entries without blocking and start them (one round
        trip); empty when nothing is waiting. Raises Redis's refusal to read the stream."""
        taken = await take_levels([self], consumer, count)
        if taken.errors:
            raise ResponseError(taken.errors[0][1])
        return [started for _, started in taken.rows]

    async def start(self, consumer: str, deliveries: Sequence[Delivery]) -> list[Started]:
        """Mark deliveries as started; see start.lua for the verdicts."""
        readable = [d for d in deliveries if d.readable]
        args: list[s.KeyOrArg] = [GROUP, consumer, self.keys.job_prefix]
        for d in readable:
            args += [d.entry, d.job_id]
        reply = await s.load(s.START)(self.client, [self.keys.stream], args) if readable else []
        rows = iter(reply)
        started = []
        for d in deliveries:
            if not d.readable:  # never sent to a script: the replaced text names no job
                started.append(Started(d, "unreadable", b"the job id is not valid UTF-8", 0,
                                       b"", 0, 0))
                continue
            v, spec, a, hist, q, now, rs, plain, resumed = next(rows)
            started.append(Started(d, reply_text(v), spec or b"", int(a), hist or b"", int(q or 0),
                                   int(now), int(rs or 0), plain == 1, resumed == 1))
        return started

    def rate_call(self, consumer: str, checks: Sequence[RateCheck]) -> s.Call:
        """The rate.lua call for started jobs under a rate limit (the worker pipelines
        the calls of every queue into one round trip); read its reply with
        ``rate_reply``."""
        k = self.keys
        keys: list[s.KeyOrArg] = [k.stream, k.delayed, k.stats]
        args: list[s.KeyOrArg] = [GROUP, consumer, k.wake_channel]
        for c in checks:
            keys += [c.limit_key, k.job(c.delivery.job_id)]
            args += [c.delivery.entry, c.delivery.job_id, c.interval_us]
        return (s.load(s.RATE), keys, args)

    @staticmethod
    def rate_reply(reply: Any) -> list[tuple[str, int]]:
        """Each job's verdict ('run', 'deferred', 'lost', 'aborted', 'expired') and the
        slot (ms) it got, in the order of the checks."""
        return [(reply_text(verdict), int(slot)) for verdict, slot in reply[:-1]]

    def lease_call(self, consumer: str, asks: Sequence[LeaseAsk], lease_ms: int,
                   latest_ms: int | None = None) -> s.Call:
        """The concurrency.lua call for started jobs under a concurrency limit (pipelined
        with the other queues' like ``rate_call``); read its reply with ``lease_reply`` and
        ``lease_clock``. ``latest_ms``: the latest time the server's clock may read without
        having stepped forward (None: no check); past it, no lease expires in this call."""
        k = self.keys
        keys: list[s.KeyOrArg] = [k.stream, k.delayed, k.stats, k.concurrency_limits]
        args: list[s.KeyOrArg] = [GROUP, consumer, k.wake_channel, lease_ms, k.job_prefix,
                                  "" if latest_ms is None else latest_ms]
        for a in asks:
            keys += [k.concurrency(a.name), k.concurrency_wait(a.name),
                     k.job(a.delivery.job_id)]
            args += [a.delivery.entry, a.delivery.job_id, a.limit, a.name]
        return (s.load(s.CONCURRENCY), keys, args)

    @staticmethod
    def lease_reply(reply: Any) -> list[tuple[str, int]]:
        """Each job's verdict ('run', 'waiting', 'lost', 'aborted') and its due time (ms:
        when the lease expires, or the waiting job's safety-net due time); the reply's last
        two items are the clock's (``lease_clock``)."""
        return [(reply_text(verdict), int(due)) for verdict, due in reply[:-2]]

    @staticmethod
    def lease_clock(reply: Any) -> tuple[int, bool]:
        """What the server's clock read in a concurrency.lua call (ms), and whether it was
        past the call's ``latest_ms`` (a step forward: no lease expired)."""
        return int(reply[-2]), int(reply[-1]) == 1

    def settle_call(self, consumer: str, ops: Sequence[SettleOp],
                    dead_letters: DeadLetterLimits | None = None) -> s.Call:
        """The settle.lua call for a batch of finished attempts (the settler pipelines the
        calls of every queue into one round trip); per op, 1 if settled, 0 if the entry is
        no longer this consumer's, 2 if a retry ended aborted instead (its abort was
        requested meanwhile)."""
        k = self.keys
        limits = dead_letters or DeadLetterLimits()
        args: list[s.KeyOrArg] = [GROUP, consumer, k.job_prefix, k.done_channel(""),
                                  k.wake_channel, k.minute_prefix, limits.most,
                                  limits.max_age_ms, k.concurrency_prefix,
                                  k.concurrency_wait_prefix]
        for op in ops:
            args += [op.entry, op.job_id, op.outcome, op.payload, op.number, op.history,
                     op.lease]
        return (s.load(s.SETTLE), [k.stream, k.delayed, k.dead, k.stats, k.waiting,
                                      k.ended, k.concurrency_limits], args)

    async def reclaim(
        self, consumer: str, min_idle_ms: int, count: int, cursor: str = "0-0"
    ) -> tuple[str, list[Delivery]]:
        """XAUTOCLAIM idle entries; returns the next cursor and the claimed deliveries.
        Raises Redis's refusal to scan the stream."""
        got = await reclaim_levels([self], consumer, min_idle_ms, count, [cursor])
        if got.errors:
            raise ResponseError(got.errors[0][1])
        return got.cursors[0], [d for _, d in got.rows]

    async def touch(
        self, consumer: str, held: Sequence[Delivery], lease_ms: int = 15_000
    ) -> tuple[list[str], list[str]]:
        """Refresh held entries and renew their jobs' concurrency leases to ``lease_ms``
        from now; returns (lost entry ids, job ids whose abort was requested)."""
        script, keys, args = self.touch_call(consumer, held, lease_ms)
        return touched(await script(self.client, keys, args))

    def touch_call(self, consumer: str, held: Sequence[Delivery], lease_ms: int = 15_000
                   ) -> s.Call:
        """The touch.lua call of ``touch``, to pipeline with other queues' (its reply read
        by ``touched``)."""
        args: list[s.KeyOrArg] = [GROUP, consumer, self.keys.job_prefix,
                                  self.keys.concurrency_prefix, lease_ms]
        for d in held:
            args += [d.entry, d.job_id]
        return s.load(s.TOUCH), [self.keys.stream], args

    async def handback(self, consumer: str, keep: Sequence[str], most: int = 1000
                       ) -> tuple[int, int]:
        """Hand back up to ``most`` held entries, all but ``keep`` (releasing their
        concurrency leases); deletes the consumer once it holds nothing. Returns (handed
        back, still held and not kept)."""
        k = self.keys
        args: list[s.KeyOrArg] = [GROUP, consumer, k.job_prefix, most, k.concurrency_prefix,
                                  k.concurrency_wait_prefix, *keep]
        moved, left = await s.load(s.HANDBACK)(
            self.client, [k.stream, k.delayed, k.concurrency_limits], args)
        return int(moved), int(left)

    async def promote(self, limit: int, expired_ttl_s: int,
                      dead_letters: DeadLetterLimits | None = None) -> Promoted:
        """Move up to ``limit`` due jobs into the stream."""
        k = self.keys
        limits = dead_letters or DeadLetterLimits()
        args: list[s.KeyOrArg] = [k.job_prefix, limit, k.done_channel(""), expired_ttl_s,
                                  k.minute_prefix, limits.most, limits.max_age_ms,
                                  k.concurrency_wait_prefix]
        p, e, nxt, now = await s.load(s.PROMOTE)(self.client,
                                                 [k.stream, k.delayed, k.stats, k.dead,
                                                  k.ended], args)
        return Promoted(int(p), int(e), None if int(nxt) < 0 else int(nxt), int(now))

    async def abort(self, job_id: str, record_ttl_s: int) -> str:
        """Abort a job; returns its state before the call, or 'missing'."""
        k = self.keys
        keys = [k.job(job_id), k.stream, k.delayed, k.stats, k.ended, k.concurrency_limits]
        args: list[s.KeyOrArg] = [job_id, k.done_channel(job_id), k.abort_channel, record_ttl_s,
                                  k.concurrency_wait_prefix, k.concurrency_prefix]
        return reply_text(await s.load(s.ABORT)(self.client, keys, args))

    async def cron_tick(
        self, name: str, tick_ms: int, job_id: str, spec: bytes, *, fire: bool, no_overlap: bool
    ) -> str:
        """Enqueue a cron tick (or only advance the cursor); see cron.lua for the replies."""
        k = self.keys
        keys = [k.cron, k.job(job_id), k.stream, k.stats]
        args: list[s.KeyOrArg] = [name, tick_ms, "fire" if fire else "advance", job_id, spec,
                                  int(no_overlap), k.job_prefix]
        return reply_text(await s.load(s.CRON)(self.client, keys, args))

    async def cron_reset(self, name: str, read: bytes, tick_ms: int) -> str:
        """Set a cron job's cursor back to ``tick_ms`` if it still holds ``read`` (one
        ``cron.read_cursor`` found unusable); 'reset', or 'stale' if it changed meanwhile."""
        k = self.keys
        keys = [k.cron, k.job(""), k.stream, k.stats]
        args: list[s.KeyOrArg] = [name, tick_ms, "reset", read, b"", 0, k.job_prefix]
        return reply_text(await s.load(s.CRON)(self.client, keys, args))

    async def cron_cursors(self) -> dict[str, bytes]:
        """Each cron job's cursor (the last tick handled, in ms) as the cron hash holds it:
        ``cron.read_cursor`` tells whether it can be used. A cron hash of the wrong type is
        a ResponseError naming the key."""
        try:
            raw: dict[bytes, bytes] = await self.client.hgetall(self.keys.cron)  # type: ignore[assignment]
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            raise ResponseError(f"WRONGTYPE the cron hash {self.keys.cron} holds another type "
                                "than a hash: delete or rename it") from None
        # Fields '<name>:job' hold the last tick's job id; the others are cursors.
        return {text: v for k, v in raw.items()
                if not (text := reply_text(k)).endswith(":job")}

    async def progress(self, job_id: str, data: bytes, consumer: str) -> bool:
        """Record a running attempt's progress; False if the job no longer runs here."""
        keys: list[s.KeyOrArg] = [self.keys.job(job_id)]
        return bool(await s.load(s.PROGRESS)(self.client, keys, [data, consumer]))

    async def purge_dead(self, letters: Sequence[tuple[str, str]]) -> int:
        """Delete dead letters (entry id, job id) and the records still dead as that letter."""
        args: list[s.KeyOrArg] = [self.keys.job_prefix]
        for entry, job_id in letters:
            args += [entry, job_id]
        return int(await s.load(s.PURGE)(self.client, [self.keys.dead], args))

    async def prune_consumers(self, min_idle_ms: int, keep: str) -> int:
        """Delete consumers idle for ``min_idle_ms`` that hold nothing; returns how many."""
        args: list[s.KeyOrArg] = [GROUP, min_idle_ms, keep]
        return int(await s.load(s.PRUNE)(self.client, [self.keys.stream], args))

    async def requeue(self, job_id: str) -> str:
        """Requeue a dead-lettered job; see requeue.lua for the replies."""
        k = self.keys
        reply = await s.load(s.REQUEUE)(self.client, [k.job(job_id), k.stream, k.dead], [job_id])
        return reply_text(reply)
