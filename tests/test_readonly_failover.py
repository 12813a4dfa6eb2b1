"""A Redis that turns replica under a running worker (a managed Redis failing over behind
one address: the old connections then get ``READONLY``). redis-py raises ``ReadOnlyError``
with the code taken off its text ("You can't write against a read only replica."), and
``OutOfMemoryError`` likewise: the worker must read both as "not now, retry", as it reads
the reply codes it sees whole, never as a bug (traceback, loop restarted) or a refusal to
record a finished job (which then ran again after the claim timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer, free_port
from asyncjobs._redis.refusals import NOT_NOW, not_now
from asyncjobs._worker.runtime import transient

from .conftest import Backend, need_redis_server, running


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
    (ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently "
                   "unable to persist to disk."), True),
    (ResponseError("NOREPLICAS Not enough good replicas to write."), True),
])
def test_transient_reads_the_codes_redis_py_takes_off(exc: BaseException,
                                                     expected: bool) -> None:
    assert transient(exc) is expected


@pytest.mark.parametrize("code", sorted(NOT_NOW))
def test_the_worker_and_the_producer_agree_on_what_is_not_now(code: str) -> None:
    """A reply the producer retries (``not_now``) is one the worker waits out as an
    outage (``transient``): MISCONF was once missing from the worker's list, so a server
    whose disk failed made the worker log tracebacks instead of an outage."""
    exc = ResponseError(f"{code} the server cannot serve this now")
    assert not_now(exc) and transient(exc)


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


async def _fail_snapshots(admin: aioredis.Redis, snapshots: Path) -> None:
    """Make the server refuse writes with MISCONF: its snapshot directory is gone, a save
    point is set and a snapshot fails (``stop-writes-on-bgsave-error``, the default)."""
    snapshots.rmdir()  # noqa: ASYNC240 (a test directory, gone at once)
    await admin.config_set("save", "3600 1")
    await admin.bgsave()
    for _ in range(100):
        if (await admin.info("persistence"))["rdb_last_bgsave_status"] == "err":
            break
        await asyncio.sleep(0.05)
    with pytest.raises(ResponseError, match=r"^MISCONF"):
        await admin.set("probe", 1)


@contextlib.asynccontextmanager
async def snapshotting_server(tmp_path: Path
                              ) -> AsyncIterator[tuple[Backend, aioredis.Redis, Path]]:
    """A real server of its own whose snapshots go to a directory ``_fail_snapshots`` can
    take away; a backend on it and an admin client. On the way out its save points are
    cleared: with one set and its last snapshot failed, the server refuses SIGTERM (it
    cannot save) and was killed only after ``RedisServer.stop``'s 10 s."""
    need_redis_server()
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    with RedisServer(extra_args=("--dir", str(snapshots))) as server:
        admin = aioredis.Redis.from_url(server.url)
        try:
            yield Backend("real", server.url, url_factory(server.url),
                          f"t{secrets.token_hex(4)}"), admin, snapshots
        finally:
            with contextlib.suppress(RedisError, OSError):
                await admin.config_set("save", "")
            await admin.aclose()


@pytest.mark.slow  # ~9 s: two waits past the claim timeout and the refused writes' backoff
@pytest.mark.real_redis
@pytest.mark.asyncio
async def test_a_server_whose_snapshots_fail_is_waited_out_and_each_job_runs_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real server that cannot write its snapshot (its directory is gone) refuses every
    write, and PING, with MISCONF. A worker on it meanwhile: the job that was running ends
    and its settle waits; a delayed job falls due and is not moved; takes are refused. All
    of it is an outage, with no internal error and no traceback; once the
    server takes writes again each job runs, once. A worker started on such a server stops
    at once with ``RedisUnavailable`` naming MISCONF."""
    runs.clear()
    began["slow"] = asyncio.Event()
    caplog.set_level(logging.WARNING, "asyncjobs")
    async with snapshotting_server(tmp_path) as (backend, admin, snapshots), \
            backend.pool() as pool:
        first = await pool.enqueue(slow)
        later = await pool.enqueue(slow.options(delay=1.0))
        worker = backend.worker([slow], claim_timeout=2)
        async with running(backend, worker):
            await asyncio.wait_for(began["slow"].wait(), 10)
            await _fail_snapshots(admin, snapshots)
            await asyncio.sleep(2.5)  # the first ended, the later fell due: refused
            assert runs == [first.id]
            await admin.config_set("save", "")  # no save points: writes taken again
            assert await first.result(timeout=10) == "done"
            assert await later.result(timeout=10) == "done"
            await asyncio.sleep(2.5)  # past the claim timeout: nothing runs again
        infos = [await first.info(), await later.info()]
        await admin.config_set("save", "3600 1")  # the snapshot still fails
        with pytest.raises(asyncjobs.RedisUnavailable, match=r"refuses .* MISCONF"):
            await asyncio.wait_for(backend.worker([slow]).run(redis_url=backend.url), 10)
    assert runs == [first.id, later.id]
    assert all(i is not None and i.attempts == 1 and i.errors == () for i in infos), infos
    messages = [r.getMessage() for r in caplog.records]
    outages = [m for m in messages if "redis unavailable" in m]
    # One outage in this run: the worker was busy when it began, and its take after each
    # wait is refused too (an idle worker's plain reads do not end it: the test below).
    assert len(outages) == 1 and "MISCONF" in outages[0], messages
    assert not any("internal error" in m for m in messages), messages
    assert not any(r.exc_info for r in caplog.records), messages


@pytest.mark.real_redis
@pytest.mark.asyncio
async def test_an_idle_worker_logs_one_outage_while_the_server_refuses_writes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An idle worker on a server that refuses writes (MISCONF) but serves reads: each of
    its waits for new jobs (a plain read) went through and was taken as Redis being back,
    so its log said "redis reachable again" after each wait and "redis unavailable" at the
    next heartbeat, over and over. Only a call that wrote ends an outage now: one outage,
    logged once, ended once writes are taken again, and a job enqueued then runs."""
    runs.clear()
    began["slow"] = asyncio.Event()
    caplog.set_level(logging.WARNING, "asyncjobs")
    async with snapshotting_server(tmp_path) as (backend, admin, snapshots), \
            backend.pool() as pool:
        # reclaim scans due every 0.25 s (each held by the outage): the waits end
        worker = backend.worker([slow], claim_timeout=1).configure(
            heartbeat_every_s=0.2, block_ms=100)
        async with running(backend, worker):
            await asyncio.sleep(0.5)  # idle, waiting for jobs
            await _fail_snapshots(admin, snapshots)
            await asyncio.sleep(3.0)  # fifteen heartbeats refused, thirty waits read
            during = [r.getMessage() for r in caplog.records]
            await admin.config_set("save", "")  # writes taken again
            job = await pool.enqueue(slow)
            assert await job.result(timeout=10) == "done"
    assert [m for m in during if "redis unavailable" in m and "MISCONF" in m], during
    assert len([m for m in during if "redis unavailable" in m]) == 1, during
    assert not [m for m in during if "reachable again" in m], during
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "reachable again" in m]) == 1, messages
    assert not any(r.exc_info for r in caplog.records), messages
