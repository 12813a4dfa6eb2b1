"""Graceful shutdown: stop taking jobs, let running ones finish within the grace period,
cancel the rest, record every outcome, and hand back every entry still held, so other
workers start those jobs at once instead of after the claim timeout.

A job whose body may still be running in this process (a task that ignores cancellation,
a plain ``def`` task's thread) is never handed back: that would run it twice at once. Its
entry stays pending and is reclaimed after the claim timeout, once this process has exited.
The whole sequence is bounded, whatever Redis and task code do: a worker exits within its
grace period plus ``AFTER_GRACE_S`` of the stop (``--processes``' supervisor kills a process
only past that). ``finish_running`` takes grace + ``CANCEL_WAIT_S`` from the stop and needs
no Redis; meanwhile the worker ends its fetch loop and gives up its scheduler leases, side
by side (``give_up_leases``), within ``_RELEASE_S`` of the stop (``serving.py``) however
many queues it leads; then the settle and hand-back calls share ``WRAP_UP_S``
(``wrap_up``), the lifespan's exit gets what is left of the grace, at least ``EXIT_S``
(``lifespan.py``), the connections close within ``CLOSE_S`` and the event loop within
``2 * LEFTOVER_WAIT_S`` (``loop.py``), and the log lines a full pipe did not take yet
are waited for ``EXIT_WAIT_S`` at most (``_cli/logs.py``). ``tests/test_supervisor_hostile.py``
checks that these add up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

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

WRAP_UP_S = 2.5
"""What the last settles and the hand-back may take together, after the jobs stopped. A
Redis that answers takes milliseconds; one that does not answer for this long is not waited
for: what finished and could not be recorded, and what is held, runs again after the claim
timeout (nothing is lost)."""

CLOSE_S = 0.5
"""The longest wait for the worker's connections to close (a close waits on no reply)."""

AFTER_GRACE_S = 10.0
"""The longest a worker takes, past its grace period, to exit after a stop."""

_ROUNDS = 5


class Releasing(Protocol):
    """What ``give_up_leases`` needs of a scheduler."""

    queue: str

    async def release(self) -> None:
        """Give the scheduler's lease up (if held)."""


async def give_up_leases(schedulers: Sequence[Releasing], within_s: float) -> None:
    """Give every scheduler's lease up, side by side, within ``within_s`` in all: a Redis
    that does not answer costs the shutdown ``within_s`` however many queues this worker
    leads (a lease not given up expires on its own). A release that fails is logged and
    the others, and the rest of the shutdown, go on."""

    async def release(scheduler: Releasing) -> None:
        try:
            await scheduler.release()
        except Exception as exc:
            log.warning("scheduler of queue %s could not give its lease up: %s",
                        scheduler.queue, clean(f"{type(exc).__name__}: {exc}"[:200]))

    with anyio.move_on_after(within_s):
        async with anyio.create_task_group() as tg:
            for scheduler in schedulers:
                tg.start_soon(release, scheduler)


async def finish_running(rt: Runtime, ex: Executor, *, now: bool) -> None:
    """Let running jobs finish within the grace period (none with ``now``), then cancel the
    rest and give them ``CANCEL_WAIT_S`` to stop. Needs no Redis: the grace counts from the
    call, whatever Redis does meanwhile."""
    grace = 0.0 if now or rt.hurry.is_set() else rt.config.shutdown_grace_s
    log.info("worker %s stopping: %d job(s) running, grace %.0f s", rt.consumer,
             ex.active, grace)
    if not await ex.wait_idle(grace, rt.hurry):
        count = ex.cancel_all("shutdown")
        log.warning("grace period over: cancelled %d job(s); %s", count,
                    "handing them back" if not rt.broken else "they run again")
        await ex.wait_idle(CANCEL_WAIT_S)


async def wrap_up(rt: Runtime, ex: Executor, settler: Settler,
                  settling: asyncio.Task[None]) -> None:
    """Once nothing runs (or what still runs is left behind): record every outcome, then
    hand back what this worker still holds, both within ``WRAP_UP_S``. A worker whose own
    tasks a job's code cancelled (``rt.broken``) runs its settler again if it was
    cancelled, and does not hand that job back (see ``serving``)."""
    ex.leave_behind()
    end = time.monotonic() + WRAP_UP_S
    settler.close(give_up_after_s=WRAP_UP_S)
    if rt.broken and not settling.done():  # its cancel still on its way: let it land
        with anyio.CancelScope(shield=True):
            await asyncio.wait([settling], timeout=WRAP_UP_S)
    if rt.broken and settling.cancelled():  # what finished is recorded all the same
        settling = asyncio.create_task(settler.run(), name="asyncjobs-settler")
    # A cancel now must not drop what finished (shielded), and a Redis that does not answer
    # must not hold the exit (waited for, not cancelled: a settle may be on its way).
    with anyio.CancelScope(shield=True):
        await asyncio.wait([settling], timeout=WRAP_UP_S)
    if not settling.done():
        # Its round trip waits on a Redis that does not answer: ended here, before the
        # connections close (it would reconnect, and outlive the event loop). A settle
        # still on its way may yet be applied, so handing its entry back could run a
        # finished job again at once: left pending, it is reclaimed after the claim timeout.
        settling.cancel()
        log.warning("could not record every finished job within %g s (Redis does not "
                    "answer); held jobs are not handed back: they run again after the claim "
                    "timeout", WRAP_UP_S)
    elif rt.broken:
        await _broken_wrap_up(rt, ex, end)
    else:
        with anyio.move_on_after(end - time.monotonic()) as scope:
            await handback(rt, ex)
        if scope.cancelled_caught:
            log.warning("could not hand back held jobs within %g s (Redis does not answer); "
                        "they run again after the claim timeout", WRAP_UP_S)
    ex.threads.close()
    log.info("worker %s stopped", rt.consumer)


async def _broken_wrap_up(rt: Runtime, ex: Executor, end: float) -> None:
    """The end of a worker whose own tasks a job's code cancelled (``rt.broken``): that
    job's attempt (``rt.suspects``, if it still ran) stays pending, to run again after the
    claim timeout, its delivery counted (the poison guard ends a job that does this every
    time); the jobs it cancelled beside it are handed back, as at any stop."""
    suspects = sorted(rt.suspects.values())
    if suspects:
        log.error("worker %s stopped at once: %s; that job is not handed back: it runs "
                  "again after the claim timeout, each delivery counted (a job that does "
                  "this every time is dead-lettered after max_deliveries); the jobs it "
                  "cancelled are handed back", rt.consumer, rt.broken)
    else:
        log.error("worker %s stopped at once: %s (its attempt had ended); the jobs it "
                  "cancelled are handed back", rt.consumer, rt.broken)
    with anyio.move_on_after(end - time.monotonic()) as scope:
        await handback(rt, ex, leave=set(rt.suspects))
    if scope.cancelled_caught:
        log.warning("could not hand back held jobs within %g s (Redis does not answer); "
                    "they run again after the claim timeout", WRAP_UP_S)


async def handback(rt: Runtime, ex: Executor,
                   leave: set[tuple[str, str]] | None = None) -> None:
    """Re-add every entry this consumer still holds, so other workers take it at once;
    keep those whose task body still runs here, and those of ``leave`` ((queue, entry):
    left pending on purpose). Whether an attempt had started (and is not to be counted) is
    read from the record."""
    try:
        for queue, store in rt.stores.items():
            keep = ex.alive_entries(queue)
            left_pending = sorted(e for q, e in leave or () if q == queue and e not in keep)
            total = 0
            try:
                for _ in range(_ROUNDS):  # a read served late can add entries: look again
                    moved, left = await store.handback(rt.consumer, keep + left_pending)
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
