"""A job's end is published only while someone waits for that job.

``Job.result()`` registers the job's id in the queue's ``waiting`` set (scored with when the
registration lapses); a settle publishes an end only for the jobs of its batch registered
there. A waiter of one job therefore does not make every other job's settle publish, and a
waiter is still woken by the notice (the record's safety re-read is pushed out to 10
minutes here, so a result seen in time came by pub/sub).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

import asyncjobs
from asyncjobs import Context
from asyncjobs._producer import handle
from asyncjobs._redis.keys import Keys

from .conftest import Backend, Running

N = 60


@asyncjobs.task(name="echo")
async def echo(ctx: Context, i: int) -> int:
    return i


@pytest.fixture(autouse=True)
def no_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handle, "_RECHECK_S", 600.0)


async def publishes(client: Redis) -> int:
    stats: dict[str, Any] = await client.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


async def registered(pool: asyncjobs.Pool, queue: str, count: int = 1) -> None:
    """Until `count` waiters are registered in the queue's waiting set."""
    waiting = pool.keys(queue).waiting
    for _ in range(500):
        if await pool.client.zcard(waiting) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the waiters never registered")


async def drain_with_one_waiter(backend: Backend, pool: asyncjobs.Pool, waited: int | None,
                                queue: str = "default") -> tuple[int, int | None]:
    """Enqueue N jobs, wait for job `waited` (None: for none), drain them with a burst
    worker; returns (PUBLISH calls during the drain, the waited job's result)."""
    jobs = [await pool.enqueue(echo, i) for i in range(N)]
    waiter = None
    if waited is not None:
        waiter = asyncio.ensure_future(jobs[waited].result(timeout=30))
        await registered(pool, queue)
    before = await publishes(pool.client)
    await backend.run(backend.worker([echo], burst=True, concurrency=10, queues=[queue]))
    after = await publishes(pool.client)
    return after - before, (await waiter if waiter is not None else None)


@pytest.mark.asyncio
async def test_a_waiter_of_one_job_makes_only_that_job_s_end_published(real: Backend) -> None:
    """Two drains of N jobs on a real Redis: with a waiter on one job the drain publishes
    exactly one message more than with none (before, every end of the queue was published
    while anyone waited), and the waiter gets its value."""
    async with real.pool() as pool:
        quiet, _ = await drain_with_one_waiter(real, pool, None)
    async with real.pool(queue="other") as pool:
        one, value = await drain_with_one_waiter(real, pool, 17, "other")
    assert value == 17
    assert one == quiet + 1, (quiet, one)


@pytest.mark.asyncio
async def test_a_result_comes_by_notice_with_waiters_on_other_jobs_too(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """Waiters on three jobs, two of them for the same job, one of those two giving up
    first: the other still hears its end at once (the registration is the job's, not the
    waiter's, and leaving does not remove it)."""
    async with Running(backend, backend.worker([slow_echo], concurrency=10)):
        a = await pool.enqueue(slow_echo, 1, 0.5)
        b = await pool.enqueue(slow_echo, 2, 0.8)
        waiters = asyncio.gather(a.result(), b.result())
        await registered(pool, "default", 2)
        with pytest.raises(asyncjobs.ResultTimeout):
            await b.result(timeout=0.1)  # a second waiter of b gives up
        results = await asyncio.wait_for(waiters, 10)
    assert results == [1, 2]


@asyncjobs.task(name="slow_echo")
async def slow_echo(ctx: Context, i: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return i


@pytest.mark.asyncio
async def test_garbage_in_the_waiting_key_publishes_every_end(backend: Backend,
                                                              pool: asyncjobs.Pool) -> None:
    """A waiting key that is not a sorted set (a string, then a hash) breaks no settle: every
    end is published, so a waiter is still woken by its notice."""
    waiting = Keys(backend.prefix, "default").waiting
    for garbage in ("string", "hash"):
        job = await pool.enqueue(slow_echo, 3, 0.3)
        async with Running(backend, backend.worker([slow_echo])):
            waiter = asyncio.ensure_future(job.result(timeout=10))
            await registered(pool, "default")
            await pool.client.delete(waiting)
            if garbage == "string":
                await pool.client.set(waiting, "not a sorted set")
            else:
                await pool.client.hset(waiting, "a", "b")
            assert await asyncio.wait_for(waiter, 10) == 3
        await pool.client.delete(waiting)


@pytest.mark.asyncio
async def test_a_lapsed_registration_is_not_waited_for(real: Backend) -> None:
    """Registrations whose lapse time has passed (their waiters died) are not waiters: a
    drain of those jobs publishes no more than a drain nobody waits for, and the next
    registration prunes them."""
    async with real.pool() as pool:
        quiet, _ = await drain_with_one_waiter(real, pool, None)
    async with real.pool(queue="other") as pool:
        waiting = pool.keys("other").waiting
        jobs = [await pool.enqueue(echo, i) for i in range(N)]
        await pool.client.zadd(waiting, {job.id: 1 for job in jobs})  # lapsed in 1970
        before = await publishes(pool.client)
        await real.run(real.worker([echo], burst=True, concurrency=10, queues=["other"]))
        assert await publishes(pool.client) - before == quiet
        assert await jobs[0].result(timeout=5) == 0
        assert await pool.client.zcard(waiting) == 1  # the lapsed ones pruned
        assert (await pool.client.zscore(waiting, jobs[0].id) or 0) > 1
