"""Getting work, one loop per queue: take the free slots, then either reclaim entries a dead
worker left idle past the claim timeout (XAUTOCLAIM, when a scan is due) or read new ones
(XREADGROUP, COUNT = free slots, BLOCK; no timer polling for new work).

Both go through this loop because it is the one place that takes slots: the concurrency
limit holds, and a worker with free slots always reclaims. The read's block time is capped
by the reclaim interval, so an idle worker scans for a dead worker's jobs on time.
What it gets is started with one start.lua call per batch and handed to the executor.

Each queue's blocking reads go through a ``Reader``: one connection of its own whose
server-side client id is known, so a shutdown can end a read that is still blocked in Redis
(``CLIENT UNBLOCK``) before it hands entries back. Cancelling the read on our side is not
enough: until Redis has seen the connection close, an entry handed back could still be
delivered to the read that nobody waits for any more, and sit held by a stopped worker
until the claim timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from .._redis.store import Delivery, QueueStore, Started
from .._text import clean
from .executor import Executor
from .runtime import OUTAGE_ERRORS, Runtime, transient

log = logging.getLogger("asyncjobs.worker")


class Reader:
    """A queue's blocking connection, and its client id on the server."""

    def __init__(self, blocking: Redis) -> None:
        self.client = Redis(connection_pool=blocking.connection_pool,
                            single_connection_client=True)
        self.client_id: int | None = None
        self._hooked = False

    async def _on_connect(self, connection: Any) -> None:
        try:
            await connection.send_command("CLIENT", "ID")
            self.client_id = int(await connection.read_response())
        except (ResponseError, ValueError, TypeError):  # CLIENT denied (ACL, proxy)
            self.client_id = None

    async def read(self, store: QueueStore, consumer: str, count: int,
                   block_ms: int) -> list[Delivery]:
        """XREADGROUP on this connection, blocking up to ``block_ms``."""
        if not self._hooked:
            await self.client.initialize()
            connection: Any = self.client.connection
            await self._on_connect(connection)
            connection.register_connect_callback(self._on_connect)  # a new id per reconnect
            self._hooked = True
        return await store.read(self.client, consumer, count, block_ms)

    async def unblock(self, client: Redis) -> None:
        """End a read of this connection still blocked in Redis (best effort)."""
        if self.client_id is not None:
            try:
                await client.client_unblock(self.client_id)
            except (RedisError, OSError) as exc:
                log.debug("could not unblock reader %s: %s", self.client_id, exc)

    async def close(self) -> None:
        """Give the connection back."""
        await self.client.aclose()


class _Reclaimer:
    """When the next reclaim scan of a queue is due, and where the last one stopped."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cursor = "0-0"
        self.due = time.monotonic() + rt.config.reclaim_every_s

    def is_due(self) -> bool:
        # After an outage, let live workers refresh their entries before taking any.
        if time.monotonic() < self.due or self.rt.outage.recent(self.rt.config.reclaim_hold_s):
            return False
        self.due = time.monotonic() + self.rt.config.reclaim_every_s
        return True

    async def claim(self, store: QueueStore, count: int) -> list[Delivery]:
        cfg = self.rt.config
        self.cursor, got = await store.reclaim(
            self.rt.consumer, int(cfg.reclaim_idle_s * 1000), count, self.cursor
        )
        if self.cursor != "0-0":
            self.due = time.monotonic()  # more to scan: continue on the next turn
        if got:
            log.warning("reclaimed %d job(s) on queue %s from a stopped worker: %s", len(got),
                        store.keys.queue, ", ".join(d.job_id or d.entry for d in got[:10]))
        return got


async def fetch_loop(rt: Runtime, ex: Executor, queue: str, reader: Reader) -> None:
    """Reclaim and read entries of one queue until stopped (or, in burst mode, drained)."""
    store = rt.stores[queue]
    cfg = rt.config
    block_ms = 100 if cfg.burst else max(10, min(cfg.block_ms, int(cfg.reclaim_every_s * 1000)))
    reclaimer = _Reclaimer(rt)
    while not rt.stopping.is_set():
        if ex.slots.free == 0:
            rt.fetch_beat[queue] = float("inf")  # waiting for slots is healthy
        taken = await ex.slots.take_some(cfg.read_batch)
        began = rt.fetch_beat[queue] = time.monotonic()
        try:
            started, got = await _fetch(rt, store, reader, reclaimer, taken, block_ms, began)
        except BaseException as exc:
            ex.slots.give(taken)  # whatever happened, the slots are free again
            if transient(exc):
                await asyncio.sleep(rt.outage.failed(exc, f"read {queue}"))
                continue
            if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                log.warning("consumer group of queue %s is gone (Redis lost its data?); "
                            "recreating", queue)
                await _recreate(rt, store)
                continue
            raise  # shutdown's cancellation, or a bug (the supervisor logs it)
        try:
            await _start(rt, ex, queue, got, taken, started)
            rt.outage.ok()
        except Exception as exc:
            if not transient(exc):
                raise
            # The entries stay pending for us; nobody touches them, so after the claim
            # timeout they are reclaimed (by us or another worker) and run.
            await asyncio.sleep(rt.outage.failed(exc, f"start {queue}"))
            continue
        if cfg.burst and not got and not started and await _drained(rt, ex, store):
            log.info("burst: queue %s is drained", queue)
            return


async def _fetch(rt: Runtime, store: QueueStore, reader: Reader, reclaimer: _Reclaimer,
                 count: int, block_ms: int, began: float
                 ) -> tuple[list[Started], list[Delivery]]:
    """Reclaimed entries when a scan is due and finds some; else entries already waiting,
    read and started in one round trip; else a blocking read (started by the caller)."""
    got = await reclaimer.claim(store, count) if reclaimer.is_due() else []
    if got:
        return [], got
    started = await store.take(rt.consumer, count)
    if started:
        return started, []
    got = await reader.read(store, rt.consumer, count, block_ms)
    if not got and time.monotonic() - began < block_ms / 2000:
        # The server did not block (an in-memory fake does not): don't spin.
        await asyncio.sleep(0.005)
    return [], got


async def _start(rt: Runtime, ex: Executor, queue: str, got: list[Delivery], taken: int,
                 started: list[Started] | None = None) -> None:
    """Start deliveries (unless already started) and dispatch them; give back the slots
    not used. Once the worker is stopping nothing new starts: what was read stays held
    and is handed back."""
    if rt.stopping.is_set():
        ex.slots.give(taken)
        return
    # A reclaim can return this worker's own entries (a reply it never got): one that
    # already runs here is not started twice.
    got = [d for d in got if (queue, d.entry) not in ex.running]
    try:
        if not started:
            started = await rt.stores[queue].start(rt.consumer, got) if got else []
    except BaseException:
        ex.slots.give(taken)
        raise
    lost = [s for s in started if s.verdict == "lost"]
    if lost:
        log.warning("%d job(s) on queue %s were taken over by another worker before they "
                    "started here; not started: %s", len(lost), queue,
                    ", ".join(clean(s.delivery.job_id) for s in lost[:10]))
    runnable = [s for s in started if s.verdict != "lost"]
    ex.slots.give(taken - len(runnable))
    for item in runnable:
        ex.start(queue, item)


async def _recreate(rt: Runtime, store: QueueStore) -> None:
    try:
        await store.ensure_group()
    except OUTAGE_ERRORS as exc:
        await asyncio.sleep(rt.outage.failed(exc, "create group"))


async def _drained(rt: Runtime, ex: Executor, store: QueueStore) -> bool:
    """Burst mode: nothing running or to settle here, and nothing left in the stream (waiting,
    or held by any consumer: a stopped worker's entries are reclaimed and run first) or in
    the delayed set."""
    if ex.running or not ex.settler.idle:
        return False
    keys = store.keys
    pipe = rt.client.pipeline(transaction=False)
    pipe.zcard(keys.delayed)
    pipe.xlen(keys.stream)
    delayed, length = await pipe.execute()
    return bool(delayed == 0 and length == 0)
