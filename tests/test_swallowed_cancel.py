"""A cancellation lost on the way must not wedge a loop of the worker.

On Python 3.11, ``asyncio.wait_for`` returns the inner result when the cancellation of its
caller comes as that result does (CPython fixed it in 3.12): the keep-alive's wait used it,
so a worker's stop could wait for ever; fakeredis's reads use it too, so the metrics loop,
cancelled as a reply arrived, went on refreshing (a CI run's xdist worker was killed by the
timeout of ``test_metrics_at_the_shortest_refresh_still_refresh``).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from asyncjobs._worker.upkeep import _turn
from asyncjobs.metrics import WorkerMetrics
from asyncjobs.testing import Harness

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 4])
async def test_the_keepalive_wait_keeps_a_cancellation_that_comes_as_it_is_woken(
        turns: int) -> None:
    event = asyncio.Event()
    waiting = asyncio.create_task(_turn(event, set(), time.monotonic() + 30))
    await asyncio.sleep(0)  # it waits
    event.set()
    for _ in range(turns):  # the wake-up on its way, at each step of it
        await asyncio.sleep(0)
    if not waiting.cancel():  # it had returned already: no cancellation to keep
        assert waiting.done() and not waiting.cancelled()
        return
    await asyncio.wait({waiting}, timeout=2)
    assert waiting.cancelled()


async def test_the_metrics_loop_stops_when_a_client_swallowed_its_cancellation() -> None:
    harness = Harness()
    metrics = WorkerMetrics(worker="w", queues=["default"], concurrency=1,
                            registry=CollectorRegistry())
    refreshing = asyncio.Event()

    async def swallowing_refresh(pool: Any, executor: Any) -> None:
        refreshing.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # what the client did: the reply won, the cancellation was lost

    metrics.refresh = swallowing_refresh  # type: ignore[method-assign]
    task = asyncio.create_task(metrics.run(harness.pool, SimpleNamespace(active=0)))
    try:
        await refreshing.wait()
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        assert task.cancelled()
    finally:
        task.cancel()
        await harness.close()
