"""Graceful shutdown: stop taking jobs, let running ones finish within the grace period,
cancel the rest, record every outcome, and hand back every entry still held, so other
workers start those jobs at once instead of after the claim timeout."""

from __future__ import annotations

import asyncio
import logging

import anyio

from ._executor import Executor
from ._runtime import OUTAGE_ERRORS, Runtime
from ._settler import Settler
from ._upkeep import unregister

log = logging.getLogger("asyncjobs.worker")


async def drain(
    rt: Runtime, ex: Executor, settler: Settler, settling: asyncio.Task[None], *, now: bool
) -> None:
    """Let running jobs finish within the grace period (none with ``now``), cancel the rest,
    record every outcome, then hand back what this worker still holds."""
    grace = 0.0 if now or rt.hurry.is_set() else rt.config.shutdown_grace_s
    log.info("worker %s stopping: %d job(s) running, grace %.0f s", rt.consumer,
             ex.active, grace)
    if not await ex.wait_idle(grace, rt.hurry):
        count = ex.cancel_all("shutdown")
        log.warning("grace period over: cancelled %d job(s); handing them back", count)
        await ex.wait_idle(10.0)
    settler.close(give_up_after_s=10.0)
    await settling
    with anyio.move_on_after(10.0):
        await handback(rt, ex)
    log.info("worker %s stopped", rt.consumer)

async def handback(rt: Runtime, ex: Executor) -> None:
    """Re-add every entry this consumer still holds, so other workers take it at once.
    Whether an attempt had started (and is not to be counted) is read from the record."""
    try:
        for queue, store in rt.stores.items():
            entries = await store.pending_entries(rt.consumer)
            if entries:
                count = await store.handback(rt.consumer, entries)
                log.info("handed back %d job(s) on queue %s", count, queue)
            if not await store.pending_entries(rt.consumer, limit=1):
                await store.delete_consumer(rt.consumer)
        await unregister(rt)
    except OUTAGE_ERRORS as exc:
        log.warning("could not hand back held jobs (%s); they run again after the claim "
                    "timeout", exc)
