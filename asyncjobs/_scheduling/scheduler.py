"""The scheduler of one queue: promotes due delayed jobs and enqueues cron ticks, but only
while this worker holds the queue's leader lease.

Every worker runs it; one leads. Correctness never depends on the lease: promotion is one
atomic script and each cron tick goes in under a deterministic job id behind a cursor that
only moves forward, so two leaders overlapping for a moment still run nothing twice. The
lease only saves work. The leader sleeps until the earliest due time or cron tick, and a
pub/sub wake-up cuts the sleep short when an earlier job arrives. Now and then the leader
also puts back the scheduled jobs a delayed set lost (see ``repair``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence

from redis.exceptions import ResponseError

from .._model import ENDED_TTL_S, from_ms, to_ms
from .._redis.keys import VACATED
from .._redis.store import QueueStore, reschedule_levels, revive_levels
from .._redis.values import Orphan
from .._text import clean
from .._worker.runtime import Runtime, refused, transient
from .cron import next_fire, plan_ticks, read_cursor, tick_id
from .declare import CronJob
from .leader import Lease
from .repair import STEP_COUNT, Repair

log = logging.getLogger("asyncjobs.scheduler")

_PROMOTE_BATCH = 1000
_MIN_PAUSE_S = 0.05  # a non-leader never retries the lease faster than this
_PRUNE_EVERY_S = 300.0
_PRUNE_IDLE_MS = 3600 * 1000


class Scheduler:
    """Leader election, promotion and cron for one queue and its priority levels, under one
    lease (the queue's own). ``crons`` pairs each cron job with the queue (level) it
    enqueues to, one of ``queues``, which must include ``queue``."""

    def __init__(self, rt: Runtime, queue: str, queues: Sequence[str],
                 crons: Sequence[tuple[CronJob, str]], wake: asyncio.Event,
                 vacated: asyncio.Event | None = None):
        self.rt = rt
        self.queue = queue
        self.crons = list(crons)
        self.wake = wake
        self.vacated = vacated or asyncio.Event()
        """Set when the leader said it gave the lease up (``VACATED`` on the wake channel):
        cuts a non-leader's wait for the lease short. Only this scheduler clears it."""
        self.store = rt.stores[queue]
        self.stores = [rt.stores[q] for q in queues]
        self.lease = Lease(rt.client, self.store.keys.leader, rt.config.lease_ttl_s,
                           holder=rt.consumer, vacated=(self.store.keys.wake_channel, VACATED))
        self._next_prune = time.monotonic() + 60.0
        self._now_ms, self._now_at = 0, 0.0
        self._cron_at = 0.0
        self._pauses: dict[str, float] = {}
        """Per level whose keys Redis refuses: the last pause (promotion; see ``_refused``)."""
        self._cron_pauses: dict[str, float] = {}
        self._cron_held: dict[str, float] = {}
        """Per queue whose cron hash Redis refuses: the last pause, and until when (monotonic)
        its cron jobs wait: a promotion that makes the others run does not cut it short."""
        self._next_check = [0.0] * len(self.stores)
        """When each level's delayed set is next promoted (monotonic): when something there
        is due, after a wake-up, and at least once per lease period (a wake-up is lost only
        with the pub/sub connection, and its return sets the wake event anyway)."""
        self.repair = Repair()
        """When the delayed sets are next checked against the job records, and how far."""

    async def run(self) -> None:
        """Run until the worker stops (the lease is released by ``release``)."""
        while not self.rt.stopping.is_set():
            try:
                await self._step()
            except Exception as exc:
                if not transient(exc):
                    raise
                self.lease.drop()
                await self._pause(self.rt.outage.failed(exc, f"scheduler {self.queue}"))

    async def release(self) -> None:
        """Give up leadership so another worker takes over at once (at shutdown). Redis
        unreachable, or refusing commands for now (BUSY, READONLY, LOADING...), is no reason
        to fail the shutdown: the lease is dropped here and expires on its own."""
        if self.lease.held:
            try:
                await self.lease.release()
            except Exception as exc:
                self.lease.drop()
                if not transient(exc):
                    raise
                log.info("scheduler of queue %s could not give its lease up (%s); it "
                         "expires within %g s", self.queue, clean(str(exc)[:200]),
                         self.lease.ttl_s)

    async def _step(self) -> None:
        if not self.lease.held:
            self.vacated.clear()  # a notice from now on is about the lease seen below
            if not await self.lease.acquire():
                # Try again when the holder's lease expires, or at once when it says it
                # gave the lease up: an idle follower costs two commands per lease period.
                remaining = await self.lease.remaining_s()
                await self._await_vacancy(min(max(remaining + 0.005, _MIN_PAUSE_S),
                                              self.lease.ttl_s))
                return
            log.info("scheduler leads queue %s", self.queue)
            self._next_check = [0.0] * len(self.stores)  # a new leader checks every level
            self.repair.lead(time.monotonic())
        if time.monotonic() >= self.lease.renew_at and not await self.lease.renew():
            log.warning("scheduler lost the lease of queue %s", self.queue)
            return
        if self.wake.is_set():  # an earlier due time somewhere: check every level
            self._next_check = [0.0] * len(self.stores)
        self.wake.clear()
        wait_s = await self._act()
        await self._sleep(min(wait_s, max(0.0, self.lease.renew_at - time.monotonic())))

    async def _act(self) -> float:
        """Promote due jobs and fire due cron ticks; returns seconds until the next due."""
        wait = math.inf
        own_checked = False
        for i, store in enumerate(self.stores):
            if time.monotonic() < self._next_check[i]:
                # Nothing due on this level yet (a wake-up would have said otherwise)
                wait = min(wait, self._next_check[i] - time.monotonic())
                continue
            try:
                due = await self._promote(store)
            except ResponseError as exc:
                if not refused(exc):
                    raise
                # One level's keys are refused (a key of the wrong type): the other levels
                # and the cron jobs go on; this one is tried again later.
                self._next_check[i] = time.monotonic() + self._refused(store, exc)
                continue
            self._pauses.pop(store.keys.queue, None)
            if due is None:
                return 0.0
            # Checked again when due, when woken, and at least once per lease period: a
            # lost wake-up costs little.
            own_checked = own_checked or store is self.store
            self._next_check[i] = time.monotonic() + min(due, self.lease.ttl_s)
            wait = min(wait, due)
        if self.crons and not self.rt.config.burst:
            # at the queue's own cadence, or when a tick is due
            if own_checked or time.monotonic() >= self._cron_at:
                self._cron_at = time.monotonic() + await self._cron()
            wait = min(wait, self._cron_at - time.monotonic())
        if self.lease.held:  # the delayed sets against the job records, now and then
            if self.repair.next_at() <= time.monotonic():
                wait = min(wait, await self._repair())
            else:
                wait = min(wait, self.repair.next_at() - time.monotonic())
        if time.monotonic() >= self._next_prune and self.lease.held:
            self._next_prune = time.monotonic() + _PRUNE_EVERY_S
            for store in self.stores:
                try:
                    pruned = await store.prune_consumers(_PRUNE_IDLE_MS, self.rt.consumer)
                except ResponseError as exc:
                    if not refused(exc):
                        raise
                    continue
                if pruned:
                    log.info("removed %d idle consumer(s) of stopped workers from queue %s",
                             pruned, store.keys.queue)
        return max(0.0, wait)

    async def _promote(self, store: QueueStore) -> float | None:
        """Promote a level's due jobs; seconds until its next due (inf: none), or None if
        the lease was lost on the way."""
        handled = 0
        while True:
            if not self.lease.held:
                return None
            done = await store.promote(_PROMOTE_BATCH, ENDED_TTL_S, self.rt.config.dead_letters)
            if done.expired:
                log.info("expired %d job(s) on queue %s before they were due to start",
                         done.expired, store.keys.queue)
            handled += done.promoted + done.expired
            if done.promoted + done.expired < _PROMOTE_BATCH:
                break
        self.repair.promoted(store.keys.queue, done.next_due_ms, done.now_ms, handled)
        # Redis's clock, for the cron ticks that follow (moved on by our own clock when no
        # promotion ran in a step)
        self._now_ms, self._now_at = done.now_ms, time.monotonic()
        if done.next_due_ms is None:
            return math.inf
        return (done.next_due_ms - done.now_ms) / 1000

    async def _repair(self) -> float:
        """One step of the delayed sets' repair (``repair``); seconds until the next."""
        cursor = self.repair.begin(time.monotonic())
        try:
            step = await reschedule_levels(self.stores, cursor, STEP_COUNT)
        except ResponseError as exc:
            if not refused(exc):
                raise
            self.repair.stepped("0", 0, time.monotonic())  # this pass is given up
            log.error("scheduler of queue %s cannot check its delayed sets against the job "
                      "records (%s); trying again later", self.queue, clean(str(exc)[:300]))
            return max(0.0, self.repair.next_at() - time.monotonic())
        if step.restored:  # jobs of a delayed set deleted by hand: promote what is due now
            self._next_check = [0.0] * len(self.stores)
        self.repair.orphaned(step.orphans)
        if not self.repair.stepped(step.cursor, step.restored, time.monotonic(),
                                   step.requeued):
            return 0.0  # the next step at once
        if self.repair.confirmed:
            await self._revive(self.repair.confirmed)
        if self.repair.restored:
            log.warning("put back %d scheduled job(s) missing from the delayed sets of queue "
                        "%s", self.repair.restored, self.queue)
        if self.repair.requeued:
            log.warning("put back %d queued job(s) that the streams of queue %s would not "
                        "hand to a worker (their entries deleted, trimmed or acknowledged)",
                        self.repair.requeued, self.queue)
        return 0.0 if step.restored else max(0.0, self.repair.next_at() - time.monotonic())

    async def _revive(self, orphans: frozenset[Orphan]) -> None:
        """Put back the running jobs two passes found orphaned that no live worker keeps
        (their record untouched for the fleet's claim timeout); see reschedule.lua. Their
        attempt counts as used, as after any crash."""
        claim_ms = round(max(self.rt.config.claim_timeout_s,
                             self.rt.fleet_claim_timeout_s or 0.0) * 1000)
        try:
            revived = await revive_levels(
                self.stores, sorted(orphans, key=lambda o: (o.level, str(o.job_id))), claim_ms)
        except ResponseError as exc:
            if not refused(exc):
                raise
            log.error("scheduler of queue %s cannot put back the running jobs no worker "
                      "keeps (%s); trying again later", self.queue, clean(str(exc)[:300]))
            return
        if revived:
            log.warning("put back %d running job(s) of queue %s that no worker keeps and "
                        "whose stream entry no other worker would take over (dropped by "
                        "hand); each runs again", revived, self.queue)

    async def _cron(self) -> float:
        wait = math.inf
        by_queue: dict[str, list[CronJob]] = {}
        for job, queue in self.crons:
            by_queue.setdefault(queue, []).append(job)
        for queue, jobs in by_queue.items():
            store = self.rt.stores[queue]
            held = self._cron_held.get(queue, 0.0) - time.monotonic()
            if held > 0:
                wait = min(wait, held)
                continue
            try:
                wait = min(wait, await self._cron_queue(store, jobs))
            except ResponseError as exc:
                if not refused(exc):
                    raise
                pause = self._refused(store, exc, self._cron_pauses)
                self._cron_held[queue] = time.monotonic() + pause
                wait = min(wait, pause)
            else:
                self._cron_pauses.pop(queue, None)
        return wait

    def _refused(self, store: QueueStore, exc: ResponseError,
                 pauses: dict[str, float] | None = None) -> float:
        """Log a level whose keys Redis refuses; seconds until it is tried again (1 s,
        doubling to 30 s, per level in ``pauses``: the promotion's by default)."""
        pauses = self._pauses if pauses is None else pauses
        pause = min(30.0, pauses.get(store.keys.queue, 0.5) * 2)
        pauses[store.keys.queue] = pause
        log.error("scheduler of queue %s cannot use queue %s (%s); trying it again in "
                  "%.0f s", self.queue, store.keys.queue, clean(str(exc)[:300]), pause)
        return pause

    async def _cron_queue(self, store: QueueStore, jobs: list[CronJob]) -> float:
        cursors = await store.cron_cursors()
        if time.monotonic() - self._now_at > self.lease.ttl_s:  # no recent promotion
            seconds, micros = await self.rt.client.time()
            self._now_ms, self._now_at = seconds * 1000 + micros // 1000, time.monotonic()
        now_ms = self._now_ms + round((time.monotonic() - self._now_at) * 1000)
        now = from_ms(now_ms)
        wait = math.inf
        for job in jobs:
            cursor_ms, unusable = read_cursor(cursors.get(job.name), now_ms)
            if unusable:
                await self._reset_cursor(store, job, cursors[job.name], unusable, now_ms)
                cursor_ms = now_ms  # from now on: its next tick runs
            cursor = from_ms(cursor_ms) if cursor_ms is not None else None
            plan = plan_ticks(job.schedule, cursor, now, policy=job.catch_up,
                              grace=job.grace, max_catch_up=job.max_catch_up)
            for tick in plan.fire:
                if not self.lease.held:
                    return 0.0
                reply = await store.cron_tick(job.name, to_ms(tick), tick_id(job.name, tick),
                                              job.spec, fire=True, no_overlap=job.no_overlap)
                log.info("cron %s tick %s: %s", clean(job.name), tick.isoformat(), reply)
            if plan.dropped:
                log.warning("cron %s: %d missed tick(s) not run (catch_up=%s)",
                            clean(job.name), plan.dropped, job.catch_up.value)
            if plan.cursor != cursor and (not plan.fire or plan.cursor > plan.fire[-1]):
                await store.cron_tick(job.name, to_ms(plan.cursor), "", b"",
                                      fire=False, no_overlap=False)
            nxt = next_fire(job.schedule, plan.cursor, now)
            wait = min(wait, (to_ms(nxt) - now_ms) / 1000)
        return wait

    async def _reset_cursor(self, store: QueueStore, job: CronJob, read: bytes, why: str,
                            now_ms: int) -> None:
        """Set back to now a cursor ``read_cursor`` found unusable (``why``), unless another
        leader moved it meanwhile; one warning line when this call did it."""
        if await store.cron_reset(job.name, read, now_ms) == "reset":
            log.warning("cron %s: its cursor in %s %s: reset to now, the cron job runs from "
                        "its next tick", clean(job.name), store.keys.cron, why)

    async def _sleep(self, seconds: float) -> None:
        """The leader's wait: until the next due time, or a wake-up (an earlier job)."""
        if seconds <= 0 or self.rt.stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: it can lose a cancellation
                await self.wake.wait()

    async def _await_vacancy(self, seconds: float) -> None:
        """A non-leader's wait for the lease: ``seconds``, or until the leader says it gave
        the lease up."""
        if seconds <= 0 or self.rt.stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.vacated.wait()

    async def _pause(self, seconds: float) -> None:
        """Any other wait (not leading, or backing off): wake-ups do not cut it short.
        The wake event is set by the events loop and cleared only by the leader, so a
        non-leader that waited on it would return at once, over and over."""
        if seconds > 0 and not self.rt.stopping.is_set():
            await asyncio.sleep(seconds)
