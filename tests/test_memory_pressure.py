"""Redis under memory pressure: a full Redis drains instead of deadlocking, and a Redis
that may evict jobs is refused (unless the user opts in).

Regression (88efe40, `maxmemory 20mb`, `noeviction`): enqueue stopped with a raw
`OutOfMemoryError`, and then `asyncjobs worker` could not start at all (OutOfMemoryError
while creating its consumer group): the one thing that would free memory was impossible.
With `allkeys-lru` the worker started without a word although Redis could evict jobs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.embedded import RedisServer

from .procs import run_cli

pytestmark = [pytest.mark.real_redis]

ran: Counter[str] = Counter()


@asyncjobs.task
async def record(ctx: Context, payload: str) -> None:
    ran[ctx.job_id] += 1


async def fill(pool: asyncjobs.Pool) -> list[str]:
    """Enqueue until Redis refuses a whole batch; returns the ids of the jobs that got in."""
    accepted: list[str] = []
    for _ in range(1000):
        batch = [asyncjobs.call(record, "x" * 200) for _ in range(200)]
        try:
            jobs = await pool.enqueue_many(batch)
        except asyncjobs.RedisFull as full:
            refused = full
        else:
            accepted += [j.id for j in jobs]
            continue
        reasons = refused.reasons.values()
        assert all(r.startswith("OOM") for r in reasons), refused.reasons
        accepted += [j.id for j in refused.enqueued]
        if not refused.enqueued:
            return accepted
    raise AssertionError("Redis never filled up")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_full_redis_drains_and_every_accepted_job_runs_once(
    fresh_redis: RedisServer,
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    client = aioredis.Redis.from_url(fresh_redis.url)
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", used + 4 * 1024 * 1024)
    await client.config_set("maxmemory-policy", "noeviction")
    ran.clear()
    async with asyncjobs.create_pool(fresh_redis.url, prefix=prefix) as pool:
        accepted = await fill(pool)
        assert len(accepted) > 1000
        began = time.monotonic()
        worker = asyncjobs.Worker([record], prefix=prefix, burst=True, result_ttl=0,
                                  concurrency=200)
        await asyncio.wait_for(worker.run(redis_url=fresh_redis.url), 120)
        drained_s = time.monotonic() - began
        assert set(ran) == set(accepted)
        assert max(ran.values()) == 1  # exactly once each
        after = await pool.enqueue(record, "room again")  # Redis has room again
        assert await after.status() is asyncjobs.JobState.QUEUED
        memory = await client.info("memory")
        print(f"memory pressure: {len(accepted)} jobs accepted until full, drained in "
              f"{drained_s:.1f} s; used_memory {memory['used_memory']} of {memory['maxmemory']}")
    await client.aclose()


async def _lru_redis(server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url)
    await client.config_set("maxmemory", "100mb")
    await client.config_set("maxmemory-policy", "allkeys-lru")
    await client.aclose()


@pytest.mark.asyncio
async def test_a_pool_refuses_a_redis_that_may_evict_jobs(fresh_redis: RedisServer) -> None:
    await _lru_redis(fresh_redis)
    with pytest.raises(asyncjobs.ConfigurationError, match=r"allkeys-lru.*noeviction"):
        await asyncjobs.create_pool(fresh_redis.url)
    pool = await asyncjobs.create_pool(fresh_redis.url, allow_eviction=True)
    await pool.close()


@pytest.mark.slow
def test_the_worker_and_check_refuse_an_evicting_redis_in_one_line(
    fresh_redis: RedisServer,
) -> None:
    asyncio.run(_lru_redis(fresh_redis))
    env = {"ASYNCJOBS_REDIS_URL": fresh_redis.url, "TEST_PREFIX": f"t{secrets.token_hex(4)}"}
    refused = run_cli("worker", "tests.apps.basic:worker", "--burst", env=env)
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("asyncjobs: error: Redis evicts keys when full (maxmemory-policy "
                           "allkeys-lru)")
    allowed = run_cli("worker", "tests.apps.basic:worker", "--burst", "--allow-eviction",
                      env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert "allowed by allow_eviction" in allowed.stderr
    check = run_cli("check", env=env)
    assert check.returncode == 1
    assert "unhealthy: Redis evicts keys when full" in check.stderr
    assert "warning: Redis persists nothing" in check.stderr
    assert "Traceback" not in check.stderr + refused.stderr + allowed.stderr
