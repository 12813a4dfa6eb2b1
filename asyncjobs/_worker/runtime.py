"""Shared state of a running worker: its connections, its queues, its slots, and the outage
tracker that every loop reports to (so an outage is logged once, not once per loop)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._redis.access import RedisAccessDenied
from .._redis.cluster import CLUSTER_OUTAGE
from .._redis.connection import pool_exhausted
from .._redis.refusals import corrupt_key, not_now
from .._redis.store import QueueStore

if TYPE_CHECKING:
    from .._producer.pool import Pool
    from .._task import Task
    from .config import WorkerConfig

log = logging.getLogger("asyncjobs.worker")

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, *CLUSTER_OUTAGE)
"""Errors that mean "Redis is unreachable right now" (or a cluster's slot is moving):
retry with backoff."""



def transient(exc: BaseException) -> bool:
    """True for an outage, or a reply saying Redis cannot serve right now (a replica after a
    failover, a server loading its data, a busy script, out of memory, a failing disk: the
    codes of ``refusals.NOT_NOW``, the producer's too): retry later."""
    return isinstance(exc, OUTAGE_ERRORS) or not_now(exc)


async def supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run one of the worker's loops. An outage is handled inside each loop; anything else
    escaping it is a bug: log it with its traceback and start the loop again after a pause
    (growing to 30 s), so the worker neither dies nor spins. Redis refusing the worker's
    user (an ACL that lost a command, a password changed: ``RedisAccessDenied``) is no
    bug: logged in one line naming it, and retried the same way."""
    pause = 1.0
    while True:
        try:
            await loop()
            return
        except Exception as exc:
            if corrupt_key(exc):  # a data problem, stated by the script: no traceback
                log.error("the %s loop cannot go on: %s; retrying in %.0f s", name,
                          corrupt_key(exc), pause)
            elif isinstance(exc, RedisAccessDenied):  # Redis's ACL or password: no traceback
                log.error("the %s loop cannot go on: %s; retrying in %.0f s", name, exc,
                          pause)
            else:
                log.exception("internal error in the %s loop; restarting it in %.0f s", name,
                              pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)


def refused_for_now(errors: Sequence[tuple[int, str]]) -> ResponseError | None:
    """The first of a script's per-level errors that is Redis refusing writes for now
    (MISCONF, READONLY...: its server's state, not the level's keys), if any: an outage for
    the whole worker, not a queue to leave alone."""
    for _, why in errors:
        if transient(refusal := ResponseError(why)):
            return refusal
    return None


def refused(exc: BaseException) -> bool:
    """Redis refused a read of one queue's keys for what they hold (wrong type, corrupt),
    not for an outage (BUSY, READONLY, ...) or a missing consumer group."""
    return (isinstance(exc, ResponseError) and "NOGROUP" not in str(exc)
            and not transient(exc))


class Slots:
    """Counts free job slots; the fetchers take them in batches, jobs give them back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._changed = asyncio.Event()

    async def take_some(self, most: int) -> int:
        """Wait for at least one free slot, then take up to ``most`` of them."""
        while self.free == 0:
            self._changed.clear()
            await self._changed.wait()
        taken = min(self.free, most)
        self.free -= taken
        return taken

    def take_now(self, most: int) -> int:
        """Take up to ``most`` free slots without waiting (possibly none)."""
        taken = min(self.free, most)
        self.free -= taken
        return taken

    def give(self, count: int = 1) -> None:
        """Return slots."""
        if count:
            self.free += count
            self._changed.set()

    @property
    def busy(self) -> int:
        """Slots in use."""
        return self.size - self.free


class Outage:
    """Tracks Redis reachability for the whole worker; logs once per outage."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.recovered_at = 0.0
        self._failures = 0

    def failed(self, exc: BaseException, where: str) -> float:
        """Record a failure; returns how long the caller should back off (seconds)."""
        if pool_exhausted(exc):  # Redis is fine: every connection is busy (tasks using ctx.pool)
            log.warning("connection pool exhausted (%s); retrying: tasks hold the worker's "
                        "connections too long, or concurrency is too high for them", where)
            return 0.05 + random.random() * 0.1
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("redis unavailable (%s: %s); retrying with backoff", where, exc)
        self._failures += 1
        return float(min(5.0, 0.1 * 2.0 ** min(self._failures, 6)) * (0.5 + random.random() / 2))

    def ok(self) -> None:
        """Record a success; logs recovery once."""
        if self.down_since is not None:
            log.warning("redis reachable again after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
            self.recovered_at = time.monotonic()
        self._failures = 0

    def recent(self, within_s: float) -> bool:
        """True while Redis is down, or came back less than ``within_s`` ago."""
        if self.down_since is not None:
            return True
        return time.monotonic() - self.recovered_at < within_s


@dataclass
class Runtime:
    """Everything the worker's loops share while it runs."""

    config: WorkerConfig
    tasks: dict[str, Task[Any, Any]]
    client: Redis
    blocking: Redis
    stores: dict[str, QueueStore]
    consumer: str
    pool: Pool
    state: Any = None
    outage: Outage = field(default_factory=Outage)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to stop taking jobs and drain."""
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to cut the drain's grace period short (a second interrupt)."""
    broken: str = ""
    """Why the worker cannot trust its own machinery, if it cannot: a job's code (task code
    that cancels every asyncio task) cancelled the worker's own tasks. It then stops at
    once, and hands back every job but that one, which stays pending, as a killed worker's
    jobs do, and runs again after the claim timeout, its delivery counted
    (``serving._cut_short``, ``shutdown._broken_wrap_up``)."""
    suspects: dict[tuple[str, str], str] = field(default_factory=dict)
    """When ``broken`` was found: the (queue, entry) and job id of that job's attempt, if it
    still ran then. It is left pending."""
    undrained: str = ""
    """Burst mode: why the run ended with a queue not drained, if it did (a key of one of
    its queues that Redis refuses to read: a stream holding a string, say). ``run`` then
    raises ``NotDrained`` saying so, once everything else is drained and settled."""
    unrecordable: dict[str, str] = field(default_factory=dict)
    """Queues (levels) whose settle Redis refused for a key of the wrong type, and why: their
    jobs ran but stay pending. Burst mode counts them as not drained."""
    stopped_at: float = 0.0
    """When the drain began (``time.monotonic()``; 0 before): its grace counts from then."""
    touch_now: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to run the keep-alive at once: its touch also finds aborts requested while no
    abort notice could reach this worker (before its pub/sub was subscribed, or while it
    was cut off)."""
    fetch_beat: dict[str, float] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    crons: list[dict[str, Any]] = field(default_factory=list)
    """The cron jobs this worker schedules, as published in the registry."""
    fleet_claim_timeout_s: float | None = None
    """The largest claim timeout a live worker of the prefix declares, this one's included
    (its last heartbeat's answer, beat.lua); None before its first heartbeat."""
    fleet_least_claim_s: float | None = None
    """The smallest one, likewise (None: this worker's own, as far as it knows)."""

    def __post_init__(self) -> None:
        now = time.monotonic()
        self.fetch_beat = dict.fromkeys(self.stores, now)

    @property
    def keepalive_every_s(self) -> float:
        """Held entries are refreshed this often: a sixth of the smallest claim timeout a
        live worker declares (this one's until it has heard), so that a worker that takes
        over entries idle for half of its own never finds one of ours idle that long."""
        least = self.fleet_least_claim_s or self.config.claim_timeout_s
        return min(least, self.config.claim_timeout_s) / 6

    def bulk_limit(self) -> int | None:
        """Redis's ``proto-max-bulk-len`` as last read (``Pool._largest_value``, at most once
        a minute: by the settler, or by an enqueue of a large job through ``ctx.pool``); None
        until it is read. A value larger than it cannot be sent: Redis refuses the whole
        call carrying it (and drops the connection)."""
        return self.pool._bulk_most

    @property
    def lease_ms(self) -> int:
        """How long a concurrency lease lasts unless renewed: the claim timeout, so a dead
        worker's slots come back within it (the keep-alive renews every sixth of it)."""
        return round(self.config.claim_timeout_s * 1000)

    def fetching(self, within_s: float) -> bool:
        """True if every fetch loop made progress (or waited for slots) within ``within_s``."""
        now = time.monotonic()
        return bool(self.fetch_beat) and all(now - t < within_s for t in self.fetch_beat.values())
