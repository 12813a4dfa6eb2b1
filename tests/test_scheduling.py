"""Delayed jobs, cron and the single-leader scheduler, across real worker processes."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import time
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._redis.store import QueueStore

from .apps import crons
from .conftest import Backend, running
from .procs import ROOT, WorkerProcess
from .procs import workers as procs_workers

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]
TARGET = "tests.apps.crons:worker"


def workers(
    backend: Backend, count: int, **env: str
) -> AbstractContextManager[list[WorkerProcess]]:
    return procs_workers(TARGET, backend.url or "", backend.prefix, count, **env)


def tick_seconds(ids: set[bytes]) -> list[int]:
    """The fire times (epoch seconds) of tick job ids like cron:every-second:<iso>."""
    out = []
    for raw in ids:
        stamp = raw.decode().split(":", 2)[2]
        out.append(int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()))
    return sorted(out)


async def assert_each_tick_once(pool: asyncjobs.Pool, prefix: str, seconds: list[int]) -> None:
    assert len(seconds) == len(set(seconds))
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "a tick is missing"
    runs = await pool.client.mget(
        [f"{prefix}:tickruns:{tid}" for tid in
         [m.decode() for m in await pool.client.smembers(f"{prefix}:ticks")]]
    )
    assert {int(r) for r in runs} == {1}, "a tick ran more than once"


@pytest.mark.slow
async def test_three_workers_run_each_cron_tick_exactly_once(real: Backend) -> None:
    async with real.pool() as pool:
        with workers(real, 3):
            await asyncio.sleep(10)
        await asyncio.sleep(0.5)  # let the last tick finish
        seconds = tick_seconds(await pool.client.smembers(f"{real.prefix}:ticks"))
        assert len(seconds) >= 8
        await assert_each_tick_once(pool, real.prefix, seconds)


def _leader(procs: list[WorkerProcess]) -> WorkerProcess:
    leading = [p for p in procs if "scheduler leads queue default" in p.output]
    assert len(leading) == 1, [p.output[-500:] for p in procs]
    return leading[0]


@pytest.mark.slow
async def test_leader_killed_another_leads_within_the_ttl_and_no_tick_is_lost(
    real: Backend,
) -> None:
    ttl = 2.0
    async with real.pool() as pool:
        with workers(real, 3, TEST_LEASE_TTL=str(ttl)) as procs:
            await asyncio.sleep(3)
            leader = _leader(procs)
            leader.kill()
            killed = time.monotonic()
            others = [p for p in procs if p is not leader]
            while not any("scheduler leads queue default" in p.output for p in others):
                assert time.monotonic() - killed < ttl + 1.0, "no new leader within the TTL"
                await asyncio.sleep(0.02)
            took_over_s = time.monotonic() - killed
            await asyncio.sleep(4)
        await asyncio.sleep(0.5)
        seconds = tick_seconds(await pool.client.smembers(f"{real.prefix}:ticks"))
        # Ticks that came due during the failover were late by less than the 60 s grace,
        # so every policy runs them: none lost, none doubled.
        await assert_each_tick_once(pool, real.prefix, seconds)
    assert took_over_s <= ttl + 0.5, f"took over after {took_over_s:.2f} s"
    assert len(seconds) >= 8


@pytest.mark.slow
async def test_a_stopped_leader_hands_over_at_once_and_followers_wait_out_the_lease(
    real: Backend,
) -> None:
    """A follower tries the lease when the leader's would expire (SET NX, then PTTL to
    learn when), not every third of a TTL; a leader that stops gives its lease up and says
    so on the wake channel: the follower leads within a moment, not when the lease would
    have expired."""
    ttl = 6.0  # renewed every 2 s: the follower reads 4-6 s left at each try
    async with real.pool() as pool:
        with workers(real, 2, TEST_LEASE_TTL=str(ttl)) as procs:
            await asyncio.sleep(2)
            leader = _leader(procs)
            [follower] = [p for p in procs if p is not leader]
            before = await pool.client.info("commandstats")
            await asyncio.sleep(8)
            after = await pool.client.info("commandstats")
            # A false notice (anyone can publish): one more try, then the wait goes on.
            await pool.client.publish(pool.keys("default").wake_channel, "leader")
            await asyncio.sleep(1)
            noticed = await pool.client.info("commandstats")
            leader.signal()
            stopped = time.monotonic()
            while "scheduler leads queue default" not in follower.output:
                assert time.monotonic() - stopped < 3 * ttl, "no new leader"
                await asyncio.sleep(0.02)
            took_over_s = time.monotonic() - stopped
            assert leader.wait() == 0
    # Only the follower's tries send PTTL: 1-2 in 8 s (every third of the TTL: 4).
    tries = after["cmdstat_pttl"]["calls"] - before.get("cmdstat_pttl", {"calls": 0})["calls"]
    assert 1 <= tries <= 2, tries
    # The notice's try (and the natural one, should it fall in that second); a spin on the
    # notice would be thousands.
    assert 1 <= noticed["cmdstat_pttl"]["calls"] - after["cmdstat_pttl"]["calls"] <= 2
    # Waiting out the lease would take 4-6 s after the stop.
    assert took_over_s < 2.5, f"took over {took_over_s:.2f} s after the stop"
    print(f"\nfollower: {tries} lease tries in 8 s; leader stopped -> new leader in "
          f"{took_over_s:.2f} s (TTL {ttl} s)")


@pytest.mark.slow
async def test_five_thousand_delayed_jobs_run_exactly_once_across_three_workers(
    real: Backend,
) -> None:
    async with real.pool() as pool:
        calls = [asyncjobs.call(crons.delayed.options(delay=3 + i / 5000), i)
                 for i in range(5000)]
        jobs = await pool.enqueue_many(calls)
        assert await pool.client.zcard(pool.keys("default").delayed) == 5000
        keys = [f"{real.prefix}:runs:{j.id}" for j in jobs]
        with workers(real, 3):
            deadline = time.monotonic() + 40
            while sum(int(r or 0) for r in await pool.client.mget(keys)) < 5000:
                assert time.monotonic() < deadline, "not all delayed jobs ran"
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # would a job run twice?
        runs = await pool.client.mget(keys)
    assert [int(r or 0) for r in runs] == [1] * 5000


async def promote_all(store: QueueStore, limit: int = 50) -> int:
    """Promote due jobs ``limit`` at a time until none is left; returns how many it moved."""
    total = 0
    while True:
        done = await store.promote(limit, 60)
        total += done.promoted
        if done.promoted == 0:
            return total


async def assert_each_due_job_queued_once(pool: asyncjobs.Pool, jobs: list[asyncjobs.Job[Any]],
                                          promoted: list[int]) -> None:
    """The guarantee of racing promoters: every due job reached the stream exactly once,
    none was left behind, and the promoters' counts add up. Which promoter moved how many
    is left to the scheduling of the race (on the in-memory fake, one may move them all)."""
    store = pool.store("default")
    assert sum(promoted) == len(jobs), promoted
    entries = await pool.client.xrange(store.keys.stream)
    ids = [fields[b"i"].decode() for _, fields in entries]
    assert len(ids) == len(set(ids)), "a job was promoted twice"
    assert sorted(ids) == sorted(j.id for j in jobs), "a job was lost"
    assert await pool.client.zcard(store.keys.delayed) == 0
    for job in jobs[:: max(1, len(jobs) // 30)]:
        assert await job.status() is JobState.QUEUED


async def enqueue_due(pool: asyncjobs.Pool, n: int) -> list[asyncjobs.Job[Any]]:
    """``n`` delayed jobs, all due once this returns."""
    jobs = await pool.enqueue_many(
        asyncjobs.call(crons.delayed.options(delay=0.2), i) for i in range(n)
    )
    await asyncio.sleep(0.3)
    return jobs


async def test_racing_promotions_neither_duplicate_nor_lose(backend: Backend,
                                                            pool: asyncjobs.Pool) -> None:
    jobs = await enqueue_due(pool, 3000)
    others = [asyncjobs.Pool(backend.factory(max_connections=4, socket_timeout=5),
                             prefix=backend.prefix) for _ in range(2)]
    go = asyncio.Event()

    async def promoter(p: asyncjobs.Pool) -> int:
        store = p.store("default")
        await p.client.ping()  # connected before the start
        await go.wait()
        return await promote_all(store)

    try:
        racing = [asyncio.create_task(promoter(p)) for p in others]
        await asyncio.sleep(0.05)
        go.set()  # both leave together: on real Redis their script calls interleave
        counts = await asyncio.gather(*racing)
    finally:
        for p in others:
            await p.close()
    await assert_each_due_job_queued_once(pool, jobs, counts)


# One promoter process: connects, says it is ready, waits for the start signal, then
# promotes 50 at a time until nothing is due and prints how many it moved.
PROMOTER = """
import asyncio, sys
import asyncjobs

async def main(url: str, prefix: str) -> None:
    async with asyncjobs.create_pool(url, prefix=prefix) as pool:
        store = pool.store("default")
        await pool.client.incr(f"{prefix}:ready")
        await pool.client.blpop([f"{prefix}:go"], timeout=60)
        total = 0
        while (done := await store.promote(50, 60)).promoted:
            total += done.promoted
        print(total)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.slow
async def test_promoter_processes_released_together_neither_duplicate_nor_lose(
    real: Backend,
) -> None:
    """The race forced: three processes, each on its own connection, held at a barrier in
    Redis (BLPOP) until all are connected, then promoting the same 6,000 due jobs at once."""
    assert real.url is not None
    count = 3
    async with real.pool() as pool:
        jobs = await enqueue_due(pool, 6000)
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROMOTER, real.url, real.prefix, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        ) for _ in range(count)]
        try:
            deadline = time.monotonic() + 60
            while int(await pool.client.get(f"{real.prefix}:ready") or 0) < count:
                assert all(p.returncode is None for p in procs), "a promoter died at start"
                assert time.monotonic() < deadline, "the promoters never got ready"
                await asyncio.sleep(0.05)
            await pool.client.rpush(f"{real.prefix}:go", *["go"] * count)
            outputs = await asyncio.gather(*(p.communicate() for p in procs))
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
        assert [p.returncode for p in procs] == [0] * count, outputs
        await assert_each_due_job_queued_once(pool, jobs, [int(out) for out, _ in outputs])


async def test_expired_at_promotion_is_logged_and_counted(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    job = await pool.enqueue(crons.delayed.options(delay=0.3, expires=0.1), 1)
    caplog.set_level("INFO", logger="asyncjobs")
    await backend.run(backend.worker([crons.delayed], burst=True))
    assert await job.status() is JobState.EXPIRED
    assert re.search(r"expired 1 job\(s\) on queue default before", caplog.text)


async def test_no_overlap_skips_the_ticks_that_come_while_the_previous_run_runs(
    backend: Backend, pool: asyncjobs.Pool,
) -> None:
    runs: list[str] = []
    now_running = most_running = 0

    @asyncjobs.task(name="slow_tick")
    async def slow_tick(ctx: Context) -> None:
        nonlocal now_running, most_running
        runs.append(ctx.job_id)
        now_running += 1
        most_running = max(most_running, now_running)
        try:
            await asyncio.sleep(0.5)
        finally:
            now_running -= 1

    job = asyncjobs.cron(slow_tick, every=0.1, name="slow", no_overlap=True)
    async with running(backend, backend.worker([slow_tick], cron=[job])):
        for _ in range(200):
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.05)
    assert len(runs) >= 3 and most_running == 1
    # a tick every 0.1 s, each run 0.5 s: the ticks that came while one ran were skipped
    started = [datetime.fromisoformat(r.split(":", 2)[2].replace("Z", "+00:00"))
               for r in runs]
    assert all(b - a >= timedelta(seconds=0.5) for a, b in itertools.pairwise(started))


async def test_a_cron_name_with_a_colon_fires(backend: Backend, pool: asyncjobs.Pool) -> None:
    ticks: list[str] = []

    @asyncjobs.task(name="report")
    async def report(ctx: Context) -> None:
        ticks.append(ctx.job_id)

    job = asyncjobs.cron(report, every=0.2, name="reports:daily", no_overlap=True)
    async with running(backend, backend.worker([report], cron=[job])):
        for _ in range(100):
            if len(ticks) >= 2:
                break
            await asyncio.sleep(0.05)
    assert len(ticks) >= 2 and all(t.startswith("cron:reports:daily:") for t in ticks)
    with pytest.raises(ValueError, match="may not end with ':job'"):
        asyncjobs.cron(report, every=1, name="nightly:job")


async def _leads(pool: asyncjobs.Pool, queues: list[str]) -> None:
    """Wait until every queue's scheduler lease is held."""
    for _ in range(500):
        if all([await pool.client.exists(pool.keys(q).leader) for q in queues]):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no leader for all of {queues}")


async def test_the_leases_of_several_queues_are_given_up_side_by_side(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker leading three queues gives their leases up at once, within one bound from
    the stop: with Redis not answering, every release waits at the same time and all end at
    that bound (one after the other, the three took three bounds, past the exit's)."""
    from asyncjobs._scheduling.leader import Lease
    from asyncjobs._worker import serving

    monkeypatch.setattr(serving, "_RELEASE_S", 0.3)
    waiting: set[str] = set()
    most, cut_short = 0, []

    async def stalled(self: Lease) -> None:
        nonlocal most
        waiting.add(self.key)
        most = max(most, len(waiting))
        try:
            await asyncio.sleep(3600)  # a Redis that does not answer
        except asyncio.CancelledError:
            cut_short.append(self.key)
            raise
        finally:
            waiting.discard(self.key)

    queues = ["a", "b", "c"]
    async with running(backend, backend.worker([], queues=queues)):
        await _leads(pool, queues)
        monkeypatch.setattr(Lease, "release", stalled)
    assert most == 3 and len(cut_short) == 3, (most, cut_short)


async def test_a_lease_that_cannot_be_given_up_leaves_the_others_and_the_stop_alone(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """One queue's lease release fails with an error that is not an outage: it is one
    warning, the other queues' leases are still given up (their keys gone at once) and the
    worker stops normally (the error ended the worker's run, and the leases left expired
    only with their TTL)."""
    from redis.exceptions import ResponseError

    from asyncjobs._scheduling.leader import Lease

    given_up = Lease.release

    async def refused(self: Lease) -> None:
        if self.key == pool.keys("b").leader:
            raise ResponseError("ERR refused by hand")
        await given_up(self)

    queues = ["a", "b", "c"]
    async with running(backend, backend.worker([], queues=queues)):
        await _leads(pool, queues)
        monkeypatch.setattr(Lease, "release", refused)
    assert [await pool.client.exists(pool.keys(q).leader) for q in queues] == [0, 1, 0]
    [line] = [r.getMessage() for r in caplog.records if "could not give its lease" in
              r.getMessage()]
    assert line == "scheduler of queue b could not give its lease up: ResponseError: ERR " \
                   "refused by hand", line
