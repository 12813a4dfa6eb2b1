"""One running relay: lead (lease), drain the table in batches, sleep until woken, repeat.

A batch: claim up to ``batch_size`` pending rows; turn each into its job (``_rows``); write
the jobs of each queue with ``Pool.write_jobs`` (one pipelined round trip per queue, dedup by
job id); then delete the rows, or mark them relayed (``keep``), and mark the rows that could
not be moved as failed with their reason. On PostgreSQL all of it is one transaction that
holds the rows' locks; on SQLite the read and the marking are two short transactions and no
lock is held while Redis is written. A relay that dies anywhere in a batch leaves its rows
pending: the next relay writes them again and Redis, seeing their job ids, creates nothing.

Correctness never depends on the lease; it only keeps the other workers from doing the work
twice (and from holding a listening connection each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

from redis.exceptions import RedisError, ResponseError
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from .._producer.pool import Pool
from .._redis.access import CommandDenied, RedisAccessDenied
from .._redis.values import NewJob
from .._scheduling.leader import Lease
from .._text import clean, safe_str
from .._worker.runtime import transient
from ..exceptions import EnqueueError, PoolClosed, PoolExhausted, RedisUnavailable
from ._db import Claimed, ConnectFailed, OutboxStore, Outcome, UnusableDatabase, connected
from ._rows import BadRow, to_job
from ._schema import channel
from ._wake import Listener

log = logging.getLogger("asyncjobs.outbox")

_MIN_PAUSE_S = 0.05  # a relay that does not lead never retries the lease faster than this
_FULL_PAUSE_S = (0.5, 5.0)  # a full queue's rows are tried again after this, doubling


@dataclass(frozen=True)
class Settings:
    """What a relay loop needs of its ``Relay``."""

    store: OutboxStore
    batch_size: int
    keep_ms: int
    poll_s: float | None
    queues: frozenset[str] | None
    lease_key: str | None
    lease_ttl_s: float


class RelayLoop:
    """One relay at work on one engine and one pool, until ``stopped`` is set."""

    def __init__(self, settings: Settings, engine: AsyncEngine, pool: Pool, holder: str,
                 stopped: asyncio.Event) -> None:
        self.s = settings
        self.engine = engine
        self.pool = pool
        self.stopped = stopped
        self.wake = asyncio.Event()
        self.listener = Listener(engine, channel(settings.store.table), self.wake)
        self.lease = (Lease(pool.client, settings.lease_key, settings.lease_ttl_s, holder)
                      if settings.lease_key else None)
        self.locking = engine.dialect.name != "sqlite"
        self.relayed = 0
        self.failed = 0
        self._failures = 0
        self._down_since: float | None = None
        self._down: set[str] = set()  # what failed since: 'redis', 'the database'
        self._next_purge = 0.0
        self._poll_at = 0.0  # the table is read when woken, or at this time (monotonic)
        self._full: dict[str, tuple[float, float]] = {}  # queue -> (retry at, pause)

    async def run(self) -> None:
        """Relay until stopped; errors are logged and retried with backoff, never raised,
        but for ``UnusableDatabase`` (a database URL its driver refuses) and a Redis URL
        Redis refuses (its password, its database number: ``RedisAccessDenied``): no retry
        can help. A command the Redis user may not run (an ACL) is retried, as Redis
        refusing any write: it can be granted while the relay waits. A relay whose pool
        was closed under it stops, with one line."""
        try:
            while not self.stopped.is_set():
                try:
                    await self._step()
                except UnusableDatabase:
                    raise
                except RedisAccessDenied as exc:
                    if not isinstance(exc, CommandDenied):
                        raise
                    await self._failed(exc)
                except PoolClosed:
                    log.warning("outbox relay stops: its pool was closed")
                    return
                except Exception as exc:
                    await self._failed(exc)
        finally:
            await self.listener.close()
            if self.lease is not None and self.lease.held:
                with contextlib.suppress(Exception):
                    await self.pool.once(self.lease.release)

    async def _step(self) -> None:
        """Lead; read the table when woken (a notice, a new lease) or when the poll interval
        is up, not at every renewal of the lease; then sleep until one of them is due."""
        self.pool._check_open()  # its lease would go on through a client connected again
        if not await self._lead():
            return
        if self.wake.is_set() or time.monotonic() >= self._poll_at:
            self.wake.clear()
            await self.drain()
            self._poll_at = time.monotonic() + self._poll_s()
        await self._purge_if_due()
        self._recovered()
        await self._sleep(self.wake, self._idle_s())

    async def _lead(self) -> bool:
        """Take or renew the lease (when there is one); True if this relay may act."""
        lease = self.lease
        if lease is not None:
            if not lease.held:
                if not await self.pool.once(lease.acquire):
                    wait = min(max(await self.pool.once(lease.remaining_s) + 0.005,
                                   _MIN_PAUSE_S),
                               lease.ttl_s / 3)
                    self._recovered(redis_only=True)  # Redis answers; another relay leads
                    await self._sleep(self.stopped, wait)
                    return False
                log.info("outbox relay leads (lease %s)", lease.key)
                self._poll_at = 0.0  # rows may have waited for a leader: read them now
            if time.monotonic() >= lease.renew_at and not await self.pool.once(lease.renew):
                log.warning("outbox relay lost its lease %s", lease.key)
                await self.listener.close()
                return False
        await self.listener.open()
        return True

    def _poll_s(self) -> float:
        """How long the table may go unread without a wake: ``poll``, else 1 s while
        NOTIFY is heard and 0.05 s without it."""
        if self.s.poll_s is not None:
            return self.s.poll_s
        return 1.0 if self.listener.listening else 0.05

    def _idle_s(self) -> float:
        """How long to sleep: until the next poll, or the lease's renewal if sooner."""
        wait = self._poll_at
        if self.lease is not None:
            wait = min(wait, self.lease.renew_at)
        return max(0.0, wait - time.monotonic())

    async def drain(self) -> int:
        """Relay batches until one comes back short (or the lease is lost); returns the
        number of rows handled (relayed or failed; not those a full queue left pending)."""
        before = self.relayed + self.failed
        while not self.stopped.is_set():
            if self.lease is not None and time.monotonic() >= self.lease.renew_at:
                await self.pool.once(self.lease.renew)
            if self.lease is not None and not self.lease.held:
                break
            if await self.batch() < self.s.batch_size:
                break
        return self.relayed + self.failed - before

    async def batch(self) -> int:
        """Claim, write and mark one batch; returns its size. The rows of a queue found
        full stay pending, and are left out of the batches claimed until it is tried again."""
        keep = self.s.keep_ms > 0
        now = time.monotonic()
        skip = {queue for queue, (retry_at, _) in self._full.items() if retry_at > now}
        if self.locking:  # the rows stay locked until the marks commit
            async with connected(self.engine, begin=True) as conn:
                claimed = await self.s.store.claim(conn, skip)
                if claimed.rows:
                    outcome = await self._move(claimed)
                    await self.s.store.mark(conn, outcome, keep)
        else:
            async with connected(self.engine, begin=False) as conn:
                claimed = await self.s.store.claim(conn, skip)
            if claimed.rows:
                outcome = await self._move(claimed)
                async with connected(self.engine, begin=True) as conn:
                    await self.s.store.mark(conn, outcome, keep)
        if claimed.rows:
            self._count(outcome)
        return len(claimed.rows)

    async def _move(self, claimed: Claimed) -> Outcome:
        """Write the batch's jobs to Redis, per queue; what became of each row."""
        outcome = Outcome()
        by_queue: dict[str, list[tuple[int, NewJob]]] = {}
        most = await self.pool._largest_value()
        for row in claimed.rows:
            outcome.read(row)
            try:
                queue, job = to_job(row, claimed.now_ms, self.s.queues)
            except BadRow as exc:
                outcome.failed[row.row_id] = str(exc)
                continue
            if len(job.spec) > most:
                outcome.failed[row.row_id] = (
                    f"the job is larger than Redis takes: {len(job.spec):,} bytes, over its "
                    f"proto-max-bulk-len of {most:,}")
                continue
            by_queue.setdefault(queue, []).append((row.row_id, job))
        for queue, items in by_queue.items():
            await self._write(queue, items, outcome)
        return outcome

    async def _write(self, queue: str, items: list[tuple[int, NewJob]],
                     outcome: Outcome) -> None:
        """Write one queue's jobs of the batch and record what became of their rows.

        An outage, or any error that is not Redis refusing a job (a failover's READONLY, a
        full disk, a key of ours of the wrong type, an ACL), raises: the whole batch stays
        pending and is retried. A write Redis answers with a protocol error (a value over
        ``proto-max-bulk-len`` that the check before the write did not catch: the limit
        lowered since it was read) is tried again job by job, so that only the job at
        fault fails; the others' second write is a no-op where the first one took them
        (dedup by job id)."""
        try:
            existing = await self.pool.write_jobs(queue, [job for _, job in items])
        except ResponseError as exc:
            if not str(exc).startswith("Protocol error"):
                raise
            if len(items) > 1:
                for item in items:
                    await self._write(queue, [item], outcome)
            else:
                outcome.failed[items[0][0]] = f"Redis refused the job: {safe_str(exc, 500)}"
            return
        most = ""  # the queue's maximum length when it refused a job
        for index, (row_id, _) in enumerate(items):
            state = existing.get(index, "")
            if state.startswith("full: "):  # at the queue's maximum length: the row waits
                most = state[6:]
            elif state.startswith("error: ") and _cannot_write(state[7:]):
                raise RedisFullError(state[7:])  # not the row's fault: the batch waits
            elif state.startswith("error: "):
                outcome.failed[row_id] = f"Redis refused the job: {state[7:]}"
            else:
                outcome.relayed.append(row_id)
        if most:
            self._queue_full(queue, most)
        elif self._full.pop(queue, None) is not None:
            log.warning("outbox relay: queue %r takes jobs again", queue)

    def _queue_full(self, queue: str, most: str) -> None:
        """``queue`` refused a row for its maximum length: its rows stay pending, left out
        of the next batches until they are tried again (after a pause that doubles)."""
        was = self._full.get(queue)
        if was is None:
            log.warning("outbox relay: queue %r is full (max %s jobs): its rows stay pending "
                        "and are retried; other queues' rows go on", queue, clean(most))
        pause = _FULL_PAUSE_S[0] if was is None else min(was[1] * 2, _FULL_PAUSE_S[1])
        self._full[queue] = (time.monotonic() + pause, pause)

    def _count(self, outcome: Outcome) -> None:
        self.relayed += len(outcome.relayed)
        self.failed += len(outcome.failed)
        for row_id, reason in outcome.failed.items():
            log.warning("outbox row %d failed: %s", row_id, clean(reason))
        log.debug("outbox relayed %d row(s), %d failed", len(outcome.relayed),
                  len(outcome.failed))

    async def _purge_if_due(self) -> None:
        if self.s.keep_ms <= 0 or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + min(60.0, max(1.0, self.s.keep_ms / 2000))
        while not self.stopped.is_set():
            async with connected(self.engine, begin=True) as conn:
                purged = await self.s.store.purge(conn, self.s.keep_ms)
            if purged:
                log.info("outbox purged %d relayed row(s)", purged)
            if purged < 10_000:
                break

    async def _sleep(self, event: asyncio.Event, seconds: float) -> None:
        """Wait up to ``seconds`` for ``event``, or until stopped."""
        if seconds <= 0 or self.stopped.is_set():
            return
        waits = {asyncio.ensure_future(self.stopped.wait())}
        if event is not self.stopped:
            waits.add(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _failed(self, exc: Exception) -> None:
        self._poll_at = 0.0  # after the pause, the batch is tried again at once
        if self.lease is not None:
            self.lease.drop()
        await self.listener.close()
        what = _unavailable(exc)
        self._failures += 1
        if what:
            self._down.add(what)
        cap = 5.0 if what else 30.0
        pause = min(cap, 0.1 * 2.0 ** min(self._failures, 9)) * (0.5 + random.random() / 2)
        if what and self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("outbox relay: %s unavailable (%s); retrying with backoff", what,
                        safe_str(exc, 500))
        elif isinstance(exc, CommandDenied):  # an ACL: granted meanwhile, it works again
            log.error("outbox relay: %s; retrying in %.1f s", exc, pause)
        elif isinstance(exc, ConnectFailed):  # user code's error: its traceback helps
            log.error("outbox relay: %s; retrying in %.1f s", exc, pause,
                      exc_info=exc.__cause__)
        elif isinstance(exc, sa_exc.DBAPIError) and not what:
            log.error("outbox relay: the database refused: %s; retrying in %.1f s",
                      clean(safe_str(exc.orig, 500)), pause)
        elif not what:
            log.exception("outbox relay: internal error; retrying in %.1f s", pause)
        await self._sleep(self.stopped, pause)

    def _recovered(self, *, redis_only: bool = False) -> None:
        """A step succeeded: an outage is over. ``redis_only``: only Redis answered (another
        relay leads, or this relay's own lease, dropped at the failure, has not expired
        yet): that ends an outage of Redis, not one of the database, which nothing has
        used since."""
        if redis_only:
            self._down.discard("redis")
            if self._down:
                return
        self._down.clear()
        self._failures = 0
        if self._down_since is not None:
            log.warning("outbox relay working again after %.1f s",
                        time.monotonic() - self._down_since)
            self._down_since = None


class RedisFullError(Exception):
    """Redis cannot write now (out of memory, a replica after a failover, a failing disk,
    ...): the batch stays pending and is retried."""


# Replies by which Redis refuses any write for now, not this job: the batch waits. WRONGTYPE:
# a key of ours (the queue's stream or delayed set, the registry of queues) holds something
# else; a job's own key of the wrong type is refused in other words, and fails its row.
_CANNOT_WRITE = ("OOM", "READONLY", "MISCONF", "NOPERM", "LOADING", "BUSY", "MASTERDOWN",
                 "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN", "WRONGTYPE")


def _cannot_write(reason: str) -> bool:
    return reason.startswith(_CANNOT_WRITE) or "maxmemory" in reason or (
        "read only replica" in reason)


def _unavailable(exc: BaseException) -> str:
    """'redis' or 'the database' when ``exc`` means it cannot serve now; '' otherwise."""
    if isinstance(exc, sa_exc.DBAPIError):
        lost = exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError
                                                        | sa_exc.InterfaceError)
        return "the database" if lost else ""
    if isinstance(exc, RedisUnavailable | PoolExhausted | EnqueueError | RedisFullError) or (
            isinstance(exc, RedisError) and transient(exc)) or (
            isinstance(exc, ResponseError) and _cannot_write(str(exc))):
        return "redis"
    if isinstance(exc, OSError | TimeoutError):  # a database driver's own connection error
        return "the database"
    return ""
