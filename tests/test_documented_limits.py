"""README claims about limits and health checks that no other test checked.

- *Job ids and dedup* ("Dedup is per queue") and *Priorities* ("a queue's maximum length
  ... and job-id deduplication apply to each level separately"): one job id enqueued on two
  queues, and on the three levels of one queue, makes a job on each, and each runs; the same
  id again on the same queue and level enqueues nothing.
- *Running Redis for asyncjobs*, *When Redis is full*: "`asyncjobs check` warns from 90 % of
  `maxmemory`" (a real ``redis-server`` filled to about 95 % and 85 % of its maximum; the
  threshold itself, at exactly 90 %, on the pure ``judge``).
- *Running Redis for asyncjobs*, *Eviction policy*: "Where a managed Redis hides its
  configuration (`INFO`, `CONFIG` denied), [workers, `create_pool()` and `asyncjobs check`]
  say so once and carry on" (a real ``redis-server`` with an ACL user denied ``INFO`` and
  ``CONFIG``).
- *Backpressure*, *Never refused, never dropped*: "dead-letter requeues may take a queue past
  its maximum, and producers then wait until it is back under" (``Admin.requeue`` and
  ``Admin.requeue_all``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

import asyncjobs
from asyncjobs import Context, JobState, QueueFull
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.health import RedisSettings, judge
from asyncjobs._routing import Priority

from .conftest import Backend, running
from .procs import run_cli
from .test_backpressure import length

ran: list[tuple[str, str, int]] = []


@asyncjobs.task
async def note(ctx: Context, n: int) -> int:
    ran.append((ctx.queue, ctx.job_id, n))
    return n


@asyncjobs.task(max_tries=1)
async def doomed(ctx: Context, n: int) -> None:
    raise ValueError(f"doomed {n}")


# -- Dedup is per queue, and per priority level --------------------------------------------


@pytest.mark.asyncio
async def test_one_job_id_makes_a_job_per_queue_and_per_level_and_one_per_level(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    ran.clear()
    places: list[tuple[str, Priority | None]] = [
        ("dd-a", None), ("dd-b", None), ("dd-lv", "high"), ("dd-lv", "normal"), ("dd-lv", "low")]
    first = [await pool.enqueue(note.options(job_id="same", queue=q, priority=p), n)
             for n, (q, p) in enumerate(places)]
    assert [h.queue for h in first] == ["dd-a", "dd-b", "dd-lv@high", "dd-lv", "dd-lv@low"]
    assert {h.id for h in first} == {"same"}
    # the contrast: the same id again on the same queue and level enqueues nothing
    again = [await pool.enqueue(note.options(job_id="same", queue=q, priority=p), 100 + n)
             for n, (q, p) in enumerate(places)]
    assert [(h.id, h.queue) for h in again] == [(h.id, h.queue) for h in first]
    for handle in first:
        assert await handle.status() is JobState.QUEUED
        assert await length(pool, handle.queue) == 1
    await backend.run(backend.worker([note], burst=True, queues=["dd-a", "dd-b", "dd-lv"]))
    assert sorted(ran) == sorted((h.queue, "same", n) for n, h in enumerate(first))
    for n, handle in enumerate(first):
        assert await handle.result(timeout=5) == n


# -- asyncjobs check warns from 90 % of maxmemory --------------------------------------------

MEMORY_LINE = re.compile(r"^warning: Redis memory is (\d+)% of maxmemory: at 100 % enqueues "
                         r"fail \(RedisFull\) until workers drain the queues$", re.MULTILINE)


async def _set_share(client: aioredis.Redis, share: float) -> None:
    """Set maxmemory so that used_memory is about ``share`` of it."""
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", int(used / share))


async def _share(client: aioredis.Redis) -> float:
    memory = await client.info("memory")
    return int(memory["used_memory"]) / int(memory["maxmemory"])


@pytest.mark.slow
@pytest.mark.asyncio
async def test_check_warns_from_90_percent_of_maxmemory(fresh_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(fresh_redis.url)
    env = {"ASYNCJOBS_REDIS_URL": fresh_redis.url, "ASYNCJOBS_PREFIX": f"t{secrets.token_hex(4)}"}
    try:
        assert (await client.config_get("maxmemory-policy"))["maxmemory-policy"] == "noeviction"
        # 8 MB of data, so that the check's own connection (some KB) moves the share little
        # (in 64 KB keys: one 8 MB command would leave a query buffer that shrinks later)
        for n in range(128):
            await client.set(f"padding:{n}", b"x" * (64 * 1024))
        await _set_share(client, 0.95)
        near = await asyncio.to_thread(run_cli, "check", env=env)
        assert 0.9 <= await _share(client) < 1.0  # the setting did what the test says
        assert "Traceback" not in near.stderr
        [percent] = MEMORY_LINE.findall(near.stderr)
        assert 90 <= int(percent) < 100, near.stderr
        assert "unhealthy: Redis memory" not in near.stderr  # a warning, not a problem

        await _set_share(client, 0.85)
        below = await asyncio.to_thread(run_cli, "check", env=env)
        assert 0.8 < await _share(client) < 0.9
        assert "Traceback" not in below.stderr
        assert "warning: Redis persists nothing" in below.stderr  # it does warn, ...
        assert "of maxmemory" not in below.stderr  # ... but not of memory
    finally:
        await client.aclose()


def test_the_memory_warning_starts_at_exactly_90_percent() -> None:
    def warned(used: int, maxmemory: int) -> list[str]:
        verdict = judge(RedisSettings(policy="noeviction", maxmemory=maxmemory,
                                      used_memory=used, aof=True, rdb=True))
        assert verdict.errors == []
        return verdict.warnings

    assert warned(900, 1000) == ["Redis memory is 90% of maxmemory: at 100 % enqueues fail "
                                 "(RedisFull) until workers drain the queues"]
    assert warned(8999, 10000) == []
    assert warned(1000, 0) == []  # no maxmemory: no share to tell


# -- A Redis that denies INFO and CONFIG: say so once and carry on --------------------------

HIDDEN = ("cannot check Redis's configuration (INFO, CONFIG GET not allowed): eviction "
          "policy and persistence unknown")


@asynccontextmanager
async def denying_info_and_config(server: RedisServer) -> AsyncIterator[str]:
    """The URL of an ACL user that may run every command but ``INFO`` and ``CONFIG``."""
    admin = aioredis.Redis.from_url(server.url)
    try:
        await admin.acl_setuser("probe", enabled=True, nopass=True, keys=["*"], channels=["*"],
                                commands=["+@all", "-info", "-config"])
        url = server.url.replace("redis://", "redis://probe:@")
        probe = aioredis.Redis.from_url(url)
        try:  # the user is what the test says: INFO and CONFIG refused, the rest allowed
            with pytest.raises(NoPermissionError):
                await probe.info("memory")
            with pytest.raises(NoPermissionError):
                await probe.config_get("save")
            assert await probe.ping()
        finally:
            await probe.aclose()
        yield url
    finally:
        await admin.aclose()


def hidden_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "cannot check Redis's configuration" in r.getMessage()]


@pytest.mark.asyncio
async def test_create_pool_on_a_redis_denying_info_and_config_says_so_once_and_enqueues(
        fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    async with denying_info_and_config(fresh_redis) as url:
        with caplog.at_level(logging.DEBUG):
            async with asyncjobs.create_pool(url, prefix=prefix) as pool:
                job = await pool.enqueue(note.options(queue="acl"), 1)
                assert await job.status() is JobState.QUEUED
                assert await length(pool, "acl") == 1
        [record] = hidden_lines(caplog)
        assert record.getMessage().endswith(HIDDEN)
        assert record.levelno == logging.WARNING
        caplog.clear()
        with caplog.at_level(logging.DEBUG):  # a pool that accepts any policy checks nothing
            async with asyncjobs.create_pool(url, prefix=prefix, allow_eviction=True) as pool:
                await pool.enqueue(note.options(queue="acl"), 2)
        assert hidden_lines(caplog) == []


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_worker_and_check_on_a_redis_denying_info_and_config_say_so_once_and_carry_on(
        fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    ran.clear()
    prefix = f"t{secrets.token_hex(4)}"
    async with denying_info_and_config(fresh_redis) as url:
        backend = Backend("real", url, url_factory(url), prefix)
        caplog.set_level(logging.INFO, logger="asyncjobs")
        # (the pool skips its own check: create_pool's is the test above)
        async with (backend.pool(check=False) as pool,
                    running(backend, backend.worker([note], queues=["acl"]))):
            job = await pool.enqueue(note.options(queue="acl"), 7)
            assert await job.result(timeout=10) == 7
            env = {"ASYNCJOBS_REDIS_URL": url, "ASYNCJOBS_PREFIX": prefix}
            check = await asyncio.to_thread(run_cli, "check", "-q", "acl", env=env)
        assert ran == [("acl", job.id, 7)]
        [record] = hidden_lines(caplog)  # the worker said so once, in its banner
        assert record.getMessage().endswith(HIDDEN)
        assert record.levelno == logging.WARNING
        # check: healthy (a live worker serves the queue), with the one line as a warning
        assert check.returncode == 0, check.stderr
        assert check.stdout.strip() == "healthy"
        assert check.stderr.splitlines() == [f"warning: {HIDDEN}"]


# -- Dead-letter requeues may take a queue past its maximum ----------------------------------


@pytest.mark.asyncio
async def test_dead_letter_requeues_take_a_queue_past_its_maximum(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    dead = [await pool.enqueue(doomed.options(job_id=f"dead-{n}", queue="dlq"), n)
            for n in range(3)]
    await backend.run(backend.worker([doomed], burst=True, queues=["dlq"]))
    for job in dead:
        assert await job.status() is JobState.FAILED
    assert (await pool.admin.queue_stats("dlq")).dead == 3
    assert await length(pool, "dlq") == 0

    await pool.admin.set_max_length("dlq", 2)
    await pool.enqueue_many([asyncjobs.call(note.options(queue="dlq"), n) for n in range(2)])
    with pytest.raises(QueueFull):  # full: a producer is refused
        await pool.enqueue(note.options(queue="dlq"), 2)
    assert await length(pool, "dlq") == 2

    assert await pool.admin.requeue(["dead-0"], "dlq") == {"dead-0": "queued"}
    assert await length(pool, "dlq") == 3  # one past the maximum
    report = await pool.admin.requeue_all("dlq")
    assert (report.requeued, report.left) == (2, 0)
    assert await length(pool, "dlq") == 5  # three past it
    for job in dead:
        assert await job.status() is JobState.QUEUED
    stats = await pool.admin.queue_stats("dlq")
    assert (stats.max_length, stats.waiting, stats.dead) == (2, 5, 0)
    with pytest.raises(QueueFull):  # producers wait until it is back under
        await pool.enqueue(note.options(queue="dlq"), 3)
    assert await length(pool, "dlq") == 5
