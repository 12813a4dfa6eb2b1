"""How the fetch loop waits when no queue has work: one blocking XREAD on every level stream
of every queue (``wait``), or, for a worker of one queue on one server that has just run out
of work, the same read with the queue's take behind it on the same connection
(``wait_then_take``); and the loop's small state for it: the streams' newest ids while
nothing new came (``Idle``) and the queues Redis refuses to read, left alone for a while
(``Quarantine``). See ``fetcher`` for the loop itself."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import NoScriptError, ResponseError

from .._redis.store import take_call, taken_from
from .._redis.values import Delivery, Started
from .._routing import WeightedOrder
from .._text import first_line
from . import late
from .reader import AnyReader, Reader
from .runtime import Runtime, refused, refused_for_now

if TYPE_CHECKING:
    from .fetcher import Group

log = logging.getLogger("asyncjobs.worker")


def beat(rt: Runtime, value: float) -> None:
    """Note the fetch loop's health for every queue (inf: healthy while it waits for
    slots)."""
    for queue in rt.fetch_beat:
        rt.fetch_beat[queue] = value


IDLE_RETAKE_S = 60.0
"""An idle worker takes (finding nothing) at least this often, beside its waits."""


@dataclass
class Idle:
    """The newest entry ids of the last take that found nothing, while nothing new came
    (None: take before waiting), and when that take was."""

    newest: dict[str, str] | None = None
    since: float = 0.0
    quiet: bool = False
    """A read with a take behind it timed out since the worker last started a job: wait
    with the read alone (``idle_wait``)."""
    refusal_logged: float = -float("inf")
    """When a refused blocking read was last logged (``_read_refused``)."""
    woken: bool = False
    """A wait of an idle worker woke (or its take behind the read started jobs) since the
    fetch loop last started jobs: the jobs it starts next take their first step before
    the loop asks Redis for more (``fetcher._loop``)."""


QUARANTINE_MOST_S = 30.0
"""The longest a queue that cannot be read is left alone before it is tried again."""


class Quarantine:
    """Queues whose keys Redis refuses to read (a stream key holding a string, say): each
    is left alone for a while (1 s, doubling to 30 s), logged once per try, so that one
    corrupt queue never stops the worker's other queues."""

    def __init__(self) -> None:
        self.until: dict[str, float] = {}
        self._pause: dict[str, float] = {}

    def holds(self, name: str) -> bool:
        """Whether queue ``name`` is left alone now."""
        return time.monotonic() < self.until.get(name, 0.0)

    def add(self, name: str, why: str) -> None:
        """Leave queue ``name`` alone for its next pause, and log ``why``."""
        pause = min(QUARANTINE_MOST_S, self._pause.get(name, 0.5) * 2)
        self._pause[name] = pause
        self.until[name] = time.monotonic() + pause
        log.error("queue %s cannot be read (%s); the worker's other queues go on, this one is "
                  "tried again in %.0f s", name, first_line(why) or "no reason given", pause)

    def cleared(self, name: str) -> None:
        """Queue ``name`` was read again: forget its backoff."""
        if self._pause.pop(name, None) is not None:
            self.until.pop(name, None)
            log.warning("queue %s can be read again", name)

    def next_end(self) -> float:
        """When the next queue left alone is tried again (inf: none is)."""
        now = time.monotonic()
        return min((t for t in self.until.values() if t > now), default=float("inf"))


async def wait(rt: Runtime, reader: AnyReader, idle: Idle, newest: dict[str, str],
               due: float, block_ms: int) -> bool:
    """Wait until a stream gets an entry after ``newest`` (True), or a reclaim scan is due
    (False; ``due``: when the next reclaim scan is due, or a queue left alone is tried
    again). A wait that times out is sent again from the same ids: an idle worker sends
    one command per ``block_ms``, and takes again only when woken, when a reclaim scan is
    due, or after ``IDLE_RETAKE_S``. Nothing can become waiting without the XREAD seeing
    it (entries handed back are added anew) but a consumer group made again at id 0 after
    Redis lost its data, which the failed commands of that outage (or the next reclaim
    scan's NOGROUP) reveal: every failure forgets ``newest``."""
    if not newest:  # every queue is left alone for now
        await asyncio.sleep(max(0.0, min(due - time.monotonic(), block_ms / 1000)))
        return False
    while True:
        began = time.monotonic()
        try:
            if await reader.wait(newest, block_ms):
                return True
        except ResponseError as exc:  # a stream turned into something else meanwhile:
            if not refused(exc):      # the next take (forced: newest is forgotten) leaves
                raise                 # it alone
            await _read_refused(idle, exc, block_ms)
            return True
        if rt.stopping.is_set() or rt.config.burst:
            return False
        now = time.monotonic()
        beat(rt, now)
        if now - began < block_ms / 2000:
            # The server did not block (an in-memory fake does not): don't spin.
            await asyncio.sleep(0.005)
            return False
        if now >= due:
            return False


REFUSED_READ_PAUSE_S = 1.0
"""The longest pause after Redis refused a blocking read, before the loop takes again."""

async def _read_refused(idle: Idle, exc: ResponseError, block_ms: int) -> None:
    """Redis refused the blocking read. Either a stream holds something else, which the
    take that follows finds and quarantines, or the read itself is denied (an ACL user
    without XREAD, a proxy without blocking commands), and the takes go on working: pause
    so that the loop asks at most once per pause instead of spinning, and say so (at most
    once a minute)."""
    pause = min(REFUSED_READ_PAUSE_S, block_ms / 1000)
    now = time.monotonic()
    if now - idle.refusal_logged >= 60.0:
        idle.refusal_logged = now
        log.warning("Redis refused the worker's blocking read (%s); it asks for new jobs "
                    "every %.1f s instead until the read works (an ACL user needs XREAD)",
                    first_line(exc), pause)
    await asyncio.sleep(pause)


async def wait_then_take(rt: Runtime, reader: Reader, group: Group,
                         order: WeightedOrder | None, idle: Idle, newest: dict[str, str],
                         count: int, block_ms: int) -> tuple[bool, list[tuple[str, Started]]]:
    """One read as ``wait``'s, followed on its connection by the group's take (take.lua for up
    to ``count`` entries, as the fetch loop's own take would send it next): Redis runs the take
    the moment the read ends, so a job that wakes the worker is started without another round
    trip (``Reader.wait_then_run``). Returns (woken, started). A take that finds nothing moves
    ``newest`` to the streams' newest ids: after a read another worker won, the wait goes on
    from there; after a read that timed out, ``idle.quiet`` is set and the waits go on without a
    take behind them (an idle worker sends no more than before). Woken with nothing started
    means "take again": the take was not loaded yet (a Redis restart empties the script cache;
    the next take loads it), or a level could not be read, which the fetch loop's own take deals
    with."""
    stores = group.stores
    # The take runs when the read ends: soon enough that its answer is usually in time
    # to start its jobs unconfirmed (late.py)
    block = late.read_block_ms(block_ms, rt.keepalive_every_s)
    began = time.monotonic()
    woke, ran = await reader.wait_then_run(newest, block,
                                           take_call(stores, rt.consumer, count))
    if isinstance(ran, NoScriptError):
        return True, []
    if isinstance(ran, ResponseError):
        raise ran  # as the take's own call raises it (an outage reply: retried)
    taken = taken_from(ran)
    if order is not None:
        order.charge(0, len(taken.rows), dry=len(taken.rows) < count)
    if taken.rows:  # started: whatever the read said, they run
        rows = [(group.queues[level], st) for level, st in taken.rows]
        late.stamp(rows, began, rt.keepalive_every_s)
        return True, rows
    if (refusal := refused_for_now(taken.errors)) is not None:
        raise refusal  # an outage, waited out
    if taken.errors or len(taken.last) != len(stores) or not all(taken.last):
        return True, []
    newest.update(zip((st.keys.stream for st in stores), taken.last, strict=True))
    if isinstance(woke, ResponseError):  # the take could read every stream: so not for
        if not refused(woke):            # what a key holds (an ACL without XREAD, say)
            raise woke
        await _read_refused(idle, woke, block_ms)
        return True, []
    now = time.monotonic()
    beat(rt, now)
    if not woke:
        idle.quiet = True
        if now - began < block / 2000:
            # The server did not block (an in-memory fake does not): don't spin.
            await asyncio.sleep(0.005)
    return False, []


async def idle_wait(rt: Runtime, reader: AnyReader, groups: Sequence[Group],
                    order: WeightedOrder | None, idle: Idle, newest: dict[str, str],
                    due: float, bad: Quarantine, count: int, block_ms: int
                    ) -> tuple[list[tuple[str, Started]], dict[str, list[Delivery]], bool]:
    """Wait for new entries after ``newest``; ``fetcher._fetch``'s answer. A worker of one queue
    on one server that was busy a moment ago sends its take right behind its read
    (``wait_then_take``), so that what wakes it is started by then; once such a read
    timed out with nothing new (``idle.quiet``), it waits with the read alone, one command
    per ``block_ms`` as before, and the next fetch takes."""
    if not idle.quiet and isinstance(reader, Reader) and len(groups) == 1 and newest \
            and not rt.config.burst and not any(bad.holds(q) for q in groups[0].queues):
        woke, started = await wait_then_take(rt, reader, groups[0], order, idle, newest,
                                             count, block_ms)
    else:
        woke, started = await wait(rt, reader, idle, newest, due, block_ms), []
    if woke or started:
        idle.newest = None
        idle.quiet = False
        idle.woken = True
    return started, {}, not started
