"""Delayed jobs, cron and the single-leader scheduler, across real worker processes."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import AbstractContextManager
from datetime import datetime

import pytest

import asyncjobs
from asyncjobs import Context, JobState

from .apps import crons
from .conftest import Backend, running
from .procs import WorkerProcess
from .procs import workers as procs_workers

pytestmark = [pytest.mark.asyncio]
TARGET = "tests.apps.crons:worker"


def workers(
    backend: Backend, count: int, **env: str
) -> AbstractContextManager[list[WorkerProcess]]:
    return procs_workers(TARGET, backend.url or "", backend.prefix, count, **env)


def tick_seconds(ids: set[bytes]) -> list[int]:
    """The fire times (epoch seconds) of tick job ids like cron:every-second:<iso>."""
    out = []
    for raw in ids:
        stamp = raw.decode().split(":", 2)[2]
        out.append(int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()))
    return sorted(out)


async def assert_each_tick_once(pool: asyncjobs.Pool, prefix: str, seconds: list[int]) -> None:
    assert len(seconds) == len(set(seconds))
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "a tick is missing"
    runs = await pool.client.mget(
        [f"{prefix}:tickruns:{tid}" for tid in
         [m.decode() for m in await pool.client.smembers(f"{prefix}:ticks")]]
    )
    assert {int(r) for r in runs} == {1}, "a tick ran more than once"


@pytest.mark.slow
async def test_three_workers_run_each_cron_tick_exactly_once(real: Backend) -> None:
    async with real.pool() as pool:
        with workers(real, 3):
            await asyncio.sleep(10)
        await asyncio.sleep(0.5)  # let the last tick finish
        seconds = tick_seconds(await pool.client.smembers(f"{real.prefix}:ticks"))
        assert len(seconds) >= 8
        await assert_each_tick_once(pool, real.prefix, seconds)


def _leader(procs: list[WorkerProcess]) -> WorkerProcess:
    leading = [p for p in procs if "scheduler leads queue default" in p.output]
    assert len(leading) == 1, [p.output[-500:] for p in procs]
    return leading[0]


@pytest.mark.slow
async def test_leader_killed_another_leads_within_the_ttl_and_no_tick_is_lost(
    real: Backend,
) -> None:
    ttl = 2.0
    async with real.pool() as pool:
        with workers(real, 3, TEST_LEASE_TTL=str(ttl)) as procs:
            await asyncio.sleep(3)
            leader = _leader(procs)
            leader.kill()
            killed = time.monotonic()
            others = [p for p in procs if p is not leader]
            while not any("scheduler leads queue default" in p.output for p in others):
                assert time.monotonic() - killed < ttl + 1.0, "no new leader within the TTL"
                await asyncio.sleep(0.02)
            took_over_s = time.monotonic() - killed
            await asyncio.sleep(4)
        await asyncio.sleep(0.5)
        seconds = tick_seconds(await pool.client.smembers(f"{real.prefix}:ticks"))
        # Ticks that came due during the failover were late by less than the 60 s grace,
        # so every policy runs them: none lost, none doubled.
        await assert_each_tick_once(pool, real.prefix, seconds)
    assert took_over_s <= ttl + 0.5, f"took over after {took_over_s:.2f} s"
    assert len(seconds) >= 8


@pytest.mark.slow
async def test_five_thousand_delayed_jobs_run_exactly_once_across_three_workers(
    real: Backend,
) -> None:
    async with real.pool() as pool:
        calls = [asyncjobs.call(crons.delayed.options(delay=3 + i / 5000), i)
                 for i in range(5000)]
        jobs = await pool.enqueue_many(calls)
        assert await pool.client.zcard(pool.keys("default").delayed) == 5000
        keys = [f"{real.prefix}:runs:{j.id}" for j in jobs]
        with workers(real, 3):
            deadline = time.monotonic() + 40
            while sum(int(r or 0) for r in await pool.client.mget(keys)) < 5000:
                assert time.monotonic() < deadline, "not all delayed jobs ran"
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # would a job run twice?
        runs = await pool.client.mget(keys)
    assert [int(r or 0) for r in runs] == [1] * 5000


async def test_racing_promotions_neither_duplicate_nor_lose(backend: Backend,
                                                            pool: asyncjobs.Pool) -> None:
    n = 3000
    jobs = await pool.enqueue_many(
        asyncjobs.call(crons.delayed.options(delay=0.2), i) for i in range(n)
    )
    await asyncio.sleep(0.3)
    store = pool.store("default")
    others = [asyncjobs.Pool(backend.factory(max_connections=4, socket_timeout=5),
                             prefix=backend.prefix) for _ in range(2)]
    try:
        async def promote_all(p: asyncjobs.Pool) -> int:
            total = 0
            while True:
                done = await p.store("default").promote(100, 60)
                total += done.promoted
                if done.promoted == 0:
                    return total
        counts = await asyncio.gather(*(promote_all(p) for p in others))
    finally:
        for p in others:
            await p.close()
    assert sum(counts) == n and all(c > 0 for c in counts)  # both took part
    entries = await pool.client.xrange(store.keys.stream)
    ids = [fields[b"i"].decode() for _, fields in entries]
    assert sorted(ids) == sorted(j.id for j in jobs)  # each exactly once
    for job in jobs[:: n // 30]:
        assert await job.status() is JobState.QUEUED
    assert await pool.client.zcard(store.keys.delayed) == 0


async def test_expired_at_promotion_is_logged_and_counted(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    job = await pool.enqueue(crons.delayed.options(delay=0.3, expires=0.1), 1)
    caplog.set_level("INFO", logger="asyncjobs")
    await backend.run(backend.worker([crons.delayed], burst=True))
    assert await job.status() is JobState.EXPIRED
    assert re.search(r"expired 1 job\(s\) on queue default before", caplog.text)


async def test_a_cron_name_with_a_colon_fires(backend: Backend, pool: asyncjobs.Pool) -> None:
    ticks: list[str] = []

    @asyncjobs.task(name="report")
    async def report(ctx: Context) -> None:
        ticks.append(ctx.job_id)

    job = asyncjobs.cron(report, every=0.2, name="reports:daily", no_overlap=True)
    async with running(backend, backend.worker([report], cron=[job])):
        for _ in range(100):
            if len(ticks) >= 2:
                break
            await asyncio.sleep(0.05)
    assert len(ticks) >= 2 and all(t.startswith("cron:reports:daily:") for t in ticks)
    with pytest.raises(ValueError, match="may not end with ':job'"):
        asyncjobs.cron(report, every=1, name="nightly:job")
