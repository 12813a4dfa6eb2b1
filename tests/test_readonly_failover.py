"""A Redis that turns replica under a running worker (a managed Redis failing over behind
one address: the old connections then get ``READONLY``). redis-py raises ``ReadOnlyError``
with the code taken off its text ("You can't write against a read only replica."), and
``OutOfMemoryError`` likewise: the worker must read both as "not now, retry", as it reads
the reply codes it sees whole, never as a bug (traceback, loop restarted) or a refusal to
record a finished job (which then ran again after the claim timeout)."""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer, free_port
from asyncjobs._worker.runtime import transient

from .conftest import Backend, running


@pytest.mark.parametrize(("exc", "expected"), [
    (ReadOnlyError("You can't write against a read only replica."), True),
    (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
    (BusyLoadingError("Redis is loading the dataset in memory"), True),
    (ResponseError("BUSY Redis is busy running a script."), True),
    (ResponseError("READONLY You can't write against a read only replica."), True),
    (ResponseError("Command # 1 (EVALSHA x) of pipeline caused error: "
                   "('READONLY You can't write against a read only replica.',)"), True),
    (NoPermissionError("this user has no permissions to run the 'xadd' command"), False),
    (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
    (ResponseError("NOGROUP No such key 'q' or consumer group 'g'"), False),
])
def test_transient_reads_the_codes_redis_py_takes_off(exc: BaseException,
                                                     expected: bool) -> None:
    assert transient(exc) is expected


runs: list[str] = []
began: dict[str, asyncio.Event] = {}


@asyncjobs.task(timeout=30)
async def slow(ctx: Context) -> str:
    runs.append(ctx.job_id)
    began["slow"].set()
    await asyncio.sleep(1.0)
    return "done"


@pytest.mark.real_redis
@pytest.mark.asyncio
async def test_a_server_turned_replica_mid_job_records_it_once_back(
        fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """The server turns replica (of a master that never answers: it keeps its data and
    refuses writes) while a job runs; the job ends, its settle gets READONLY until the
    server is master again, then records it: one run, one attempt, no error, and the worker
    logged an outage, not an internal error."""
    runs.clear()
    began["slow"] = asyncio.Event()
    caplog.set_level(logging.WARNING, "asyncjobs")
    backend = Backend("real", fresh_redis.url, url_factory(fresh_redis.url),
                      f"t{secrets.token_hex(4)}")
    admin = aioredis.Redis.from_url(fresh_redis.url)
    try:
        async with backend.pool() as pool:
            job = await pool.enqueue(slow)
            worker = backend.worker([slow], claim_timeout=2)
            async with running(backend, worker):
                await asyncio.wait_for(began["slow"].wait(), 10)
                await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
                await asyncio.sleep(2.5)  # the job ended; its settle is refused meanwhile
                assert await job.info() is not None
                await admin.execute_command("REPLICAOF", "NO", "ONE")
                assert await job.result(timeout=10) == "done"
                await asyncio.sleep(2.5)  # past the claim timeout: nothing runs it again
            info = await job.info()
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await admin.aclose()
    assert runs == [job.id]
    assert info.attempts == 1 and info.errors == ()
    messages = [r.getMessage() for r in caplog.records]
    assert any("redis unavailable" in m for m in messages), messages
    assert not any("internal error" in m or "could not record" in m for m in messages), messages


@pytest.mark.real_redis
@pytest.mark.asyncio
async def test_an_enqueue_to_a_server_turned_replica_waits_for_it_within_retry_for(
        fresh_redis: RedisServer) -> None:
    """A producer's call retries READONLY as it retries an outage: the enqueue returns once
    the server takes writes again (one job written), and past ``retry_for`` it raises
    ``RedisUnavailable`` naming READONLY (it raised redis-py's ``ReadOnlyError`` at once)."""
    admin = aioredis.Redis.from_url(fresh_redis.url)
    prefix = f"t{secrets.token_hex(4)}"
    try:
        async with asyncjobs.create_pool(fresh_redis.url, prefix=prefix, retry_for=0.3) as pool:
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
            with pytest.raises(asyncjobs.RedisUnavailable, match="READONLY You can't write"):
                await pool.enqueue(slow)
        async with asyncjobs.create_pool(fresh_redis.url, prefix=prefix, retry_for=10) as pool:

            async def promote() -> None:
                await asyncio.sleep(0.5)
                await admin.execute_command("REPLICAOF", "NO", "ONE")

            promoting = asyncio.create_task(promote())
            job = await pool.enqueue(slow)
            await promoting
            assert (await job.info()).state is asyncjobs.JobState.QUEUED
            assert await admin.xlen(pool.keys("default").stream) == 1
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await admin.aclose()
