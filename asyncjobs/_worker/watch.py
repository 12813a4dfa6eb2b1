"""The fetch loop's blocking reads, which deliver nothing and only wake it: the ``Reader``
(a connection of its own whose server-side client id is known, so a blocked read can be
ended by ``CLIENT UNBLOCK`` instead of a cancel) and the ``Watch`` of queues that ran dry
while a later queue keeps the worker busy.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from .._redis.cluster import is_cluster
from .._text import first_line
from .reader import AnyReader, reader_for
from .runtime import Runtime

log = logging.getLogger("asyncjobs.worker")


WATCH_BLOCK_MS = 2000
"""The longest one read of the watch blocks; it is sent again after that (one command per
2 s while the worker is busy). A ``CLIENT UNBLOCK`` that misses its read (sent before the
read reached Redis, or after a reconnect gave the connection a new id) delays the end of
a watch by at most this much."""

WATCH_PAUSE_MOST_S = 30.0
"""After a read of the watch fails, the longest the worker goes without one (asking every
queue before each batch instead) before it tries again."""


class Watch:
    """Queues (groups) whose last take found nothing while another kept the worker busy,
    watched by a blocking XREAD of their level streams (from the newest ids that take saw)
    on a connection of its own, in a task of its own: the takes skip a group only while a
    read of the watch covers it, and any entry the read reports makes every group asked
    again. So a worker busy on a lower queue does not ask each dry higher queue before
    every batch (a round trip each), and turns to one as soon as it gets work: nothing
    polls, and the window in which a slot can go to a lower queue is the round trip of the
    read's reply, as when the take itself is in flight.

    A read is never cancelled (cancelling one left connections half closed under uvloop):
    it blocks at most ``WATCH_BLOCK_MS``, and a read that must end sooner (the groups to
    watch changed, or the worker stops) is ended by ``CLIENT UNBLOCK`` of the connection's
    id, sent from the worker's ordinary client; the task then sees its flags and reads
    again or returns, and the connection is closed normally. A read that fails (an outage,
    a watched key turned into something else) forgets every group, and the watch pauses
    (1 s, doubling to 30 s; logged once): meanwhile every queue is asked before each batch,
    as without a watch, so strict order never depends on it."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.groups: dict[int, dict[str, str]] = {}
        """Groups found dry, to watch (group index -> stream key -> newest id seen)."""
        self.covered: frozenset[int] = frozenset()
        """The groups the read under way (or about to be sent) covers: only these are
        skipped."""
        self.unblocks = 0
        """CLIENT UNBLOCK commands sent (for tests)."""
        self._reader: AnyReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._more = asyncio.Event()
        self._closing = False
        self._reads = 0
        self._reading = 0  # the number of the read under way (0: none)
        self._unblocked = 0  # the number of the last read a CLIENT UNBLOCK ended
        self._pause = 0.0
        self._paused_until = 0.0
        # False when Redis gives no client id (CLIENT denied), and on a cluster, where
        # one read cannot cover queues of several slots
        self._usable = not is_cluster(rt.client)

    def skips(self, i: int) -> bool:
        """Whether group ``i`` is known to have nothing waiting (a read watches it)."""
        return i in self.covered

    def covered_ids(self) -> dict[str, str]:
        """The streams of the skipped groups, from the ids they were found dry at."""
        return {k: v for i in self.covered for k, v in self.groups.get(i, {}).items()}

    def add(self, dry: dict[int, dict[str, str]]) -> None:
        """Watch these groups too (index -> their streams' newest ids), unless the watch is
        paused after a failure; they are skipped once a read covers them."""
        if not dry or self._closing or not self._usable \
                or time.monotonic() < self._paused_until:
            return
        self.groups.update(dry)
        if self._task is None or self._task.done():
            if self._reader is None:
                self._reader = reader_for(self.rt.client, self.rt.blocking,
                                          WATCH_BLOCK_MS / 1000 + 10.0)
            self._task = asyncio.create_task(self._run(self._reader), name="asyncjobs-watch")
        self._more.set()

    def forget(self) -> None:
        """Ask every group again from now on. A read under way goes on until it times out,
        or until ``settle`` ends it because other groups are to be watched."""
        self.groups.clear()
        self.covered = frozenset()

    async def settle(self, client: Redis) -> None:
        """When groups wait to be watched that the read under way does not cover, end that
        read (one CLIENT UNBLOCK, at most once per batch), so that the task reads again
        with all of them."""
        n = self._reading
        if n and n != self._unblocked and not self.groups.keys() <= self.covered:
            await self._unblock(client, n)

    async def close(self, client: Redis) -> None:
        """Stop the task (its flag, then CLIENT UNBLOCK of a read under way, sent again
        until it takes), then close the connection."""
        self._closing = True
        self.forget()
        self._more.set()
        task = self._task
        if task is not None:
            deadline = time.monotonic() + WATCH_BLOCK_MS / 1000 + 3.0
            while not task.done() and time.monotonic() < deadline:
                n = self._reading
                if n and n != self._unblocked:
                    await self._unblock(client, n)
                await asyncio.wait([task], timeout=0.05)
            if not task.done():  # pragma: no cover - a read longer than its block and 3 s
                log.warning("the watch of dry queues did not end; cancelling it")
                task.cancel()
                await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:  # pragma: no cover
                log.debug("the watch of dry queues failed: %s", task.exception())
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()

    async def _unblock(self, client: Redis, n: int) -> None:
        assert self._reader is not None
        self.unblocks += 1
        if await self._reader.unblock(client) and self._reading == n:
            self._unblocked = n

    async def _run(self, reader: AnyReader) -> None:
        try:
            await reader.ready()  # connected, id known: before any blocking read
        except Exception as exc:
            self._failed(exc)
            return
        if reader.client_id is None:
            # No CLIENT ID, so no CLIENT UNBLOCK: a read could only be ended by a cancel.
            log.info("Redis refuses CLIENT ID: every queue is asked before each batch")
            self._usable = False
            self.forget()
            return
        while not self._closing:
            if not self.groups:
                self._more.clear()
                await self._more.wait()
                continue
            streams = {k: v for ids in self.groups.values() for k, v in ids.items()}
            self._reads += 1
            n = self._reading = self._reads
            self.covered = frozenset(self.groups)
            began = time.monotonic()
            try:
                woke = await reader.wait(streams, WATCH_BLOCK_MS)
            except Exception as exc:
                self.forget()
                self._failed(exc)
                return
            finally:
                self._reading = 0
            if woke:
                self.forget()  # some group got work: ask them all again
            self._worked()
            if not woke and n != self._unblocked \
                    and time.monotonic() - began < WATCH_BLOCK_MS / 2000:
                await asyncio.sleep(0.005)  # the server did not block: don't spin

    def _failed(self, exc: Exception) -> None:
        self._pause = min(WATCH_PAUSE_MOST_S, max(1.0, self._pause * 2))
        self._paused_until = time.monotonic() + self._pause
        if self._pause == 1.0:
            log.warning("watching queues that ran dry failed (%s): every queue is asked "
                        "before each batch meanwhile", first_line(exc))
        else:
            log.debug("watching queues that ran dry failed again: %s", exc)

    def _worked(self) -> None:
        if self._pause:
            self._pause = 0.0
            log.info("watching queues that ran dry works again")
