"""A burst worker whose queue Redis refuses to read (a key of the wrong type) drains every
other queue, then ends with an error naming that key: it did not drain it (it exited 0,
as if it had)."""

from __future__ import annotations

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.keys import Keys
from asyncjobs.exceptions import AsyncJobsError

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
        with pytest.raises(AsyncJobsError) as raised:
            await backend.run(worker)
        assert str(raised.value).startswith("burst: not drained, Redis refuses to read ")
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
    assert all("burst: not drained, Redis refuses to read" in e for e in errors), done.stderr
    assert "restarting" not in done.stderr
    assert "Traceback" not in done.stderr
