"""Getting work: the read loop (XREADGROUP, COUNT = free slots, BLOCK; no timer polling) and
the reclaim loop (XAUTOCLAIM of entries a dead worker left idle past the claim timeout).

Both start what they got with one start.lua call per batch and hand it to the executor.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import ResponseError

from ._executor import Executor
from ._runtime import OUTAGE_ERRORS, Runtime
from ._store import Delivery, QueueStore

log = logging.getLogger("asyncjobs.worker")


async def _start(rt: Runtime, ex: Executor, queue: str, got: list[Delivery], taken: int) -> None:
    """Start deliveries and dispatch them; give back the slots not used."""
    store = rt.stores[queue]
    try:
        started = await store.start(rt.consumer, got) if got else []
    except BaseException:
        ex.slots.give(taken)
        raise
    ex.slots.give(taken - len(started))
    for item in started:
        ex.start(queue, item)


async def fetch_loop(rt: Runtime, ex: Executor, queue: str) -> None:
    """Read new entries of one queue until stopped (or, in burst mode, until drained)."""
    store = rt.stores[queue]
    cfg = rt.config
    block_ms = 100 if cfg.burst else cfg.block_ms
    while not rt.stopping.is_set():
        rt.fetch_beat[queue] = time.monotonic()
        if ex.slots.free == 0:
            rt.fetch_beat[queue] = float("inf")  # waiting for slots is healthy
        taken = await ex.slots.take_some(cfg.read_batch)
        began = rt.fetch_beat[queue] = time.monotonic()
        try:
            got = await store.read(rt.blocking, rt.consumer, taken, block_ms)
            if not got and time.monotonic() - began < block_ms / 2000:
                # The server did not block (an in-memory fake does not): don't spin.
                await asyncio.sleep(0.005)
        except OUTAGE_ERRORS as exc:
            ex.slots.give(taken)
            await asyncio.sleep(rt.outage.failed(exc, f"read {queue}"))
            continue
        except ResponseError as exc:
            ex.slots.give(taken)
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group of queue %s is gone (Redis lost its data?); recreating",
                        queue)
            await _recreate(rt, store)
            continue
        try:
            await _start(rt, ex, queue, got, taken)
            rt.outage.ok()
        except OUTAGE_ERRORS as exc:
            # The entries stay pending for us; nobody touches them, so after the claim
            # timeout they are reclaimed (by us or another worker) and run.
            await asyncio.sleep(rt.outage.failed(exc, f"start {queue}"))
            continue
        if cfg.burst and not got and await _drained(rt, ex, store):
            log.info("burst: queue %s is drained", queue)
            return


async def _recreate(rt: Runtime, store: QueueStore) -> None:
    try:
        await store.ensure_group()
    except OUTAGE_ERRORS as exc:
        await asyncio.sleep(rt.outage.failed(exc, "create group"))


async def _drained(rt: Runtime, ex: Executor, store: QueueStore) -> bool:
    """Burst mode: nothing running, nothing to settle, nothing queued or delayed."""
    if ex.running or not ex.settler.idle:
        return False
    client, keys = rt.client, store.keys
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.delayed)
    pipe.xlen(keys.stream)
    pipe.xpending(keys.stream, "asyncjobs")
    delayed, length, pending = await pipe.execute()
    return bool(delayed == 0 and length - int(pending["pending"]) <= 0)


async def reclaim_loop(rt: Runtime, ex: Executor, queue: str) -> None:
    """Claim entries idle past the claim timeout, while this worker has free slots."""
    store = rt.stores[queue]
    cfg = rt.config
    min_idle_ms = int(cfg.reclaim_idle_s * 1000)
    cursor = "0-0"
    while not rt.stopping.is_set():
        await asyncio.sleep(cfg.reclaim_every_s)
        # After an outage, let live workers refresh their entries before taking any.
        if rt.outage.recent(cfg.keepalive_every_s * 2):
            continue
        taken = ex.slots.take_now(cfg.read_batch)
        if not taken:
            continue
        try:
            cursor, got = await store.reclaim(rt.consumer, min_idle_ms, taken, cursor)
        except OUTAGE_ERRORS as exc:
            ex.slots.give(taken)
            await asyncio.sleep(rt.outage.failed(exc, f"reclaim {queue}"))
            continue
        except ResponseError as exc:
            ex.slots.give(taken)
            if "NOGROUP" not in str(exc):
                raise
            continue
        try:
            await _start(rt, ex, queue, got, taken)
        except OUTAGE_ERRORS as exc:
            await asyncio.sleep(rt.outage.failed(exc, f"start {queue}"))
            continue
        if got:
            log.warning("reclaimed %d job(s) on queue %s left by a stopped worker: %s",
                        len(got), queue, ", ".join(d.job_id or d.entry for d in got[:10]))
