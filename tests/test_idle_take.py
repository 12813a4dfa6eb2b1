"""An idle worker of one queue sends its take right behind its blocking read, on the same
connection (``Reader.wait_then_run``, ``waiting.wait_then_take``): Redis runs the take the
moment the read ends, so the job that wakes the worker is started without a round trip
back to the worker first. Attacked here: the script cache emptied while the worker waits,
a stop that arrives after the take started a job, two workers woken by one job, and a
stream replaced by a string while the worker waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._redis import store
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.keys import Keys
from asyncjobs._worker import fetcher, waiting
from asyncjobs._worker.reader import Reader

from .conftest import Backend, running

pytestmark = pytest.mark.asyncio

ran: list[int] = []


@asyncjobs.task
async def note(ctx: Context, i: int) -> int:
    ran.append(i)
    return i


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    ran.clear()
    yield
    ran.clear()


@pytest.fixture
def takes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many entries each take of the fetch loop's own (not the one behind a read)
    started, in order."""
    seen: list[int] = []
    real = store.take_levels

    async def counted(*args: Any, **kwargs: Any) -> Any:
        taken = await real(*args, **kwargs)
        seen.append(len(taken.rows))
        return taken

    monkeypatch.setattr(fetcher, "take_levels", counted)
    return seen


def backend_on(server: RedisServer) -> Backend:
    return Backend("real", server.url, url_factory(server.url), "idletake")


async def blocked(pool: asyncjobs.Pool, n: int = 1, timeout: float = 10.0) -> None:
    """Wait until ``n`` clients are blocked in Redis (the workers' reads)."""
    end = time.monotonic() + timeout
    while int((await pool.client.info("clients"))["blocked_clients"]) < n:
        assert time.monotonic() < end, f"fewer than {n} blocked reads after {timeout} s"
        await asyncio.sleep(0.01)


async def test_a_job_that_wakes_an_idle_worker_is_started_by_the_take_behind_the_read(
        fresh_redis: RedisServer, takes: list[int]) -> None:
    backend = backend_on(fresh_redis)
    async with backend.pool() as pool, running(backend, backend.worker([note])):
        for i in range(5):
            await blocked(pool)
            job = await pool.enqueue(note, i)
            assert await job.result(timeout=10) == i
    assert ran == list(range(5))
    # The loop's own takes ran (after each job, finding nothing), but started nothing: each
    # job was started by the take that followed the read it woke.
    assert takes and not any(takes), takes


@pytest.mark.parametrize("read", ["with the take behind", "alone"])
async def test_a_job_that_wakes_an_idle_worker_runs_before_the_worker_asks_for_more(
        fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, read: str) -> None:
    """Latency: the body of a job that woke an idle worker has run by the time the loop
    sends its next take (it does not wait behind the loop's own round trip). Both ways a
    wait can wake: the take behind the read started it, or the read woke alone and the
    loop's own take starts it."""
    ran_before_take: list[list[int]] = []
    real = store.take_levels

    async def seen(*args: Any, **kwargs: Any) -> Any:
        ran_before_take.append(list(ran))
        return await real(*args, **kwargs)

    monkeypatch.setattr(fetcher, "take_levels", seen)
    if read == "alone":
        async def read_alone(rt: Any, reader: Any, group: Any, order: Any, idle: Any,
                             newest: Any, count: int, block_ms: int) -> Any:
            return await waiting.wait(rt, reader, idle, newest, float("inf"), block_ms), []

        monkeypatch.setattr(waiting, "wait_then_take", read_alone)
    backend = backend_on(fresh_redis)
    async with backend.pool() as pool, running(backend, backend.worker([note])):
        for i in range(3):
            await blocked(pool)
            ran_before_take.clear()
            job = await pool.enqueue(note, i)
            assert await job.result(timeout=10) == i
            await blocked(pool)  # the worker took again (finding nothing) and waits
            if read == "alone":  # the loop's own take started it: the takes after it ran
                assert ran_before_take[0] == list(range(i)), ran_before_take
                later = ran_before_take[1:]
            else:
                later = ran_before_take
            assert later and all(i in r for r in later), ran_before_take
    assert ran == [0, 1, 2]


async def test_a_script_cache_emptied_while_the_worker_waits_still_starts_the_job(
        fresh_redis: RedisServer, takes: list[int], caplog: pytest.LogCaptureFixture) -> None:
    """The take behind the read is answered NOSCRIPT: the loop's own take loads it and
    starts the job, with nothing logged as an error (the loop was not restarted)."""
    caplog.set_level(logging.WARNING, logger="asyncjobs")
    backend = backend_on(fresh_redis)
    async with backend.pool() as pool, running(backend, backend.worker([note])):
        await blocked(pool)
        await pool.client.script_flush()
        job = await pool.enqueue(note, 7)
        assert await job.result(timeout=10) == 7
    assert ran == [7]
    assert 1 in takes, takes  # started by the loop's own take
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_stop_after_the_take_behind_the_read_started_a_job_hands_it_back(
        fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop comes between the take (the job is `running`, held by this worker) and the
    worker reading its reply: the job is not run there, it is handed back at once, and the
    next worker runs it, long before the claim timeout."""
    backend = backend_on(fresh_redis)
    first = backend.worker([note], claim_timeout=60)
    real = Reader.wait_then_run
    stopped_with: list[Any] = []

    async def then_stop(self: Reader, *args: Any) -> Any:
        woke, reply = await real(self, *args)
        if not isinstance(reply, Exception) and reply[0] and not stopped_with:
            stopped_with.append(reply[0])
            first.stop()
        return woke, reply

    monkeypatch.setattr(Reader, "wait_then_run", then_stop)
    async with backend.pool() as pool:
        async with running(backend, first):
            await blocked(pool)
            job = await pool.enqueue(note, 3)
            end = time.monotonic() + 10
            while not stopped_with:
                assert time.monotonic() < end, "the take behind the read never started it"
                await asyncio.sleep(0.01)
        assert ran == []  # not run by the worker that was stopping
        info = await job.info()
        assert info.state == JobState.QUEUED, info
        began = time.monotonic()
        async with running(backend, backend.worker([note], claim_timeout=60)):
            assert await job.result(timeout=10) == 3
        assert time.monotonic() - began < 10  # handed back, not reclaimed after 60 s
        info = await job.info()
    assert ran == [3]
    assert info.state == JobState.COMPLETE and info.attempts == 1


async def test_two_idle_workers_woken_by_one_job_run_it_once_and_keep_waiting(
        fresh_redis: RedisServer) -> None:
    """Both reads wake; one take starts the job, the other finds nothing and its worker
    waits again from the streams' newest ids (no spin: both are blocked again)."""
    backend = backend_on(fresh_redis)
    async with backend.pool() as pool, \
            running(backend, backend.worker([note])), running(backend, backend.worker([note])):
        for i in range(10):
            await blocked(pool, 2)
            job = await pool.enqueue(note, i)
            assert await job.result(timeout=10) == i
        await blocked(pool, 2)
        before = await pool.client.info("stats")
        await asyncio.sleep(1.0)
        after = await pool.client.info("stats")
    assert sorted(ran) == list(range(10))
    # two idle workers for a second: a handful of commands, not a loop
    assert after["total_commands_processed"] - before["total_commands_processed"] < 40


async def test_a_stream_turned_into_a_string_while_the_worker_waits_is_left_alone(
        fresh_redis: RedisServer) -> None:
    """The read behind which the take was sent fails (WRONGTYPE), and so does the take's
    read of that stream: the loop's own take quarantines the queue, the worker stays up, and
    once the stream is a stream again the next job runs."""
    backend = backend_on(fresh_redis)
    keys = Keys(backend.prefix, "default")
    async with backend.pool() as pool, running(backend, backend.worker([note])):
        await blocked(pool)
        await pool.client.delete(keys.stream)
        await pool.client.set(keys.stream, "garbage")
        await asyncio.sleep(0.5)
        await pool.client.delete(keys.stream)
        job = await pool.enqueue(note, 5)  # makes the stream and its group again
        assert await job.result(timeout=45) == 5
    assert ran == [5]


async def test_after_a_quiet_read_the_worker_waits_with_the_read_alone(
        fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle worker sends no more than before: once a read with a take behind it timed
    out with nothing new, the reads go on alone (one command each) until the worker starts
    a job again; the job that ends the quiet still runs (the loop's own take starts it),
    and the next idle spell begins with a take behind the read again."""
    calls = {"with_take": 0, "alone": 0}
    with_take, alone = Reader.wait_then_run, Reader.wait

    async def counted_with_take(self: Reader, *args: Any) -> Any:
        calls["with_take"] += 1
        return await with_take(self, *args)

    async def counted_alone(self: Reader, *args: Any) -> Any:
        calls["alone"] += 1
        return await alone(self, *args)

    monkeypatch.setattr(Reader, "wait_then_run", counted_with_take)
    monkeypatch.setattr(Reader, "wait", counted_alone)
    backend = backend_on(fresh_redis)
    worker = backend.worker([note]).configure(block_ms=100)
    async with backend.pool() as pool, running(backend, worker):
        await asyncio.sleep(2.0)  # twenty reads' worth of idleness
        quiet = dict(calls)
        assert quiet["with_take"] == 1, quiet  # the first read only
        assert quiet["alone"] >= 5, quiet
        job = await pool.enqueue(note, 1)
        assert await job.result(timeout=10) == 1
        end = time.monotonic() + 5
        while calls["with_take"] == quiet["with_take"]:
            assert time.monotonic() < end, "no take behind the read after the job"
            await asyncio.sleep(0.01)
    assert ran == [1]


async def test_a_user_denied_xread_polls_with_takes_instead_of_spinning(
        fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """An ACL user that may run the scripts but not XREAD: every blocking read is refused
    while every take works, so nothing gets quarantined. The worker says so once and asks
    for new jobs once a second or so instead of at once, again and again (about 16,000
    commands/s before, found by an adversarial review), and a job still runs."""
    caplog.set_level(logging.WARNING, logger="asyncjobs")
    async with Redis.from_url(fresh_redis.url) as admin:
        await admin.execute_command("ACL", "SETUSER", "noxread", "on", ">pw", "~*", "&*",
                                    "+@all", "-xread")
        url = f"redis://noxread:pw@127.0.0.1:{fresh_redis.port}/0"
        backend = Backend("real", url, url_factory(url), "noxread")
        async with backend.pool() as pool, running(backend, backend.worker([note])):
            await asyncio.sleep(1.5)
            before = (await admin.info("stats"))["total_commands_processed"]
            await asyncio.sleep(2.0)
            after = (await admin.info("stats"))["total_commands_processed"]
            job = await pool.enqueue(note, 9)
            assert await job.result(timeout=10) == 9
    rate = (after - before) / 2.0
    assert rate < 60, f"{rate:.0f} commands/s: the refused read spins"
    assert ran == [9]
    assert "refused the worker's blocking read" in caplog.text


async def test_a_loop_blocked_past_the_read_s_timeout_leaves_the_job_to_the_reclaim(
        fresh_redis: RedisServer) -> None:
    """The event loop is blocked (a task's blocking call, say) while the read waits, past
    the read's socket timeout (``block_ms`` + 10 s, 11 s here), and a job enqueued meanwhile
    is started by the take behind the read, whose reply the worker's timed-out read then
    drops (found by an adversarial review). As for any job of a worker whose loop is blocked
    past half the claim timeout, the job is reclaimed and runs, its lost attempt counted:
    neither lost nor stuck."""
    backend = backend_on(fresh_redis)
    # The read's socket timeout is block_ms + 10 s: block_ms 1 s (not the default 2 s)
    # makes it 11 s. (The read with a take behind blocks 125 ms either way, an eighth of
    # the 1 s keep-alive interval; plain reads block 1 s instead of the 1.5 s reclaim
    # interval.)
    worker = backend.worker([note], claim_timeout=6).configure(block_ms=1000)
    seen: list[str] = []
    async with backend.pool() as pool, running(backend, worker):
        assert await (await pool.enqueue(note, 0)).result(timeout=10) == 0
        await blocked(pool)  # the first read of the idle spell: a take behind it
        keys = Keys(backend.prefix, "default")

        def enqueue_and_watch() -> None:
            async def go() -> None:
                async with backend.pool() as other:
                    job = await other.enqueue(note, 1)
                    seen.append(job.id)
                    for _ in range(100):  # the take behind the read starts it
                        if await other.client.hget(keys.job(job.id), "s") == b"running":
                            seen.append("running")
                            return
                        await asyncio.sleep(0.05)
            asyncio.run(go())

        producer = threading.Thread(target=enqueue_and_watch)
        producer.start()
        time.sleep(11.5)  # noqa: ASYNC251 - the event loop stalls, past the read's 11 s
        producer.join()
        assert seen[1:] == ["running"], seen  # started while the worker could not look
        job = pool.job(seen[0])
        assert await job.result(timeout=30) == 1
        info = await job.info()
    assert ran == [0, 1]
    assert info.state == JobState.COMPLETE and info.attempts == 2, info
