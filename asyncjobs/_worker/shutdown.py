"""Graceful shutdown: stop taking jobs, let running ones finish within the grace period,
cancel the rest, record every outcome, and hand back every entry still held, so other
workers start those jobs at once instead of after the claim timeout.

A job whose body may still be running in this process (a task that ignores cancellation,
a plain ``def`` task's thread) is never handed back: that would run it twice at once. Its
entry stays pending and is reclaimed after the claim timeout, once this process has exited.
The whole sequence is bounded: grace + ``CANCEL_WAIT_S`` (``finish_running``: counted from
the stop, needing no Redis, while the worker ends its fetch loop and gives up its leases,
each wait on Redis bounded too), then the settle and hand-back calls (``wrap_up``: each at
most ``_FLUSH_S`` during an outage).
"""

from __future__ import annotations

import asyncio
import logging

import anyio
from redis.exceptions import ResponseError

from .._text import clean
from .executor import Executor
from .runtime import Runtime, transient
from .settler import Settler
from .upkeep import unregister

log = logging.getLogger("asyncjobs.worker")

CANCEL_WAIT_S = 2.0
"""How long cancelled jobs get to stop (their ``finally`` blocks run) before the worker
hands back what it can and leaves the rest."""

_FLUSH_S = 10.0
_ROUNDS = 5


async def finish_running(rt: Runtime, ex: Executor, *, now: bool) -> None:
    """Let running jobs finish within the grace period (none with ``now``), then cancel the
    rest and give them ``CANCEL_WAIT_S`` to stop. Needs no Redis: the grace counts from the
    call, whatever Redis does meanwhile."""
    grace = 0.0 if now or rt.hurry.is_set() else rt.config.shutdown_grace_s
    log.info("worker %s stopping: %d job(s) running, grace %.0f s", rt.consumer,
             ex.active, grace)
    if not await ex.wait_idle(grace, rt.hurry):
        count = ex.cancel_all("shutdown")
        log.warning("grace period over: cancelled %d job(s); handing them back", count)
        await ex.wait_idle(CANCEL_WAIT_S)


async def wrap_up(rt: Runtime, ex: Executor, settler: Settler,
                  settling: asyncio.Task[None]) -> None:
    """Once nothing runs (or what still runs is left behind): record every outcome, then
    hand back what this worker still holds, each step bounded by ``_FLUSH_S``."""
    ex.leave_behind()
    settler.close(give_up_after_s=_FLUSH_S)
    with anyio.CancelScope(shield=True):  # a cancel now must not drop what finished: the
        await settling                    # flush is bounded (``_FLUSH_S`` in an outage)
    with anyio.move_on_after(_FLUSH_S):
        await handback(rt, ex)
    ex.threads.close()
    log.info("worker %s stopped", rt.consumer)


async def handback(rt: Runtime, ex: Executor) -> None:
    """Re-add every entry this consumer still holds, so other workers take it at once;
    keep those whose task body still runs here. Whether an attempt had started (and is not
    to be counted) is read from the record."""
    try:
        for queue, store in rt.stores.items():
            keep = ex.alive_entries(queue)
            total = 0
            try:
                for _ in range(_ROUNDS):  # a read served late can add entries: look again
                    moved, left = await store.handback(rt.consumer, keep)
                    total += moved
                    if not left:
                        break
            except ResponseError as exc:  # this queue's keys are refused: the others go on
                if transient(exc):
                    raise
                log.error("could not hand back the jobs held on queue %s (%s); they run "
                          "again after the claim timeout", queue, clean(str(exc)[:300]))
                continue
            if total:
                log.info("handed back %d job(s) on queue %s", total, queue)
            if keep:
                log.warning(
                    "%d job(s) on queue %s still run in this process (a task that ignores "
                    "cancellation, or a plain def task's thread): not handed back; they run "
                    "again after the claim timeout, once this process has exited",
                    len(keep), queue)
                # Fresh now, so the claim timeout counts from (about) the process's exit.
                await store.touch(rt.consumer, [d for d in ex.held(queue) if d.entry in keep],
                                  rt.lease_ms)
        await unregister(rt)
    except Exception as exc:
        if not transient(exc):  # (a Redis that cannot serve now: BUSY, READONLY...)
            raise
        log.warning("could not hand back held jobs (%s); they run again after the claim "
                    "timeout", exc)
