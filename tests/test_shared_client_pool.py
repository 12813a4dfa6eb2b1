"""A Redis client that a worker's tasks share is the application's, sized by it: redis-py 8
gives a pool 100 connections unless told otherwise, so with more jobs than that using it at
once, the ones past 100 raise ``MaxConnectionsError`` (the README says so next to
``concurrency``). Each such job ends visibly, as any exception of a task does; a client made
with ``max_connections`` of the concurrency runs them all. Nothing here is timed: the jobs
hold their connections (a blocking pop) until the test has seen every job held or failed."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs import JobState
from asyncjobs._redis.embedded import RedisServer

from .test_hostile import until

CONCURRENCY = 150
REDIS_PY_DEFAULT = 100
_shared: list[aioredis.Redis] = []


@asyncjobs.task(name="shared_hold", max_tries=1)
async def hold(ctx: asyncjobs.Context, key: str) -> None:
    await _shared[0].blpop([key], timeout=60)


def _name() -> str:
    """A name for the shared client's connections, so that only its pops are counted."""
    return f"shared-{secrets.token_hex(4)}"


async def _run(url: str, client: aioredis.Redis) -> tuple[int, list[asyncjobs.JobInfo]]:
    """Enqueue CONCURRENCY jobs that each block on the shared client, run a worker of that
    concurrency until every job holds a connection or has failed, release them; returns how
    many held one, and every job's info."""
    prefix, key = f"t{secrets.token_hex(4)}", f"release:{secrets.token_hex(4)}"
    name = client.get_connection_kwargs()["client_name"]
    _shared[:] = [client]
    probe = aioredis.Redis.from_url(url)
    try:
        async with asyncjobs.create_pool(url, prefix=prefix) as pool:
            jobs = await pool.enqueue_many([asyncjobs.call(hold, key)] * CONCURRENCY)
            worker = asyncjobs.Worker([hold], prefix=prefix, concurrency=CONCURRENCY,
                                      burst=True)
            run = asyncio.create_task(worker.run(redis_url=url))

            async def blocked() -> int:  # this client's pops (the worker blocks in reads)
                return sum(c["cmd"] == "blpop" and c["name"] == name
                           for c in await probe.client_list())

            async def failed() -> int:  # the queue's counter: one round trip, not one a job
                return (await pool.admin.queue_stats()).counters.get("failed", 0)

            async def settled() -> bool:
                return await blocked() + await failed() == CONCURRENCY

            await until(settled, 30, "every job holding a connection or failed")
            held = await blocked()
            await probe.rpush(key, *(["go"] * held))
            await asyncio.wait_for(run, 30)
            return held, [await j.info() for j in jobs]
    finally:
        await probe.aclose()
        await client.aclose()


@pytest.mark.asyncio
async def test_a_shared_client_of_redis_py_s_default_size_fails_the_jobs_past_it(
        redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url, client_name=_name())
    assert client.connection_pool.max_connections == REDIS_PY_DEFAULT
    held, infos = await _run(redis_server.url, client)
    assert held == REDIS_PY_DEFAULT
    done = [i for i in infos if i.state is JobState.COMPLETE]
    failed = [i for i in infos if i.state is JobState.FAILED]
    assert len(done) == REDIS_PY_DEFAULT and len(failed) == CONCURRENCY - REDIS_PY_DEFAULT
    assert {e.type for i in failed for e in i.errors} == {
        "redis.exceptions.MaxConnectionsError"}


@pytest.mark.asyncio
async def test_a_shared_client_sized_to_the_concurrency_runs_every_job(
        redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url, max_connections=CONCURRENCY,
                                     client_name=_name())
    held, infos = await _run(redis_server.url, client)
    assert held == CONCURRENCY
    assert [i.state for i in infos] == [JobState.COMPLETE] * CONCURRENCY
