"""A start answered late (asyncjobs/_worker/late.py). take.lua and start.lua start a job in
Redis; the worker hears of it only when the answer comes. While the answer is held up (a
Redis stall that began right after the call ran, a lagging loop), the job's entry is idle
and unknown to the worker's keep-alive, so another worker takes it over as a dead
worker's, and runs it. The late answer must then not run it a second time: the worker
confirms a late start's entries (one touch) before running anything.

Each test holds up the answer of worker A's start (of a take, of a take sent behind a
blocking read, of a reclaim's start) longer than the reclaim threshold; worker B, started
meanwhile, takes the job over and runs it; then A's answer arrives. On the old code A ran
it too."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.store import QueueStore, taken_from
from asyncjobs._worker import fetcher, late
from asyncjobs._worker.reader import Reader

from .conftest import Backend, running

CLAIM_S = 3.0
"""Entries idle 1.5 s are taken over; the keep-alive refreshes every 0.5 s."""

LATE_S = 4.5
"""How long A's answer is held up: B starts, hears of A, and takes the job over well
within it."""


def test_came_late_allows_the_block_and_a_quarter_of_the_refresh_interval() -> None:
    assert not late.came_late(0.1, 0.0, 0.5)
    assert not late.came_late(0.125, 0.0, 0.5)
    assert late.came_late(0.126, 0.0, 0.5)
    assert not late.came_late(0.6, 0.5, 0.5)
    assert late.came_late(0.626, 0.5, 0.5)


class Hold:
    """Holds up the answer of the first call, once ``armed``, that started a job; calls
    ``on_wait`` as the first read with a take behind it begins once it is set."""

    def __init__(self) -> None:
        self.armed = False
        self.on_wait: Callable[[], Awaitable[Any]] | None = None
        self.holding = asyncio.Event()
        self.answered = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.path = ""

    def wait_begins(self) -> None:
        if self.on_wait is not None:
            self.tasks.append(asyncio.create_task(self.on_wait()))
            self.on_wait = None

    async def answer(self, got: Any, started_any: bool, path: str) -> Any:
        if self.armed and started_any:
            self.armed = False
            self.path = path
            self.holding.set()
            await asyncio.sleep(LATE_S)
            self.answered.set()
        return got


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["take", "wait_then_take", "reclaim"])
async def test_a_job_taken_over_while_its_start_was_answered_late_runs_once(
        real: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        path: str) -> None:
    caplog.set_level(logging.WARNING, logger="asyncjobs.worker")
    runs: Counter[str] = Counter()
    ran_before_answer: list[bool] = []
    hold = Hold()
    enqueued: list[asyncjobs.Job[Any]] = []

    async def on_wait() -> None:
        hold.armed = True
        enqueued.append(await pool.enqueue(counted))

    @asyncjobs.task(name="counted")
    async def counted(ctx: Context) -> None:
        runs[ctx.job_id] += 1
        ran_before_answer.append(not hold.answered.is_set())

    @asyncjobs.task(name="warm")
    async def warm(ctx: Context) -> None:
        # this job's first step runs before A's fetch loop goes on to its next wait
        hold.on_wait = hold.on_wait or on_wait

    take_levels = fetcher.take_levels
    wait_then_run = Reader.wait_then_run
    start = QueueStore.start

    async def held_take(*args: Any, **kwargs: Any) -> Any:
        got = await take_levels(*args, **kwargs)
        return await hold.answer(got, bool(got.rows), "take")

    async def held_wait_then_run(self: Reader, *args: Any, **kwargs: Any) -> Any:
        hold.wait_begins()
        woke, ran = await wait_then_run(self, *args, **kwargs)
        rows = not isinstance(ran, Exception) and bool(taken_from(ran).rows)
        return await hold.answer((woke, ran), rows, "wait_then_take")

    async def held_start(self: QueueStore, *args: Any, **kwargs: Any) -> Any:
        got = await start(self, *args, **kwargs)
        return await hold.answer(got, bool(got), "reclaim")

    monkeypatch.setattr(fetcher, "take_levels", held_take)
    monkeypatch.setattr(Reader, "wait_then_run", held_wait_then_run)
    monkeypatch.setattr(QueueStore, "start", held_start)
    a = real.worker([counted, warm], claim_timeout=CLAIM_S)
    b = real.worker([counted, warm], claim_timeout=CLAIM_S)
    async with real.pool() as pool:
        if path == "take":  # waiting when A starts: its first take takes it
            job = await pool.enqueue(counted)
            hold.armed = True
        elif path == "reclaim":  # held by a consumer that died: A reclaims it
            job = await pool.enqueue(counted)
            store = pool.store("default")
            await store.ensure_group()
            [dead] = await store.take("dead", 1)
            assert dead.verdict == "run"
            hold.armed = True
        async with running(real, a):
            if path == "wait_then_take":
                # Once A has run a job, its wait has a take behind it: the job is enqueued
                # as that wait begins, and taken as it ends
                await (await pool.enqueue(warm)).result(timeout=10)
            await asyncio.wait_for(hold.holding.wait(), 15)
            assert hold.path == path
            if path == "wait_then_take":
                [job] = enqueued
            began = time.monotonic()
            assert (await job.info()).state == asyncjobs.JobState.RUNNING  # started by A
            async with running(real, b):
                await asyncio.wait_for(hold.answered.wait(), LATE_S + 2)
                await asyncio.sleep(1.0)  # A has had its answer: it would run it by now
                assert await job.result(timeout=10) is None
        assert time.monotonic() - began >= LATE_S - 0.1
    assert runs == {job.id: 1}
    assert ran_before_answer == [True], "B did not take the job over in time: no test"
    warned = [r.getMessage() for r in caplog.records
              if "taken over by another worker before they started here" in r.getMessage()]
    assert len(warned) == 1 and job.id in warned[0], warned
