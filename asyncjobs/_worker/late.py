"""Starts answered late. take.lua and start.lua start jobs in Redis and refresh their
entries there (an entry's idle time counts from then), but this worker hears of them only
when the answer arrives. An answer held up (Redis stalled right after running the call, or
this worker's loop lagged) leaves those entries idle meanwhile, unknown to the keep-alive,
and no refresh of them can wait in Redis behind a stall the way the keep-alive's refreshes
of the jobs it knows do: another worker's reclaim scan, following a look answered after the
stall (``reclaimer``), takes them over, and the job would run on both.

So a start answered later than it could have been, by more than ``SLACK`` of the refresh
interval R, is confirmed before any of its jobs runs: one touch (touch.lua) of their
entries, and an entry no longer this worker's is not started (verdict ``lost``, which the
fetch loop logs and skips). Answered in time, an entry is idle at most the call's block
(capped at R for the read that a take follows, ``waiting``) plus that slack before the
worker knows it, and the keep-alive refreshes it within R more: 2.25 R, under the reclaim
threshold (half the largest claim timeout, so at least 3 R) by more than a round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from .._redis.values import Started
from .runtime import Runtime

SLACK = 0.25
"""How much later than it could have come (a share of the refresh interval) a start's
answer may come before its entries are confirmed."""


def came_late(elapsed_s: float, blocked_s: float, refresh_s: float) -> bool:
    """Whether a call that took ``elapsed_s``, of which the server could hold it up to
    ``blocked_s`` by design (a blocking read it followed), was answered late."""
    return elapsed_s > blocked_s + refresh_s * SLACK


async def confirm(rt: Runtime, started: Sequence[tuple[str, Started]]
                  ) -> list[tuple[str, Started]]:
    """``started`` (queue, start) with the entries no longer this worker's marked ``lost``;
    one touch per queue, which also refreshes the others. Raises what the touch raises:
    the entries are then left to a reclaim (this worker's or another's)."""
    by_queue: dict[str, list[Started]] = {}
    for queue, st in started:
        if st.verdict != "lost":
            by_queue.setdefault(queue, []).append(st)
    queues = list(by_queue)
    replies = await asyncio.gather(*(
        rt.stores[q].touch(rt.consumer, [st.delivery for st in by_queue[q]], rt.lease_ms)
        for q in queues))
    gone = {(q, entry) for q, (lost, _) in zip(queues, replies, strict=True) for entry in lost}
    return [(q, replace(st, verdict="lost") if (q, st.delivery.entry) in gone else st)
            for q, st in started]
