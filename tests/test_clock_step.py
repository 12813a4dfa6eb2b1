"""A Redis server whose clock steps forward (an NTP step) makes every pending entry look
idle by the step, those of live workers too. Reclaim scans tell the server the latest time
its clock may read (reclaimer.py, ``ServerClock``; reclaim.lua): past it, nothing is taken
over until live workers have refreshed their entries on the new time."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.fake import fake_factory
from asyncjobs._redis.store import reclaim_levels
from asyncjobs._worker.reclaimer import ServerClock

from .conftest import Backend, running


def test_the_forecast_counts_from_when_the_read_was_sent() -> None:
    clock = ServerClock()
    assert clock.latest_ms(100.0, 500) == 0  # nothing read yet: any time is past it
    assert clock.read(1_000_000, 100.0) is None
    assert clock.latest_ms(100.0, 0) == 1_000_000
    assert clock.latest_ms(102.5, 500) == 1_003_000  # 2.5 s later, plus the margin
    # The next read, sent 2.5 s later, found the server 40 ms further on (its latency).
    assert clock.read(1_002_540, 102.5) == 40
    assert clock.latest_ms(103.5, 0) == 1_003_540
    # A step back is no step forward; the forecast starts again from the new reading.
    assert clock.read(900_000, 104.0) == -104_040
    assert clock.latest_ms(105.0, 10) == 901_010


async def _held_by_ghost(pool: asyncjobs.Pool, job: asyncjobs.Job[int]) -> str:
    keys = pool.keys("default")
    if not await pool.client.exists(keys.stream) or not await pool.client.xinfo_groups(
            keys.stream):
        await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
    got = await pool.client.xreadgroup("asyncjobs", "ghost", {keys.stream: ">"}, count=10)
    [(_, [(entry, _)])] = got
    return entry.decode() if isinstance(entry, bytes) else str(entry)


@asyncjobs.task
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@pytest.mark.asyncio
@pytest.mark.on_cluster
async def test_a_scan_past_the_latest_time_claims_nothing(pool: asyncjobs.Pool) -> None:
    """reclaim.lua's contract: a server clock past ARGV[5] claims nothing and leaves the
    cursors as given; '' checks nothing; a later bound claims as usual."""
    entry = await _held_by_ghost(pool, await pool.enqueue(add, 1, 2))
    stores = [pool.store("default")]
    await asyncio.sleep(0.01)
    stepped = await reclaim_levels(stores, "me", 0, 10, ["0-0"], latest_ms=1)
    assert stepped.stepped and stepped.rows == [] and stepped.errors == []
    assert stepped.cursors == ["0-0"] and stepped.now_ms > 1_600_000_000_000
    [pending] = await pool.client.xpending_range(pool.keys("default").stream, "asyncjobs",
                                                 "-", "+", 10)
    assert pending["consumer"] in (b"ghost", "ghost")
    later = await reclaim_levels(stores, "me", 0, 10, ["0-0"],
                                 latest_ms=stepped.now_ms + 3_600_000)
    assert not later.stepped and [d.entry for _, d in later.rows] == [entry]
    again = await reclaim_levels(stores, "other", 0, 10, ["0-0"])  # no bound: no check
    assert not again.stepped and [d.entry for _, d in again.rows] == [entry]


@pytest.mark.asyncio
async def test_a_clock_step_forward_takes_no_live_worker_s_job(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The fake server's clock is Python's ``time.time``. Two consumers hold a job each:
    ``alive`` refreshes its entry every 0.9 s (under the 1 s threshold of the worker's 2 s
    claim timeout: never taken over without a step), ``dead`` stops at the step. The clock
    steps 60 s forward right after a refresh: the worker's next scan (every 0.5 s) would
    find both entries idle for a minute. It takes neither at once; once the wait is over,
    the dead consumer's job is taken over and the live one's is not."""
    backend = Backend("fake", None, fake_factory(), f"t{secrets.token_hex(4)}")
    offset = [0.0]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    caplog.set_level(logging.WARNING, "asyncjobs.worker")
    async with backend.pool() as pool:
        stream = pool.keys("default").stream
        live, dead = await pool.enqueue(add, 1, 2), await pool.enqueue(add, 20, 22)
        await pool.client.xgroup_create(stream, "asyncjobs", id="0", mkstream=True)
        [(_, [(live_entry, _)])] = await pool.client.xreadgroup(
            "asyncjobs", "alive", {stream: ">"}, count=1)
        [(_, [(dead_entry, _)])] = await pool.client.xreadgroup(
            "asyncjobs", "dead", {stream: ">"}, count=1)

        async def refresh(who: str, entry: bytes) -> None:
            await pool.client.xclaim(stream, "asyncjobs", who, 0, [entry], justid=True)

        async def holder(entry: bytes) -> str:
            rows = await pool.client.xpending_range(stream, "asyncjobs", entry, entry, 1)
            if not rows:
                return "(nobody: taken over and done)"
            name = rows[0]["consumer"]
            return name.decode() if isinstance(name, bytes) else str(name)

        worker = backend.worker([add], claim_timeout=2).configure(heartbeat_every_s=0.3)
        async with running(backend, worker):
            for _ in range(6):  # 1.8 s: the worker scans and reads the server's clock
                await refresh("alive", live_entry)
                await refresh("dead", dead_entry)
                await asyncio.sleep(0.3)
            await refresh("alive", live_entry)
            await refresh("dead", dead_entry)
            offset[0] = 60.0  # the step; from now on "dead" refreshes nothing
            for _ in range(4):  # 3.6 s: past the wait (2 x 2/6 + 1 s), scans every 0.5 s
                for _ in range(9):
                    await asyncio.sleep(0.1)
                    assert await holder(live_entry) == "alive"
                await refresh("alive", live_entry)
            assert await dead.result(timeout=5) == 42
            assert await holder(live_entry) == "alive"
            # "alive" dies too: its job is taken over, nothing is left stuck.
            assert await live.result(timeout=10) == 3
        for job in (dead, live):
            assert [e.type for e in (await job.info()).errors] == ["asyncjobs.WorkerLost"]
    assert any("stepped forward by about 6" in r.getMessage() for r in caplog.records)
