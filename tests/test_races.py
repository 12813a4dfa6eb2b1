"""Races between operator / producer operations and running workers, on a real Redis.

Each test forces one interleaving deterministically: a hook placed between two steps of an
operation (a settle about to be sent, a bulk requeue between its check and its scripts, a
reclaim between its claim and its start) runs the competing operation there, so the test
fails whenever the code lets that interleaving break a guarantee.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._model import ENDED_TTL_S
from asyncjobs._producer.admin import Admin
from asyncjobs._worker import reclaimer
from asyncjobs._worker.settler import Settler

from .conftest import Backend, running

pytestmark = pytest.mark.asyncio


async def burst(backend: Backend, tasks: list[Any], **options: Any) -> None:
    worker = backend.worker(tasks, burst=True, **options)
    await asyncio.wait_for(backend.run(worker), 60)


# -- abort racing the settle of a retry --------------------------------------------------------


async def test_an_abort_landing_between_a_failed_attempt_and_its_retry_settle_ends_the_job(
    real: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The abort arrives after the attempt's body ended (nothing left to cancel) and before
    its retry is recorded: the job must end aborted, not wait in the delayed set for its
    whole retry delay (an hour here) with the abort pending. The worker's log says so
    after the retry line it wrote as the attempt ended."""
    caplog.set_level(logging.INFO, logger="asyncjobs.worker.jobs")
    job_id = "race-abort-retry"

    @asyncjobs.task(name="retry_later", max_tries=3)
    async def retry_later(ctx: Context) -> None:
        raise asyncjobs.Retry(delay=3600)

    answers: list[bool] = []
    original = Settler._send

    async with real.pool() as pool:

        async def send(self: Settler, by_queue: dict[str, list[Any]]) -> Any:
            if not answers and any(item.op.job_id == job_id and item.op.outcome == "retry"
                                   for items in by_queue.values() for item in items):
                answers.append(await pool.job(job_id).abort())
            return await original(self, by_queue)

        monkeypatch.setattr(Settler, "_send", send)

        class Seen:
            def __init__(self) -> None:
                self.kinds: list[str] = []

            def job_event(self, event: asyncjobs.JobEvent) -> None:
                self.kinds.append(event.kind)

        seen = Seen()
        job = await pool.enqueue(retry_later.options(job_id=job_id))
        async with running(real, real.worker([retry_later], concurrency=1, observers=[seen])):
            with pytest.raises(asyncjobs.JobAborted):
                await job.result(timeout=10)
        assert answers == [True]  # the job was running when the abort was asked
        assert seen.kinds == ["started", "retry", "aborted"]
        info = await job.info()
        assert info.state is JobState.ABORTED
        keys = pool.keys("default")
        assert await pool.client.zscore(keys.delayed, job_id) is None
        assert ENDED_TTL_S - 60 < await pool.client.ttl(keys.job(job_id)) <= ENDED_TTL_S
        assert [e.type for e in info.errors] == ["asyncjobs.exceptions.Retry"]
        stats = await pool.admin.queue_stats()
        assert stats.counters.get("aborted") == 1 and "retry" not in stats.counters
    lines = [r for r in caplog.records if r.name == "asyncjobs.worker.jobs"
             and getattr(r, "job_id", None) == job_id and r.getMessage().startswith("job ")]
    assert [getattr(r, "outcome", "") for r in lines] == ["retry", "aborted"], [
        r.getMessage() for r in lines]
    assert "no retry" in lines[-1].getMessage() and lines[-1].task == "retry_later"  # type: ignore[attr-defined]
    assert lines[-1].attempt == 1  # type: ignore[attr-defined]


# -- requeue_all racing another requeue_all, and a worker dead-lettering again -----------------


def failing_task(runs: Counter[str]) -> asyncjobs.Task[Any, Any]:
    @asyncjobs.task(name="always_fails", max_tries=1)
    async def always_fails(ctx: Context) -> None:
        runs[ctx.job_id] += 1
        raise ValueError("no")

    return always_fails


def between_check_and_requeue(monkeypatch: pytest.MonkeyPatch, pool: asyncjobs.Pool,
                              meanwhile: Any) -> None:
    """Run ``meanwhile()`` once, when ``pool``'s requeue_all has read the letters' records
    and is about to send its requeue scripts."""
    original = Admin._requeue_page
    done: list[bool] = []

    async def requeue_page(self: Admin, queue: str, *args: Any, **kwargs: Any) -> list[str]:
        if self.pool is pool and not done:
            done.append(True)
            await meanwhile()
        return await original(self, queue, *args, **kwargs)

    monkeypatch.setattr(Admin, "_requeue_page", requeue_page)


async def dead_jobs(pool: asyncjobs.Pool, backend: Backend, task: asyncjobs.Task[Any, Any],
                    n: int) -> list[str]:
    jobs = [await pool.enqueue(task.options(job_id=f"dead-{i}")) for i in range(n)]
    await burst(backend, [task])
    assert len(await pool.admin.dead_letters()) == n
    return [j.id for j in jobs]


async def test_two_requeue_all_runs_at_once_requeue_and_count_each_letter_once(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: Counter[str] = Counter()
    task = failing_task(runs)
    async with real.pool() as first, real.pool() as second:
        ids = await dead_jobs(first, real, task, 5)
        reports: list[asyncjobs.RequeueReport] = []

        async def other_run() -> None:
            reports.append(await second.admin.requeue_all())

        between_check_and_requeue(monkeypatch, first, other_run)
        mine = await first.admin.requeue_all()
        [theirs] = reports
        assert theirs.requeued == 5
        # Every letter was requeued once, by the other run: this one requeued nothing.
        assert mine.requeued == 0, mine
        assert mine.left == 5
        assert theirs.requeued + mine.requeued == len(ids)
        await burst(real, [task])
        assert runs == dict.fromkeys(ids, 2)


async def test_requeue_all_leaves_a_job_dead_lettered_again_since_it_read_the_letter(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requeue_all reads letter L1 of a job; meanwhile the job is requeued, runs, and is
    dead-lettered again (letter L2). L1 is stale: the job must not be requeued from it
    (it would run a third time, and L2 would vanish unseen)."""
    runs: Counter[str] = Counter()
    task = failing_task(runs)
    async with real.pool() as first, real.pool() as second:
        ids = await dead_jobs(first, real, task, 3)

        async def requeued_and_failed_again() -> None:
            assert (await second.admin.requeue_all()).requeued == 3
            await burst(real, [task])

        between_check_and_requeue(monkeypatch, first, requeued_and_failed_again)
        report = await first.admin.requeue_all()
        assert report.requeued == 0, report
        assert report.not_requeued == {"stale letter (dead-lettered again since)": 3}
        letters = await first.admin.dead_letters()
        assert sorted(d.job_id for d in letters) == sorted(ids)  # the current letters stay
        states = {i: (await first.job(i).status()) for i in ids}
        assert set(states.values()) == {JobState.FAILED}
        await burst(real, [task])
        assert runs == dict.fromkeys(ids, 2)


# -- abort racing the reclaim of a dead worker's job ------------------------------------------


async def died_holding(pool: asyncjobs.Pool, n: int) -> list[str]:
    """A worker that took ``n`` waiting jobs (they are running, their entries pending for
    it) and died before running them."""
    store = pool.store("default")
    await store.ensure_group()
    taken = await store.take("dead-worker", n)
    assert len(taken) == n and all(t.verdict == "run" for t in taken)
    return [t.delivery.job_id for t in taken]


async def test_an_abort_between_the_reclaim_and_the_start_of_a_dead_worker_s_job_ends_it(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []

    @asyncjobs.task(name="never_should_run")
    async def never_should_run(ctx: Context) -> None:
        runs.append(ctx.job_id)

    original = reclaimer.reclaim_levels
    answers: list[bool] = []

    async with real.pool() as pool:
        job = await pool.enqueue(never_should_run)
        await died_holding(pool, 1)

        async def reclaim_levels(*args: Any, **kwargs: Any) -> Any:
            got = await original(*args, **kwargs)
            if got.rows and not answers:  # claimed, not started yet
                answers.append(await job.abort())
            return got

        monkeypatch.setattr(reclaimer, "reclaim_levels", reclaim_levels)
        async with running(real, real.worker([never_should_run], claim_timeout=1)):
            with pytest.raises(asyncjobs.JobAborted):
                await job.result(timeout=15)
        assert answers == [True] and runs == []
        stats = await pool.admin.queue_stats()
        assert (stats.waiting, stats.in_flight) == (0, 0)


# -- two workers racing to reclaim one dead worker's entries, admin operations meanwhile --------


async def test_two_workers_reclaiming_one_dead_worker_run_each_job_once(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: Counter[str] = Counter()

    @asyncjobs.task(name="counted")
    async def counted(ctx: Context, n: int) -> int:
        runs[ctx.job_id] += 1
        return n

    original = reclaimer.reclaim_levels

    async with real.pool() as pool:
        jobs = [await pool.enqueue(counted, n) for n in range(30)]
        held = await died_holding(pool, 30)
        assert sorted(held) == sorted(j.id for j in jobs)
        operator: list[Any] = []

        async def reclaim_levels(*args: Any, **kwargs: Any) -> Any:
            # every scan runs beside an operator's bulk operations and a retry-now
            ops = asyncio.gather(pool.admin.requeue_all(), pool.admin.purge_dead(),
                                 pool.admin.make_due(held))
            got, *done = await asyncio.gather(original(*args, **kwargs), ops)
            operator.append(done)
            return got

        monkeypatch.setattr(reclaimer, "reclaim_levels", reclaim_levels)
        first = real.worker([counted], claim_timeout=1, concurrency=7)
        second = real.worker([counted], claim_timeout=1, concurrency=7)
        async with running(real, first), running(real, second):
            results = await asyncio.gather(*(j.result(timeout=20) for j in jobs))
        assert results == list(range(30))
        assert runs == dict.fromkeys(held, 1)
        assert operator  # the scans did run beside the operator
        stats = await pool.admin.queue_stats()
        assert (stats.waiting, stats.in_flight, stats.delayed, stats.dead) == (0, 0, 0, 0)


# -- enqueue of the same job id racing the previous job's settle -------------------------------


async def test_an_enqueue_of_the_same_id_just_before_or_after_the_settle(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Just before the settle: the running job is returned (dedup) and its result read.
    Just after it, with no result kept (result_ttl=0): the id is free, a new job runs."""
    runs: Counter[str] = Counter()

    @asyncjobs.task(name="once_per_id", result_ttl=0)
    async def once_per_id(ctx: Context) -> int:
        runs[ctx.job_id] += 1
        return runs[ctx.job_id]

    @asyncjobs.task(name="kept_per_id")
    async def kept_per_id(ctx: Context) -> int:
        runs[ctx.job_id] += 1
        return runs[ctx.job_id]

    original = Settler._send
    seen: dict[str, Any] = {}

    async with real.pool() as pool:

        async def send(self: Settler, by_queue: dict[str, list[Any]]) -> Any:
            ids = {item.op.job_id for items in by_queue.values() for item in items}
            if "kept" in ids and "kept-before" not in seen:
                seen["kept-before"] = await pool.enqueue(kept_per_id.options(job_id="kept"))
            replies = await original(self, by_queue)
            if "dropped" in ids and "dropped-after" not in seen:
                seen["dropped-after"] = await pool.enqueue(
                    once_per_id.options(job_id="dropped"))
            return replies

        monkeypatch.setattr(Settler, "_send", send)
        kept = await pool.enqueue(kept_per_id.options(job_id="kept"))
        dropped = await pool.enqueue(once_per_id.options(job_id="dropped"))
        async with running(real, real.worker([once_per_id, kept_per_id])):
            assert await kept.result(timeout=10) == 1
            assert await seen["kept-before"].result(timeout=10) == 1  # the same job
            while runs["dropped"] < 2:
                await asyncio.sleep(0.01)
        assert runs == {"kept": 1, "dropped": 2}
        with pytest.raises(asyncjobs.JobNotFound):  # result_ttl=0: nothing is kept
            await dropped.status()
        stats = await pool.admin.queue_stats()
        assert (stats.waiting, stats.in_flight, stats.delayed, stats.dead) == (0, 0, 0, 0)


# -- a result whose TTL runs out while a waiter waits ------------------------------------------


async def test_a_waiter_gets_a_short_lived_result_and_a_typed_error_once_it_is_gone(
    real: Backend
) -> None:
    release = asyncio.Event()

    @asyncjobs.task(name="short_lived", result_ttl=1)
    async def short_lived(ctx: Context) -> str:
        await release.wait()
        return "value"

    async with real.pool() as pool:
        job = await pool.enqueue(short_lived)
        async with running(real, real.worker([short_lived])):
            waiting = asyncio.ensure_future(job.result(timeout=10))
            while await job.status() is not JobState.RUNNING:
                await asyncio.sleep(0.01)
            release.set()
            assert await waiting == "value"
        keys = pool.keys("default")
        while await pool.client.exists(keys.job(job.id)):
            await asyncio.sleep(0.05)
        with pytest.raises(asyncjobs.JobNotFound):
            await job.result(timeout=2)


async def test_settle_lua_keeps_an_aborted_record_as_long_as_the_worker_does() -> None:
    """settle.lua's retry-turned-abort keeps the record for ABORTED_TTL_S, a copy of
    ``_model.ENDED_TTL_S`` (what the worker passes for an abort it settles itself)."""
    import re
    from pathlib import Path

    source = (Path(asyncjobs.__file__).parent / "_redis" / "lua" / "settle.lua").read_text()
    found = re.search(r"local ABORTED_TTL_S = (\d+)", source)
    assert found is not None
    assert int(found.group(1)) == ENDED_TTL_S
