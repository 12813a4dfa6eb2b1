"""A queue whose stream is overwritten while the worker runs its jobs (an operator's SET on
the wrong key): the keep-alive says so in one line and goes on touching the worker's other
queues. It raised instead ("internal error in the keep-alive loop", a traceback), and the
loop's restart pause left every queue's entries untouched, so another worker could take
over and run their jobs a second time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.keys import GROUP

from .conftest import Backend, running

started: dict[str, asyncio.Event] = {}


@asyncjobs.task
async def hold(ctx: Context, name: str, seconds: float) -> str:
    started[name].set()
    await asyncio.sleep(seconds)
    return name


@pytest.mark.asyncio
async def test_one_refused_queue_leaves_the_others_kept_alive(
        real: Backend, caplog: pytest.LogCaptureFixture) -> None:
    # (real Redis only: fakeredis itself fails on a stream key holding a string)
    backend = real
    caplog.set_level(logging.INFO, "asyncjobs")
    started.clear()
    started.update(good=asyncio.Event(), bad=asyncio.Event())
    async with backend.pool(queue="good") as pool:
        good = await pool.enqueue(hold, "good", 4.0)
        await pool.enqueue(hold.options(queue="bad"), "bad", 4.0)
        worker = backend.worker([hold], queues=["good", "bad"], claim_timeout=1.0,
                                concurrency=4)
        async with running(backend, worker):
            await asyncio.wait_for(started["good"].wait(), 10)
            await asyncio.wait_for(started["bad"].wait(), 10)
            await pool.client.delete(pool.keys("bad").stream)
            await pool.client.set(pool.keys("bad").stream, "overwritten by hand")
            stream = pool.keys("good").stream
            most_idle = 0
            for _ in range(25):  # 2.5 s: several keep-alive rounds (every 1/3 s)
                rows = await pool.client.xpending_range(stream, GROUP, "-", "+", 10)
                most_idle = max([most_idle, *(int(r["time_since_delivered"]) for r in rows)])
                await asyncio.sleep(0.1)
            # touched all along: never idle for the claim timeout (1 s), so never reclaimed
            assert most_idle < 1000
            assert await good.result(timeout=10) == "good"
    said = [r for r in caplog.records
            if "queue bad: the jobs this worker runs from it cannot be kept alive" in
            r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None, [r.getMessage() for r in said]
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


@pytest.mark.asyncio
async def test_a_stream_made_a_string_while_its_group_is_made_again_is_left_alone(
        real: Backend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The race of an operator's DEL then SET on a queue's stream: the take finds the group
    gone (NOGROUP), and by the time the worker makes it again the key holds a string. That
    refusal escaped the fetch loop ("internal error", a traceback, every queue's fetching
    paused); now that queue is left alone like any unreadable one, the others go on."""
    from asyncjobs._worker import fetcher

    remake = fetcher._regroup

    async def overwritten_first(store: Any) -> None:
        await store.client.set(store.keys.stream, "overwritten by hand")
        await remake(store)

    monkeypatch.setattr(fetcher, "_regroup", overwritten_first)
    started.clear()
    started.update(good=asyncio.Event(), bad=asyncio.Event())
    async with real.pool(queue="good") as pool:
        worker = real.worker([hold], queues=["bad", "good"], concurrency=4)
        async with running(real, worker):
            await pool.client.delete(pool.keys("bad").stream)  # NOGROUP at the next take
            await pool.enqueue(hold.options(queue="bad"), "bad", 0)  # wakes the worker
            good = await pool.enqueue(hold, "good", 0)
            assert await good.result(timeout=20) == "good"
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert [r for r in caplog.records if "queue bad cannot be read" in r.getMessage()]
