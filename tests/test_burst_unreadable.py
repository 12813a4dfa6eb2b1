"""A burst worker whose queue Redis refuses to read (a key of the wrong type) drains every
other queue, then ends with an error naming that key: it did not drain it (it exited 0,
as if it had)."""

from __future__ import annotations

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.keys import Keys
from asyncjobs.exceptions import AsyncJobsError, NotDrained

from .conftest import Backend
from .procs import run_cli

ran: list[int] = []


@asyncjobs.task
async def note(ctx: Context, i: int) -> int:
    ran.append(i)
    return i


@pytest.mark.asyncio
@pytest.mark.parametrize("which", ["stream", "delayed"])
async def test_a_burst_worker_says_which_queue_it_could_not_drain(
        backend: Backend, which: str) -> None:
    ran.clear()
    async with backend.pool(queue="good") as pool:
        broken = getattr(pool.keys("bad"), which)
        await pool.client.set(broken, "a string where a queue's key belongs")
        jobs = [await pool.enqueue(note, i) for i in range(5)]
        worker = backend.worker([note], queues=["good", "bad"], burst=True)
        with pytest.raises(NotDrained) as raised:
            await backend.run(worker)
        assert isinstance(raised.value, AsyncJobsError)
        assert str(raised.value).startswith("burst: not drained: Redis refuses to read ")
        assert broken in str(raised.value) and "WRONGTYPE" in str(raised.value)
        assert sorted(ran) == list(range(5))  # the readable queue was drained first
        assert [await job.result(timeout=5) for job in jobs] == list(range(5))


@pytest.mark.asyncio
async def test_a_burst_worker_with_every_queue_readable_still_ends_quietly(
        backend: Backend) -> None:
    ran.clear()
    async with backend.pool(queue="good") as pool:
        await pool.enqueue(note, 1)
        await backend.run(backend.worker([note], queues=["good", "other"], burst=True))
    assert ran == [1]


@pytest.mark.parametrize("processes", ["1", "2"])
def test_the_command_exits_1_in_one_line(real: Backend, processes: str) -> None:
    """Under ``--processes 2`` each process says so and is not restarted (it was, with a
    backoff, for ever: a burst command that never ended)."""
    import redis

    client = redis.Redis.from_url(real.url or "")
    try:
        client.set(Keys(real.prefix, "bad").stream, "not a stream")
    finally:
        client.close()
    done = run_cli("worker", "tests.apps.basic:worker", "--redis-url", real.url or "",
                   "--prefix", real.prefix, "-q", "bad", "--burst", "--processes", processes)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("asyncjobs: error")]
    assert len(errors) == int(processes), done.stderr
    assert all("burst: not drained: Redis refuses to read" in e for e in errors), done.stderr
    assert "restarting" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_under_processes_a_burst_process_that_crashes_is_still_restarted(
        real: Backend) -> None:
    """Only a process that says it could not drain a queue is done: one that exits 1 for
    anything else (here ``os._exit(1)`` in a job, twice) is restarted, and its job runs."""
    import asyncio

    async def enqueue() -> list[str]:
        async with real.pool() as pool:
            ids = [(await pool.enqueue("crash_twice")).id]
            return ids + [(await pool.enqueue("short", i)).id for i in range(20)]

    async def states(ids: list[str]) -> set[str]:
        async with real.pool() as pool:
            return {(await pool.job(i).status()).value for i in ids}

    ids = asyncio.run(enqueue())
    done = run_cli("worker", "tests.apps.burst_crash:worker", "--redis-url", real.url or "",
                   "--prefix", real.prefix, "--burst", "--processes", "2",
                   env={"TEST_PREFIX": real.prefix}, timeout_s=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("died (exit 1); restarting") == 2, done.stderr
    assert asyncio.run(states(ids)) == {"complete"}


def test_under_processes_a_burst_worker_that_cannot_start_fails_once() -> None:
    """As without --burst: the first process fails alone, one error line, and no other
    process is started."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = run_cli("worker", "tests.apps.basic:worker", "--redis-url",
                   f"redis://127.0.0.1:{port}/0", "--burst", "--processes", "4")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("asyncjobs: error")]
    assert len(errors) == 1, done.stderr


@pytest.mark.asyncio
async def test_an_outage_during_the_drain_check_is_waited_out(
        real: Backend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """It escaped the fetch loop as an "internal error" with a traceback."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from asyncjobs._worker import fetcher

    real_drained, calls = fetcher._drained, []

    async def flaky(rt: object, ex: object) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise RedisConnectionError("Connection closed by server.")
        return await real_drained(rt, ex)  # type: ignore[arg-type]

    monkeypatch.setattr(fetcher, "_drained", flaky)
    ran.clear()
    async with real.pool() as pool:
        await pool.enqueue(note, 7)
    await real.run(real.worker([note], burst=True))
    assert ran == [7] and len(calls) >= 2
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


@pytest.mark.asyncio
async def test_a_queue_whose_jobs_cannot_be_recorded_is_not_drained(real: Backend) -> None:
    """A job waits in a queue whose delayed set was overwritten with a string: it runs, but
    Redis refuses the settle (the set is checked before any write), so it stayed pending,
    ran again and again, and the burst run never ended. It ends once nothing else is left,
    saying why; the job ran once, and waits again (at least once)."""
    import asyncio

    ran.clear()
    async with real.pool(queue="bad") as pool:
        job = await pool.enqueue(note, 1)
        await pool.client.set(pool.keys("bad").delayed, "a string where a zset belongs")
        worker = real.worker([note], queues=["bad"], burst=True, claim_timeout=2.0)
        with pytest.raises(NotDrained) as raised:
            await asyncio.wait_for(real.run(worker), 30)
        assert "Redis refuses to record the jobs of queue bad" in str(raised.value)
        assert "holds a string, not a zset" in str(raised.value)
        assert ran == [1]
        # not recorded: handed back at the stop, to run again once the key is repaired
        assert await job.status() == "queued"
