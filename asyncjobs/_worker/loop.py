"""Running a worker in an event loop of its own (``Worker.run_sync``, the CLI) and closing
that loop in bounded time, whatever task code does; while such a worker runs, what its
start-up made is kept out of the cyclic collector's scans (``frozen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from .executor import LEFT_BEHIND

log = logging.getLogger("asyncjobs.worker")


def run_in_new_loop(main: Coroutine[Any, Any, None], *, use_uvloop: bool = True) -> None:
    """Run ``main`` in a new event loop (uvloop when installed and asked for), then close
    the loop with ``close_loop``."""
    loop = (loop_factory(use_uvloop) or asyncio.new_event_loop)()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        close_loop(loop)
        asyncio.set_event_loop(None)


LEFTOVER_WAIT_S = 1.0
"""How long ``run_sync`` waits, after the worker stopped, for tasks still running (task
code that ignored its cancellation) before it closes the loop without them."""


def close_loop(loop: asyncio.AbstractEventLoop, wait_s: float = LEFTOVER_WAIT_S) -> None:
    """Close an event loop whose main coroutine returned, in bounded time: cancel what still
    runs, wait at most ``wait_s`` for it, then close. ``asyncio.run`` would wait for ever
    for a task that swallows every cancellation; such tasks are dropped (and logged)."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    awaited = [t for t in tasks if t not in LEFT_BEHIND]  # those ignored cancellation already
    if awaited:
        loop.run_until_complete(asyncio.wait(awaited, timeout=wait_s))
    left = [t for t in tasks if not t.done()]
    if left:
        log.warning("%d task(s) still running after the worker stopped (they ignore "
                    "cancellation): exiting without them", len(left))
        for task in left:
            with contextlib.suppress(AttributeError):  # reported above, not again at exit
                task._log_destroy_pending = False  # type: ignore[attr-defined]
    closing = loop.create_task(loop.shutdown_asyncgens())
    loop.run_until_complete(asyncio.wait([closing], timeout=wait_s))
    if not closing.done():
        log.warning("async generators did not close in %.0f s", wait_s)
    loop.close()


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


YOUNG_THRESHOLD = 5000
"""The least young-generation threshold of the collector while a worker owns its process
(``frozen``; Python's default is 700)."""

YOUNG_PER_SLOT = 200
"""How much the young-generation threshold grows with each job slot (``young_threshold``)."""

YOUNG_MOST = 100_000
"""The young-generation threshold stops growing there (500 slots): it also bounds how many
container objects of cyclic garbage can pile up between two young passes."""


def young_threshold(concurrency: int) -> int:
    """The collector's young-generation threshold for a worker of ``concurrency`` slots that
    owns its process: ``YOUNG_PER_SLOT`` a slot, at least ``YOUNG_THRESHOLD``, at most
    ``YOUNG_MOST``.

    Each attempt that awaits I/O holds container objects alive while it waits (its asyncio
    Task, a dozen coroutines, the futures, timers and closures of its client's command):
    up to ~90 for one redis-py command, ~9,000 for a worker of 100 slots. A young pass is
    set off by the count of objects allocated less those freed since the last pass, and
    that count never goes below 0: right after a pass, the objects of the attempts then in
    flight are freed without counting down while their successors count up, so the count
    climbs back to the size of the live set at each turnover of the slots, garbage or not.
    With a threshold under that size, a young pass ran every ~150 such jobs, found nothing
    and walked every live attempt again (3-10 µs of worker CPU per job that sends one
    redis-py command, 2-core VM); over it, young passes run as garbage accrues."""
    return min(YOUNG_MOST, max(YOUNG_THRESHOLD, YOUNG_PER_SLOT * concurrency))


@contextlib.contextmanager
def frozen(owns_process: bool, concurrency: int) -> Iterator[None]:
    """While a worker that owns its process runs: what start-up made (modules, tasks, the
    lifespan's state) is collected once, then moved out of the cyclic collector's reach
    (``gc.freeze``), so that a full collection scans what jobs allocate, not the whole
    heap; and young-generation passes run less often (``young_threshold`` of the worker's
    ``concurrency``, unless the process turned automatic collection off). Both are undone
    when the run ends (the threshold put back as it was when the run started), so a process
    that runs a worker again (or goes on to other work) collects the old run's objects as
    usual."""
    if not owns_process:
        yield
        return
    gc.collect()
    gc.freeze()
    # A job allocates a few dozen container objects (its asyncio Task, coroutines, Context,
    # partials), nearly all freed by reference counting: at the default threshold (700) a
    # young-generation pass runs every few jobs and rescans the live attempts each time
    # (see ``young_threshold``). A threshold of 0 is the process's "no automatic
    # collection": left alone.
    thresholds = gc.get_threshold()
    if thresholds[0]:
        gc.set_threshold(max(thresholds[0], young_threshold(concurrency)), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
