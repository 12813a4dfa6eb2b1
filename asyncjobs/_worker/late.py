"""Starts answered late. take.lua and start.lua start jobs in Redis and refresh their
entries there (an entry's idle time counts from then), but this worker hears of them only
when the answer arrives. An answer held up (Redis stalled right after running the call, or
this worker's loop lagged) leaves those entries idle meanwhile, unknown to the keep-alive,
and no refresh of them can wait in Redis behind a stall the way the keep-alive's refreshes
of the jobs it knows do: another worker's reclaim scan, following a look answered after the
stall (``reclaimer``), takes them over, and the job would run on both.

So each start is stamped with a time (``stamp``): its call's sending plus ``SLACK`` of the
refresh interval R. A start whose job has not begun by then, whatever held it up (its own
answer, or another queue's take in the same batch), is confirmed first (``confirmed``): one
touch (touch.lua) of its entries; an entry no longer this worker's is not started (verdict
``lost``, which the fetch loop logs and skips), and a touch answered late is itself
confirmed again (``TRIES`` in all; then ``unconfirmed``: not started, left to a reclaim).
The read a take is sent behind blocks at most ``READ_SHARE`` of R (``read_block_ms``), so
that a take it wakes is usually answered in time.

The bound: an entry begins at most R/4 after Redis ran its start unconfirmed; the
keep-alive refreshes it within R more. A reclaim scan sent in time after its look runs at
most 1.5 R after it (reclaimer.py: half the step margin, then the margin), so the entry is
idle at most 2.75 R plus a round trip when a scan sees it, under the threshold (half the
largest claim timeout, at least 3 R)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from .._redis.values import Started
from .runtime import Runtime

SLACK = 0.25
"""How long after its call was sent (a share of the refresh interval) a start's job may
begin without a confirmation."""

READ_SHARE = 0.125
"""The longest a read with a take behind it blocks (a share of the refresh interval)."""

TRIES = 3
"""Confirmations of one start at most, while each is answered late."""


def read_block_ms(block_ms: int, refresh_s: float) -> int:
    """How long the read a take is sent behind blocks: ``block_ms``, at most
    ``READ_SHARE`` of the refresh interval."""
    return min(block_ms, max(1, int(refresh_s * 1000 * READ_SHARE)))


def stamp(rows: Sequence[tuple[str, Started]], sent: float, refresh_s: float) -> None:
    """Mark starts whose call was sent at ``sent`` (monotonic): confirmed if their job has
    not begun ``SLACK`` of the refresh interval later."""
    until = sent + refresh_s * SLACK
    for _, st in rows:
        st.confirm_after = until


def due(rows: Sequence[tuple[str, Started]], now: float) -> list[tuple[str, Started]]:
    """The starts of ``rows`` to confirm at ``now``: past their time, not lost."""
    return [(q, st) for q, st in rows
            if st.verdict not in ("lost", "unconfirmed") and now > st.confirm_after]


async def confirmed(rt: Runtime, started: Sequence[tuple[str, Started]]) -> None:
    """Confirm the starts of ``started`` that are due (in place: an entry no longer this
    worker's gets the verdict ``lost``; one whose confirmations all came late,
    ``unconfirmed``). Raises what a touch raises: the entries are then left to a reclaim
    (this worker's or another's)."""
    for _ in range(TRIES):
        late = due(started, time.monotonic())
        if not late:
            return
        sent = time.monotonic()
        by_queue: dict[str, list[Started]] = {}
        for queue, st in late:
            by_queue.setdefault(queue, []).append(st)
        queues = list(by_queue)
        replies = await asyncio.gather(*(
            rt.stores[q].touch(rt.consumer, [st.delivery for st in by_queue[q]], rt.lease_ms)
            for q in queues))
        for queue, (lost, _) in zip(queues, replies, strict=True):
            gone = set(lost)
            for st in by_queue[queue]:
                if st.delivery.entry in gone:
                    st.verdict = "lost"
        stamp(late, sent, rt.keepalive_every_s)
    for _, st in due(started, time.monotonic()):
        st.verdict = "unconfirmed"
