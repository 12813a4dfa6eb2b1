"""End to end on both backends: enqueue -> Redis stream -> worker -> result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

import asyncjobs
from asyncjobs import Context, JobState

from .conftest import Backend, running

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]


@dataclasses.dataclass
class Address:
    city: str
    postcode: str


class User(msgspec.Struct):
    id: int
    name: str


class PaymentError(Exception):
    pass


@asyncjobs.task
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@asyncjobs.task
async def describe(ctx: Context, user: User, when: datetime, ident: uuid.UUID,
                   addr: Address, tags: tuple[str, ...] = ()) -> str:
    assert isinstance(user, User) and isinstance(addr, Address) and isinstance(ident, uuid.UUID)
    assert isinstance(tags, tuple)
    return f"{user.name}/{addr.city}/{when.isoformat()}/{ident}/{','.join(tags)}"


@asyncjobs.task
async def make_user(ctx: Context, name: str) -> User:
    return User(7, name)


@asyncjobs.task
async def context_of(ctx: Context) -> dict[str, Any]:
    return {"job_id": ctx.job_id, "attempt": ctx.attempt, "queue": ctx.queue,
            "task": ctx.task, "state": ctx.state, "enqueued": ctx.enqueued_at.timestamp()}


@asyncjobs.task(timeout=0.3, max_tries=1)
async def sleepy(ctx: Context, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke up"


@asyncjobs.task(max_tries=1)
async def charge(ctx: Context, card: str) -> None:
    raise PaymentError(f"card {card} declined")


def sync_double(ctx: Context, n: int) -> tuple[int, str]:
    return n * 2, threading.current_thread().name


async def burst(backend: Backend, tasks: list[Any], **options: Any) -> None:
    await backend.run(backend.worker(tasks, burst=True, **options))


async def test_enqueue_by_reference_runs_and_returns_value(backend: Backend,
                                                           pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(add, 2, 3)
    assert await job.status() is JobState.QUEUED
    await burst(backend, [add])
    assert await job.result(timeout=5) == 5
    info = await job.info()
    assert (info.state, info.task, info.args) == (JobState.COMPLETE, "add", [2, 3])
    assert info.attempts == 1
    assert info.queue == "default" and info.result == 5
    assert info.enqueued_at and info.started_at and info.ended_at
    assert info.enqueued_at <= info.started_at <= info.ended_at


async def test_enqueue_by_name_for_producers_without_the_code(backend: Backend,
                                                             pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue("add", 40, b=2)
    await burst(backend, [add])
    assert await job.result(timeout=5) == 42
    ref = asyncjobs.task_ref("add").options(job_id="by-name")
    job2 = await pool.enqueue(ref, 1, 1)
    assert job2.id == "by-name"
    await burst(backend, [add])
    assert await job2.result(timeout=5) == 2


async def test_arguments_arrive_with_their_declared_types(backend: Backend,
                                                          pool: asyncjobs.Pool) -> None:
    when = datetime(2026, 11, 21, 12, 30, tzinfo=UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    job = await pool.enqueue(describe, User(1, "ada"), when, ident, Address("Paris", "75001"),
                             tags=("a", "b"))
    await burst(backend, [describe])
    assert await job.result(timeout=5) == f"ada/Paris/{when.isoformat()}/{ident}/a,b"


async def test_result_is_decoded_to_the_declared_return_type(backend: Backend,
                                                             pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(make_user, "grace")
    await burst(backend, [make_user])
    assert await job.result(timeout=5) == User(7, "grace")
    by_name = pool.job(job.id)  # no type information: builtin types come back
    assert await by_name.result(timeout=5) == {"id": 7, "name": "grace"}


async def test_context_carries_job_facts_and_lifespan_state(backend: Backend,
                                                            pool: asyncjobs.Pool) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(worker: asyncjobs.Worker) -> AsyncIterator[dict[str, str]]:
        events.append("start")
        yield {"http": "client"}
        events.append("stop")

    job = await pool.enqueue(context_of)
    await burst(backend, [context_of], lifespan=lifespan)
    seen = await job.result(timeout=5)
    assert seen["job_id"] == job.id and seen["attempt"] == 1 and seen["queue"] == "default"
    assert seen["task"] == "context_of" and seen["state"] == {"http": "client"}
    assert seen["enqueued"] == pytest.approx(datetime.now(UTC).timestamp(), abs=30)
    assert events == ["start", "stop"]


async def test_timeout_cancels_the_attempt_and_fails_the_job(backend: Backend,
                                                             pool: asyncjobs.Pool) -> None:
    slow = await pool.enqueue(sleepy, 10)
    # The control gets a timeout of its own: an attempt is timed by the wall clock, and
    # 0.3 s for a 0.01 s sleep can pass while a loaded machine leaves the process waiting.
    quick = await pool.enqueue(sleepy.options(timeout=30), 0.01)
    await burst(backend, [sleepy])
    assert await quick.result(timeout=5) == "woke up"
    with pytest.raises(asyncjobs.JobFailed) as caught:
        await slow.result(timeout=5)
    assert caught.value.type == "asyncjobs.exceptions.JobTimeout"
    assert "0.3 s timeout" in caught.value.remote_message
    assert "asyncio.sleep" in caught.value.remote_traceback
    info = await slow.info()
    assert info.state is JobState.FAILED and "timed out" in (info.dead_letter_reason or "")


async def test_failing_task_reports_remote_type_message_and_traceback(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    job = await pool.enqueue(charge, "4242")
    await burst(backend, [charge])
    with pytest.raises(asyncjobs.JobFailed) as caught:
        await job.result(timeout=5)
    failed = caught.value
    assert failed.type.endswith(".PaymentError")
    assert failed.remote_message == "card 4242 declined"
    assert 'raise PaymentError(f"card {card} declined")' in failed.remote_traceback
    assert "test_e2e.py" in failed.remote_traceback
    assert len(failed.errors) == 1 and failed.errors[0].attempt == 1


async def test_unserializable_argument_fails_at_enqueue_and_writes_nothing(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    class Opaque:
        pass

    with pytest.raises(asyncjobs.SerializationError, match=r"argument 'b' \(position 1\).*Opaque"):
        await pool.enqueue(add, 1, Opaque())  # type: ignore[arg-type]
    with pytest.raises(asyncjobs.SerializationError, match=r"argument 'note'.*Opaque"):
        await pool.enqueue("add", 1, note=Opaque())
    calls = [asyncjobs.call(add, 1, 2), asyncjobs.call(add, 3, Opaque())]  # type: ignore[arg-type]
    with pytest.raises(asyncjobs.SerializationError):
        await pool.enqueue_many(calls)
    keys = [k async for k in pool.client.scan_iter(match=f"{backend.prefix}*")]
    assert keys == []


async def test_job_id_dedup_returns_the_existing_job(backend: Backend,
                                                     pool: asyncjobs.Pool) -> None:
    first = await pool.enqueue(add.options(job_id="invoice-7"), 1, 2)
    again = await pool.enqueue(add.options(job_id="invoice-7"), 100, 200)
    assert first.id == again.id == "invoice-7"
    assert (await again.info()).args == [1, 2]
    await burst(backend, [add])
    assert await again.result(timeout=5) == 3
    # Still kept: enqueueing the same id again does not run it again.
    third = await pool.enqueue(add.options(job_id="invoice-7"), 5, 5)
    assert await third.status() is JobState.COMPLETE
    assert await third.result(timeout=5) == 3
    stats = await pool.client.hgetall(pool.keys("default").stats)
    assert int(stats[b"enqueued"]) == 1 and int(stats[b"complete"]) == 1


async def test_same_id_runs_again_once_its_result_expired(backend: Backend,
                                                          pool: asyncjobs.Pool) -> None:
    # A TTL the result outlives while the test reads it, even on a loaded machine; then wait
    # for it to expire (a fixed sleep raced a 1 s TTL against the read).
    job = await pool.enqueue(add.options(job_id="nightly", result_ttl=3), 1, 1)
    await burst(backend, [add])
    assert await job.result(timeout=5) == 2
    deadline = time.monotonic() + 20
    while await pool.client.exists(pool.keys("default").job("nightly")):
        assert time.monotonic() < deadline, "the result never expired"
        await asyncio.sleep(0.1)
    with pytest.raises(asyncjobs.JobNotFound):
        await job.status()
    rerun = await pool.enqueue(add.options(job_id="nightly"), 2, 2)
    await burst(backend, [add])
    assert await rerun.result(timeout=5) == 4


async def test_enqueue_many_pipelines_and_runs_every_job(backend: Backend,
                                                         pool: asyncjobs.Pool) -> None:
    jobs = await pool.enqueue_many(asyncjobs.call(add, i, i) for i in range(1200))
    assert len({j.id for j in jobs}) == 1200
    await burst(backend, [add], concurrency=200)
    # One at a time: every job is complete once the burst worker returns. 1,200 result()
    # calls gathered at once queue for the pool's 50 connections, and on a loaded machine
    # the last waited past their 10 s timeout (ResultTimeout) or past the pool's 5 s wait
    # for a free connection (PoolExhausted): a bound on the test's own burst, not the jobs.
    results = [await j.result(timeout=10) for j in jobs]
    assert results == [2 * i for i in range(1200)]
    assert await pool.client.xlen(pool.keys("default").stream) == 0  # acked entries deleted


async def test_sync_task_runs_in_a_worker_thread(backend: Backend, pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(sync_double, 21)
    await burst(backend, [sync_double])
    value, thread = await job.result(timeout=5)
    assert value == 42 and thread != threading.main_thread().name


async def test_concurrency_limit_is_respected(backend: Backend, pool: asyncjobs.Pool) -> None:
    active = peak = 0

    @asyncjobs.task(name="occupy")
    async def occupy(ctx: Context) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1

    await pool.enqueue_many(asyncjobs.call(occupy) for _ in range(40))
    await burst(backend, [occupy], concurrency=6)
    assert peak == 6


async def test_result_timeout_and_unknown_job(backend: Backend, pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(add, 1, 1)  # no worker runs
    with pytest.raises(asyncjobs.ResultTimeout):
        await job.result(timeout=0.3)
    with pytest.raises(asyncjobs.JobNotFound):
        await pool.job("no-such-job").status()


async def test_delayed_job_waits_for_its_time(backend: Backend, pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(add.options(delay=0.4), 1, 2)
    assert await job.status() is JobState.SCHEDULED
    info = await job.info()
    assert info.scheduled_for is not None and info.enqueued_at is not None
    assert 350 <= (info.scheduled_for - info.enqueued_at).total_seconds() * 1000 <= 450
    await burst(backend, [add])
    assert await job.result(timeout=5) == 3
    started = (await job.info()).started_at
    assert started is not None and started >= info.scheduled_for


async def test_worker_tasks_can_enqueue_follow_ups_at_high_concurrency(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    @asyncjobs.task(name="fan_out")
    async def fan_out(ctx: Context, n: int) -> None:
        await ctx.pool.enqueue(add, n, 1)

    await pool.enqueue_many(asyncjobs.call(fan_out, i) for i in range(300))
    await burst(backend, [fan_out, add], concurrency=150)
    stats = await pool.client.hgetall(pool.keys("default").stats)
    assert int(stats[b"complete"]) == 600 and b"failed" not in stats


async def test_worker_in_background_picks_up_new_jobs(backend: Backend,
                                                      pool: asyncjobs.Pool) -> None:
    async with running(backend, backend.worker([add])):
        jobs = [await pool.enqueue(add, i, 1) for i in range(5)]
        assert [await j.result(timeout=5) for j in jobs] == [1, 2, 3, 4, 5]


async def test_waiting_for_a_result_does_not_poll(backend: Backend, pool: asyncjobs.Pool) -> None:
    reads = 0
    original = pool.client.hmget

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return original(*args, **kwargs)

    pool.client.hmget = counting  # type: ignore[method-assign]
    job = await pool.enqueue(sleepy, 0.25)  # timeout 0.3 s: it finishes
    async with running(backend, backend.worker([sleepy])):
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await job.result(timeout=30) == "woke up"
        waited = loop.time() - started
    assert reads <= 3, f"{reads} reads while waiting {waited:.2f} s"
    assert waited < 4.0  # woken by the notice, not by the 5 s safety re-read


def blocking_sleep(ctx: Context, seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "slept"


async def test_sync_task_timeout_abandons_the_thread_and_fails_the_job(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    slow = await pool.enqueue(asyncjobs.task(blocking_sleep).options(timeout=0.2, max_tries=1),
                              1.0)
    fast = await pool.enqueue(blocking_sleep, 0.01)
    await burst(backend, [blocking_sleep])
    assert await fast.result(timeout=5) == "slept"
    with pytest.raises(asyncjobs.JobFailed) as caught:
        await slow.result(timeout=5)
    assert caught.value.type == "asyncjobs.exceptions.JobTimeout"
