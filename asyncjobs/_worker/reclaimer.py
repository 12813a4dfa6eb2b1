"""When a queue's levels are scanned for entries a stopped worker left idle past the claim
timeout, and the scan itself (reclaim.lua, XAUTOCLAIM on each level, one call for all of
them): one ``Reclaimer`` per queue the worker serves, driven by the fetch loop (``fetcher``),
the one place that takes slots.

An entry's idle time is counted on the clock of the Redis server holding it. A step forward
of that clock (an NTP step) makes every entry look idle by the step, the entries live
workers refresh too: taken over, their jobs would run twice. So each scan tells the server
the latest time its clock may read (``ServerClock``): the time it read at the previous scan,
plus what this worker's monotonic clock counted since, plus a margin; a server past that
claims nothing, and the scans wait until live workers have refreshed their entries on the
new time (as after an outage).

A stalled Redis (a slow command, a fork, DEBUG SLEEP) makes every entry idle by the stall,
and its clock does not step: a scan sent as the stall ends, answered within the margin,
would pass that check, and Redis may run it before the refresh a live worker sent during
the stall. So a scan is always preceded by a look (idle.lua: is anything idle? writes
nothing), and claims only when sent soon after the look was sent (half the margin, at
most): a stall that began before the look would have held the scan past the margin, and a
look answered after a stall was run after the refreshes queued behind it, which the scan,
sent a moment after that answer (``CONFIRM_S``), comes after. That rests on Redis running
every command it had read before it writes their answers (true of a stall's backlog, up
to a refresh of some 250 entries, whose bytes take more than one read). The look reads
the clock too and is checked against the forecast like a scan; a worker's first look has
no reading to compare with, and the scan after it is checked against the look's. A scan
that cannot be sent in time after its look (``LATE_LOOKS`` times in a row: a Redis far
away, an event loop that lags) goes anyway, so that nothing is left stuck, but takes only
entries idle longer than the threshold by the time since its look: a stall that began after
its look cannot make a live worker's entry look that idle.

A look reads at most ``LOOK_MOST`` pending entries and goes on at the next turn from where
it stopped, so that no call walks a whole pending list (tens of milliseconds for 100,000
entries, every client waiting). A worker's keep-alive sends every queue's refresh in one
round trip on one server (``upkeep``). Not covered: a live worker that sends its refresh
only after the stall's answers (a fifth queue's on a cluster, where they go four at a
time; a Redis that answered BUSY instead of queueing the refresh); such a job can run
twice, as the at-least-once contract allows."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from .._redis.store import idle_levels, reclaim_levels
from .._redis.values import Delivery
from .runtime import Runtime, refused
from .server_clock import ServerClock
from .waiting import Quarantine

if TYPE_CHECKING:
    from .fetcher import Group

log = logging.getLogger("asyncjobs.worker")


HELD_RECHECK_S = 1.0
"""A scan that is due but held is looked at again this often (or each reclaim interval)."""

CONFIRM_S = 0.02
"""After a look that found idle entries, the scan waits this long (an eighth of the step
margin at most): Redis has then run every command that was queued with the look."""

LOOK_MOST = 1000
"""The most pending entries one look reads (about 0.1 ms of Redis's time)."""

LATE_LOOKS = 3
"""Looks in a row whose scan could not be sent in time (a Redis further away than the
margin allows, an event loop that lags): the next scan goes without a fresh look, so that
nothing is left stuck, and takes only entries idle longer by the time since its look
(``Reclaimer._lateness_ms``)."""


class Reclaimer:
    """When the next reclaim scan of a group's levels is due, and where the last one
    stopped on each level. One scan is one reclaim.lua call for all the levels."""

    def __init__(self, rt: Runtime, group: Group) -> None:
        self.rt = rt
        self.group = group
        self.cursors = dict.fromkeys(group.queues, "0-0")
        self.due = time.monotonic() + rt.config.reclaim_every_s
        # Until the first heartbeat has said which claim timeouts the fleet uses (or, if
        # the registry cannot be reached, for three heartbeats), take nothing over.
        self._unheard_until = time.monotonic() + rt.config.heartbeat_every_s * 3
        self.clock = ServerClock()
        self._looked_at: float | None = None  # when the look (or scan) that found more was sent
        self.look_cursors = dict.fromkeys(group.queues, "-")
        self._late = 0

    def is_due(self) -> bool:
        """Whether a scan is due now; if one is due but held, ``due`` moves on to when to
        look again, so that a wait until ``due`` still waits (an outage that lasts, during
        which only a write ends it, would otherwise leave ``due`` in the past)."""
        now = time.monotonic()
        if now < self.due:
            return False
        # After an outage, let live workers refresh their entries before taking any; and
        # until the fleet's claim timeouts are known, take nothing over.
        if self.rt.outage.recent(self.rt.config.reclaim_hold_s) or (
                self.rt.fleet_claim_timeout_s is None and now < self._unheard_until):
            self.due = now + min(self.rt.config.reclaim_every_s, HELD_RECHECK_S)
            return False
        self.due = now + self.rt.config.reclaim_every_s
        return True

    @property
    def idle_ms(self) -> int:
        """How long an entry must have been idle to be taken over: half the largest claim
        timeout a live worker declares (this one's when none is known). A worker refreshes
        its entries every sixth of its own claim timeout, so three of its refreshes fit in
        the threshold whichever worker looks."""
        cfg = self.rt.config
        fleet = self.rt.fleet_claim_timeout_s or cfg.claim_timeout_s
        return int(max(cfg.reclaim_idle_s, fleet / 2) * 1000)

    @property
    def step_margin_ms(self) -> int:
        """How far past its forecast the server's clock may read before the scan counts it
        as stepped: half of what separates a live worker's entry from being taken over
        (the threshold, less the refresh interval), so every step that could make a live
        entry look abandoned is caught; a smaller one is harmless."""
        return max(1, (self.idle_ms - round(self.rt.keepalive_every_s * 1000)) // 2)

    @property
    def window_s(self) -> float:
        """How soon after the look was sent its scan must be sent: half the step margin."""
        return self.step_margin_ms / 2000

    def _stepped(self, ahead_ms: int | None) -> None:
        """The scan claimed nothing: its first (which only read the server's clock: scan
        again at once), or the server's clock stepped forward (scan again once live
        workers, this one first, have refreshed their entries on the new time)."""
        if ahead_ms is None:
            self.due = time.monotonic()
            return
        hold = self.rt.config.reclaim_hold_s
        self.due = time.monotonic() + hold
        self.rt.touch_now.set()
        log.warning("the Redis clock of queue %s stepped forward by about %.1f s (or Redis "
                    "stalled that long): no job is taken over for %.1f s, until live workers "
                    "have refreshed theirs",
                    self.group.name, ahead_ms / 1000, hold)

    async def claim(self, bad: Quarantine, count: int) -> tuple[dict[str, list[Delivery]],
                                                                  ResponseError | None]:
        """Claim up to ``count`` idle entries from the levels not left alone: by queue,
        and the first refusal that is not the keys' fault (NOGROUP), if any. A level whose
        keys Redis refuses is left alone for a while (``bad``)."""
        group = self.group
        levels = self._levels(bad)
        if not levels:
            return {}, None
        if not self._fresh():
            failure = await self._look(levels, bad)
            if failure is not None or self._looked_at is None:
                return {}, failure
            await asyncio.sleep(min(CONFIRM_S, self.step_margin_ms / 8000))
            levels = self._levels(bad)
            if not levels:
                return {}, None
            if not self._fresh():
                self._late += 1
                if self._late <= LATE_LOOKS:
                    self.due = time.monotonic()  # look again at the next turn
                    return {}, None
        self._late = 0
        sent = time.monotonic()
        got = await reclaim_levels(
            [group.stores[k] for k in levels], self.rt.consumer,
            self.idle_ms + self._lateness_ms(sent), count,
            [self.cursors[group.queues[k]] for k in levels],
            self.clock.latest_ms(sent, self.step_margin_ms))
        ahead_ms = self.clock.read(got.now_ms, sent)
        self._looked_at = None
        if got.stepped:
            self._stepped(ahead_ms)
            return {}, None
        claimed: dict[str, list[Delivery]] = {}
        for level, delivery in got.rows:
            claimed.setdefault(group.queues[levels[level]], []).append(delivery)
        for k, cursor in zip(levels, got.cursors, strict=True):
            self.cursors[group.queues[k]] = cursor
        if len(got.rows) >= count or any(c != "0-0" for c in got.cursors):
            # More to scan: continue on the next turn. The count may have run out at the
            # end of a level, whose cursor then reads '0-0' like those of the levels after
            # it, which were not scanned at all.
            self.due = time.monotonic()
            self._looked_at = sent
        for queue, deliveries in claimed.items():
            log.warning("reclaimed %d job(s) on queue %s from a stopped worker: %s",
                        len(deliveries), queue,
                        ", ".join(d.job_id or d.entry for d in deliveries[:10]))
        return claimed, self._refusals(levels, got.errors, bad)

    def _lateness_ms(self, sent: float) -> int:
        """For a scan sent at ``sent`` later than ``window_s`` after its look (or the scan
        before it), the time since that look (0 for one in time): it takes only entries
        idle that much longer than the threshold. A stall that began after the look, and
        that the scan waited out less than the step margin of, leaves a live worker's entry
        idle at most that time, plus the margin, plus a refresh interval and the live
        worker's round trip: the threshold is at least two margins and an interval, so one
        margin is left for that round trip."""
        if self._looked_at is None:
            return 0
        late_s = sent - self._looked_at
        return 0 if late_s <= self.window_s else round(late_s * 1000)

    def _levels(self, bad: Quarantine) -> list[int]:
        """The group's levels not left alone for now."""
        return [k for k, q in enumerate(self.group.queues) if not bad.holds(q)]

    def _fresh(self) -> bool:
        """Whether a scan sent now is soon enough after the look (or the scan) that found
        entries to take: within ``window_s`` of when that one was sent."""
        return (self._looked_at is not None
                and time.monotonic() - self._looked_at <= self.window_s)

    async def _look(self, levels: list[int], bad: Quarantine) -> ResponseError | None:
        """Look for an entry of the levels idle past the threshold (idle.lua), from where
        the last look stopped; if one is found, ``_looked_at`` says when the look was sent
        and the scan of its level starts at it. A look that stopped before the end reads on
        at the next turn. A clock past its forecast (a step, or a stall the look waited
        out) holds the scans as a scan's check does."""
        group = self.group
        queues = [group.queues[k] for k in levels]
        sent = time.monotonic()
        got = await idle_levels([group.stores[k] for k in levels], self.idle_ms, LOOK_MOST,
                                [self.look_cursors[q] for q in queues])
        ahead_ms = self.clock.read(got.now_ms, sent)
        self._looked_at = None
        self.look_cursors.update(zip(queues, got.cursors, strict=True))
        if ahead_ms is not None and ahead_ms > self.step_margin_ms:
            self._stepped(ahead_ms)
        elif got.found is not None:
            level, entry = got.found
            self.cursors[queues[level]] = entry  # XAUTOCLAIM starts at (and takes) it
            self.look_cursors = dict.fromkeys(group.queues, "-")
            self._looked_at = sent
        else:
            self._late = 0
            if any(c != "-" for c in self.look_cursors.values()):
                self.due = time.monotonic()  # read on at the next turn
        return self._refusals(levels, got.errors, bad)

    def _refusals(self, levels: list[int], errors: list[tuple[int, str]], bad: Quarantine
                  ) -> ResponseError | None:
        """Leave alone the levels whose keys Redis refused for what they hold (a key of
        the wrong type: ``refused``); the first other refusal, to raise (NOGROUP among
        them: the fetch loop makes the groups again)."""
        failure = None
        for level, why in errors:
            exc = ResponseError(why)
            if refused(exc):
                bad.add(self.group.queues[levels[level]], why)
            elif failure is None:
                failure = exc
        return failure
