"""Backpressure: a queue's maximum length (``Admin.set_max_length``), enforced by enqueue.lua.

The queue's length is XLEN of its stream (waiting and running jobs) plus ZCARD of its delayed
set. Producers racing each other never take it past the maximum; every job refused is named
in ``QueueFull``; nothing accepted is dropped; retries, promotions and cron ticks are never
refused. Both backends, and both event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import asyncjobs
from asyncjobs import ConfigurationError, Context, EnqueueError, JobState, QueueFull, Retry
from asyncjobs._task import call

from .conftest import Backend, running
from .procs import run_cli

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]


@asyncjobs.task
async def echo(ctx: Context, n: int) -> int:
    return n


@asyncjobs.task
async def slow_echo(ctx: Context, n: int) -> int:
    await asyncio.sleep(0.002)
    return n


@asyncjobs.task(max_tries=3, backoff=0.01)
async def flaky(ctx: Context, n: int) -> int:
    if ctx.attempt < 3:
        raise Retry(delay=0.01)
    return n


ticks: list[str] = []


@asyncjobs.task
async def tick(ctx: Context) -> None:
    ticks.append(ctx.job_id)


async def length(pool: asyncjobs.Pool, queue: str) -> int:
    """XLEN + ZCARD, read in one MULTI (one instant)."""
    keys = pool.keys(queue)
    pipe = pool.client.pipeline(transaction=True)
    pipe.xlen(keys.stream)
    pipe.zcard(keys.delayed)
    stream, delayed = await pipe.execute()
    return int(stream) + int(delayed)


@contextlib.asynccontextmanager
async def sampled(backend: Backend, queue: str) -> AsyncIterator[list[int]]:
    """The queue's length, sampled as often as Redis answers until the block ends (and once
    more after)."""
    samples: list[int] = []
    stop = asyncio.Event()
    async with backend.pool() as spy:

        async def sample() -> None:
            while not stop.is_set():
                samples.append(await length(spy, queue))
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        try:
            yield samples
        finally:
            stop.set()
            await sampler
            samples.append(await length(spy, queue))


async def burst(backend: Backend, tasks: list[Any], queue: str) -> None:
    await backend.run(backend.worker(tasks, burst=True, queues=[queue]))


async def test_twenty_producers_never_push_the_queue_past_its_maximum(backend: Backend,
                                                                     pool: asyncjobs.Pool
                                                                     ) -> None:
    most, producers, each = 60, 20, 25
    await pool.admin.set_max_length("bp", most)
    accepted: set[str] = set()
    refused: dict[str, str] = {}
    errors: list[QueueFull] = []

    async def produce(p: int) -> None:
        async with backend.pool() as mine:  # a connection pool of its own: real races
            for i in range(each):
                job_id = f"p{p}-{i}"
                delay = 3600 if i % 3 == 0 else None  # a third of them delayed: they count
                task = echo.options(job_id=job_id, queue="bp", delay=delay)
                try:
                    assert (await mine.enqueue(task, p * 1000 + i)).id == job_id
                    accepted.add(job_id)
                except QueueFull as exc:
                    errors.append(exc)
                    refused.update(exc.reasons)

    async with sampled(backend, "bp") as samples:
        await asyncio.gather(*(produce(p) for p in range(producers)))
    assert len(samples) >= 2 and max(samples) <= most
    assert samples[-1] == most == len(accepted)
    assert len(refused) == producers * each - most
    assert accepted.isdisjoint(refused) and len(errors) == len(refused)
    assert all(e.enqueued == [] and e.queues == {"bp": most} for e in errors)
    assert set(refused.values()) == {f"queue 'bp' is full (max {most} jobs)"}
    pipe = pool.client.pipeline(transaction=False)
    for job_id in refused:
        pipe.exists(pool.keys("bp").job(job_id))
    assert not any(await pipe.execute()), "a refused job left a record"
    stats = await pool.admin.queue_stats("bp")
    assert (stats.max_length, stats.counters["refused"], stats.counters["enqueued"]) == (
        most, len(refused), most)
    jobs = {job_id: pool.job(job_id, "bp") for job_id in accepted}  # theirs are closed
    delayed = [i for i, j in jobs.items() if await j.status() is JobState.SCHEDULED]
    assert len(delayed) >= 1
    assert sorted(await pool.admin.make_due(delayed, "bp")) == sorted(delayed)
    await burst(backend, [echo], "bp")
    for job_id, job in jobs.items():
        p, i = map(int, job_id[1:].split("-"))
        assert await job.result(timeout=5) == p * 1000 + i
    assert await length(pool, "bp") == 0


async def test_waiting_producers_get_in_as_a_worker_drains(backend: Backend,
                                                           pool: asyncjobs.Pool) -> None:
    most = 5
    await pool.admin.set_max_length("bp", most)
    jobs: list[asyncjobs.Job[Any]] = []

    async def produce(p: int) -> None:
        async with backend.pool(wait_for_room=60) as mine:
            for i in range(10):
                job = await mine.enqueue(slow_echo.options(queue="bp"), p * 100 + i)
                jobs.append(pool.job(job.id, "bp"))  # a handle that outlives `mine`

    async with sampled(backend, "bp") as samples:
        await pool.enqueue_many([call(slow_echo.options(queue="bp"), -i) for i in range(most)])
        assert await length(pool, "bp") == most  # full before anyone drains it
        async with running(backend, backend.worker([slow_echo], queues=["bp"],
                                                   concurrency=3)):
            await asyncio.gather(*(produce(p) for p in range(20)))
            results = [await job.result(timeout=30) for job in jobs]
    assert max(samples) <= most
    assert sorted(results) == sorted(p * 100 + i for p in range(20) for i in range(10))
    # Each producer's polls counted nothing: only a final refusal is counted.
    assert (await pool.admin.queue_stats("bp")).counters.get("refused", 0) == 0


async def test_waiting_gives_up_with_queue_full_when_nothing_drains(pool: asyncjobs.Pool
                                                                    ) -> None:
    await pool.admin.set_max_length("bp", 1)
    first = await pool.enqueue(echo.options(queue="bp"), 1)
    with pytest.raises(QueueFull) as caught:
        await pool.enqueue_many([call(echo.options(queue="bp", job_id="late"), 2)],
                                wait_for_room=0.05)
    assert caught.value.reasons == {"late": "queue 'bp' is full (max 1 jobs)"}
    assert await first.status() is JobState.QUEUED
    assert (await pool.admin.queue_stats("bp")).counters["refused"] == 1  # counted once


async def test_enqueue_many_says_exactly_which_jobs_got_in(pool: asyncjobs.Pool) -> None:
    await pool.admin.set_max_length("bp", 5)
    old = [await pool.enqueue(echo.options(queue="bp", job_id=f"old{i}"), i) for i in range(2)]
    batch = [call(echo.options(queue="bp", job_id=f"new{i}"), i) for i in range(3)]
    batch.insert(1, call(echo.options(queue="bp", job_id="old0"), 0))  # dedup: takes no room
    batch += [call(echo.options(queue="bp", job_id=f"new{i}", delay=60), i) for i in (3, 4)]
    batch.append(call(echo.options(queue="other", job_id="elsewhere"), 9))  # no maximum
    with pytest.raises(QueueFull) as caught:
        await pool.enqueue_many(batch)
    error = caught.value
    assert isinstance(error, EnqueueError)
    assert set(error.reasons) == {"new3", "new4"}
    assert [j.id for j in error.enqueued] == ["new0", "old0", "new1", "new2", "elsewhere"]
    assert "queue 'bp' (max 5 jobs) is full: 2 job(s) not enqueued, 5 enqueued" in str(error)
    assert await length(pool, "bp") == 5 and old[0].id == "old0"
    for job_id in ("new3", "new4"):
        assert not await pool.client.exists(pool.keys("bp").job(job_id))
    assert await pool.job("elsewhere", "other").status() is JobState.QUEUED


async def test_a_batch_larger_than_one_script_call_stops_exactly_at_the_maximum(
        pool: asyncjobs.Pool) -> None:
    await pool.admin.set_max_length("bp", 700)  # the second call of 500 finds 200 places
    calls = [call(echo.options(queue="bp", job_id=f"j{i:04}"), i) for i in range(1200)]
    with pytest.raises(QueueFull) as caught:
        await pool.enqueue_many(calls)
    assert [j.id for j in caught.value.enqueued] == [f"j{i:04}" for i in range(700)]
    assert sorted(caught.value.reasons) == [f"j{i:04}" for i in range(700, 1200)]
    assert await length(pool, "bp") == 700


async def test_a_dedup_enqueue_is_not_counted_twice(pool: asyncjobs.Pool) -> None:
    await pool.admin.set_max_length("bp", 2)
    once = await pool.enqueue(echo.options(queue="bp", job_id="same"), 1)
    for _ in range(5):
        again = await pool.enqueue(echo.options(queue="bp", job_id="same"), 1)
        assert again.id == once.id
    await pool.enqueue(echo.options(queue="bp", job_id="other", delay=60), 2)
    # Full now, and a dedup enqueue of a job already in is still answered with its handle.
    assert (await pool.enqueue(echo.options(queue="bp", job_id="same"), 1)).id == "same"
    with pytest.raises(QueueFull):
        await pool.enqueue(echo.options(queue="bp", job_id="third"), 3)
    assert await length(pool, "bp") == 2
    assert (await pool.admin.queue_stats("bp")).counters["enqueued"] == 2


async def test_retries_and_promotions_are_never_refused(backend: Backend,
                                                        pool: asyncjobs.Pool) -> None:
    jobs = [await pool.enqueue(flaky.options(queue="bp"), n) for n in range(3)]
    await pool.admin.set_max_length("bp", 1)  # lowered below the length: nothing is dropped
    with pytest.raises(QueueFull):
        await pool.enqueue(flaky.options(queue="bp"), 99)
    assert await length(pool, "bp") == 3
    # Each job retries twice (stream -> delayed set -> promoted to the stream) in a queue
    # that is over its maximum all along.
    await burst(backend, [flaky], "bp")
    for n, job in enumerate(jobs):
        assert await job.result(timeout=5) == n
        assert (await job.info()).attempts == 3
    assert (await pool.admin.queue_stats("bp")).counters["retry"] == 6


async def test_cron_ticks_fire_into_a_full_queue(backend: Backend, pool: asyncjobs.Pool) -> None:
    ticks.clear()
    await pool.admin.set_max_length("bp", 1)
    await pool.enqueue(echo.options(queue="bp", delay=3600), 1)  # full: one delayed job
    cron = asyncjobs.cron(tick, every=0.1, name="full-queue-tick", queue="bp")
    async with running(backend, backend.worker([tick, echo], queues=["bp"], cron=[cron])):
        async with asyncio.timeout(30):
            while len(ticks) < 2:
                await asyncio.sleep(0.02)
    assert all(t.startswith("cron:full-queue-tick:") for t in ticks)
    with pytest.raises(QueueFull):  # producers are still held back
        await pool.enqueue(echo.options(queue="bp"), 2)


async def test_without_a_maximum_an_enqueue_is_one_round_trip(pool: asyncjobs.Pool) -> None:
    await pool.enqueue(echo.options(queue="bp"), 0)  # the queue is registered once
    sent: list[tuple[Any, ...]] = []
    real = pool.client.execute_command

    async def counted(*args: Any, **options: Any) -> Any:
        sent.append(args)
        return await real(*args, **options)

    pool.client.execute_command = counted  # type: ignore[method-assign]
    await pool.enqueue(echo.options(queue="bp"), 1)
    assert [a[0] for a in sent] == ["EVALSHA"]
    await pool.admin.set_max_length("bp", 3)
    sent.clear()
    await pool.enqueue(echo.options(queue="bp"), 2)  # room: still one
    with pytest.raises(QueueFull):  # none: still one (no wait by default)
        await pool.enqueue(echo.options(queue="bp"), 3)
    assert [a[0] for a in sent] == ["EVALSHA", "EVALSHA"]


async def test_bad_maximums_and_waits_are_refused_and_write_nothing(backend: Backend,
                                                                    pool: asyncjobs.Pool
                                                                    ) -> None:
    for bad in (0, -1, 1.5, "10", True, None.__class__, 10**13):
        with pytest.raises(ConfigurationError, match="maximum length"):
            await pool.admin.set_max_length("bp", bad)  # type: ignore[arg-type]
    assert not await pool.client.exists(pool.keys("bp").settings)
    assert await pool.admin.max_length("bp") is None
    for wait in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="wait_for_room"):
            await pool.enqueue_many([call(echo.options(queue="bp"), 1)], wait_for_room=wait)
        with pytest.raises(ValueError, match="wait_for_room"):
            backend.pool(wait_for_room=wait)
    assert await length(pool, "bp") == 0
    assert not await pool.client.exists(pool.keys("bp").stats)


async def test_the_maximum_is_shown_and_can_be_taken_away(pool: asyncjobs.Pool) -> None:
    assert (await pool.admin.queue_stats("bp")).max_length is None
    await pool.admin.set_max_length("bp", 2)
    assert "bp" in await pool.admin.queues()
    assert await pool.admin.max_length("bp") == 2
    await pool.enqueue_many([call(echo.options(queue="bp"), i) for i in range(2)])
    with pytest.raises(QueueFull):
        await pool.enqueue(echo.options(queue="bp"), 3)
    await pool.admin.set_max_length("bp", None)
    assert (await pool.admin.queue_stats("bp")).max_length is None
    await pool.enqueue(echo.options(queue="bp"), 3)  # no maximum: room again
    assert await length(pool, "bp") == 3


async def test_garbage_in_the_settings_is_no_maximum(pool: asyncjobs.Pool) -> None:
    keys = pool.keys("bp")
    await pool.client.hset(keys.settings, "max_length", "lots")
    await pool.enqueue_many([call(echo.options(queue="bp"), i) for i in range(3)])
    await pool.client.delete(keys.settings)
    await pool.client.set(keys.settings, "not a hash")
    await pool.enqueue(echo.options(queue="bp"), 4)
    assert await length(pool, "bp") == 4


@pytest.mark.parametrize("stored", ["1e1", "0x0a", " 10", "10.0", "+10", "-10", "0",
                                    "1000000000001", "9" * 30, "010", "10", "0" * 30 + "10",
                                    "0" * 30])
async def test_a_maximum_is_enforced_exactly_when_it_is_shown(pool: asyncjobs.Pool,
                                                              stored: str) -> None:
    """Whatever was written by hand: enqueue.lua enforces a maximum exactly when
    ``max_length`` (and so ``queue_stats``, ``queue-limit``, ``info``) shows one, and the
    same one."""
    keys = pool.keys("bp")
    await pool.client.hset(keys.settings, "max_length", stored)
    shown = await pool.admin.max_length("bp")
    assert (await pool.admin.queue_stats("bp")).max_length == shown
    try:
        await pool.enqueue_many([call(echo.options(queue="bp"), i) for i in range(12)])
        enforced = None
    except QueueFull as full:
        enforced = full.queues["bp"]
    assert enforced == shown
    assert shown == (10 if stored.lstrip("0") == "10" else None)


class _Idle:
    active = 0


async def test_metrics_show_the_maximum_and_the_refusals(pool: asyncjobs.Pool) -> None:
    from prometheus_client import CollectorRegistry

    from asyncjobs.metrics import WorkerMetrics

    registry = CollectorRegistry()
    metrics = WorkerMetrics(worker="w", queues=["bp", "free"], concurrency=1,
                            registry=registry, refresh_s=60)
    await pool.admin.set_max_length("bp", 2)
    with pytest.raises(QueueFull):
        await pool.enqueue_many([call(echo.options(queue="bp"), i) for i in range(5)])
    await metrics.refresh(pool, _Idle())

    def value(name: str, queue: str) -> float | None:
        return registry.get_sample_value(name, {"queue": queue})

    assert value("asyncjobs_queue_max_length", "bp") == 2
    assert value("asyncjobs_queue_enqueues_refused", "bp") == 3
    assert value("asyncjobs_queue_max_length", "free") == 0  # no maximum


@pytest.mark.slow
async def test_the_queue_limit_command_and_info(real: Backend) -> None:
    def cli(*args: str) -> tuple[int, str, str]:
        done = run_cli(*args, "--redis-url", real.url or "", "--prefix", real.prefix,
                       env={"COLUMNS": "80"})
        return done.returncode, done.stdout, done.stderr

    assert await asyncio.to_thread(cli, "queue-limit", "bp", "2") == (
        0, "queue bp: max length 2 (0 job(s) in it, 0 refused so far)\n", "")
    async with real.pool() as pool:
        with pytest.raises(QueueFull):
            await pool.enqueue_many([call(echo.options(queue="bp"), i) for i in range(3)])
    code, out, _ = await asyncio.to_thread(cli, "queue-limit", "bp", "--json")
    assert code == 0
    assert json.loads(out) == {"queue": "bp", "max_length": 2, "length": 2, "refused": 1}
    code, out, _ = await asyncio.to_thread(cli, "info", "--json")
    [stats] = json.loads(out)["queues"]
    assert (stats["max_length"], stats["counters"]["refused"]) == (2, 1)
    code, out, _ = await asyncio.to_thread(cli, "info")
    row = next(line for line in out.splitlines() if line.startswith("│ bp "))  # queues
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert (cells[1], cells[-1]) == ("2", "2")  # waiting ... max
    for bad in ("0", "-3", "lots", "1.5"):
        code, _, err = await asyncio.to_thread(cli, "queue-limit", "bp", bad)
        assert code == 2 and ("MAX" in err or "-3" in err), err
    code, _, err = await asyncio.to_thread(cli, "queue-limit", "bp", "3", "--clear")
    assert code == 2 and "not both" in err
    code, out, _ = await asyncio.to_thread(cli, "queue-limit", "bp", "--clear")
    assert (code, out) == (0, "queue bp: no maximum (2 job(s) in it, 1 refused so far)\n")
