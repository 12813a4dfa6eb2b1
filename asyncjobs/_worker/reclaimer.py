"""When a queue's levels are scanned for entries a stopped worker left idle past the claim
timeout, and the scan itself (reclaim.lua, XAUTOCLAIM on each level, one call for all of
them): one ``Reclaimer`` per queue the worker serves, driven by the fetch loop (``fetcher``),
the one place that takes slots."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from .._redis.store import reclaim_levels
from .._redis.values import Delivery
from .runtime import Runtime, refused
from .waiting import Quarantine

if TYPE_CHECKING:
    from .fetcher import Group

log = logging.getLogger("asyncjobs.worker")


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

    def is_due(self) -> bool:
        # After an outage, let live workers refresh their entries before taking any.
        if time.monotonic() < self.due or self.rt.outage.recent(self.rt.config.reclaim_hold_s):
            return False
        if self.rt.fleet_claim_timeout_s is None and time.monotonic() < self._unheard_until:
            return False
        self.due = time.monotonic() + self.rt.config.reclaim_every_s
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

    async def claim(self, bad: Quarantine, count: int) -> tuple[dict[str, list[Delivery]],
                                                                  ResponseError | None]:
        """Claim up to ``count`` idle entries from the levels not left alone: by queue,
        and the first refusal that is not the keys' fault (NOGROUP), if any. A level whose
        keys Redis refuses is left alone for a while (``bad``)."""
        group = self.group
        levels = [k for k, q in enumerate(group.queues) if not bad.holds(q)]
        if not levels:
            return {}, None
        got = await reclaim_levels(
            [group.stores[k] for k in levels], self.rt.consumer, self.idle_ms, count,
            [self.cursors[group.queues[k]] for k in levels])
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
        for queue, deliveries in claimed.items():
            log.warning("reclaimed %d job(s) on queue %s from a stopped worker: %s",
                        len(deliveries), queue,
                        ", ".join(d.job_id or d.entry for d in deliveries[:10]))
        failure = None
        for level, why in got.errors:
            exc = ResponseError(why)
            if refused(exc):
                bad.add(group.queues[levels[level]], why)
            elif failure is None:
                failure = exc
        return claimed, failure
