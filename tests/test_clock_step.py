"""A Redis server whose clock steps forward (an NTP step) makes every pending entry look
idle by the step, those of live workers too. Reclaim scans tell the server the latest time
its clock may read (reclaimer.py, ``ServerClock``; reclaim.lua): past it, nothing is taken
over until live workers have refreshed their entries on the new time. Concurrency leases
expire on the same clock: lease checks tell it the same (limiter.LeaseChecks;
concurrency.lua), and past it no lease expires, so a step lets no more jobs run than the
limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from types import SimpleNamespace
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._limits import acquire
from asyncjobs._redis.fake import fake_factory
from asyncjobs._redis.keys import Keys, limit_name
from asyncjobs._redis.scripts import run_pipelined
from asyncjobs._redis.store import QueueStore, reclaim_levels
from asyncjobs._redis.values import Delivery, LeaseAsk
from asyncjobs._worker.config import WorkerConfig
from asyncjobs._worker.limiter import LeaseChecks
from asyncjobs._worker.server_clock import ServerClock

from .conftest import Backend, running


def stepped_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The fake server's clock (Python's ``time.time``) from now on runs ``offset[0]``
    seconds ahead: set it to step the clock."""
    offset = [0.0]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    return offset


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
    offset = stepped_clock(monkeypatch)
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


def test_the_lease_rule_after_a_step_drops_no_lease_and_waits_a_lease_period() -> None:
    """``acquire(stepped=True)``: leases that only look expired (the clock jumped from ~1 s
    to 70 s) are held; the waiter is looked at again one lease period on, or at its own
    expiry; a holder still renews and a free slot is still free."""
    full = {"a": 1_500, "b": 2_000}
    assert acquire(full, "c", 70_000, 2, 10_000).run  # no step known: both have lapsed
    waits = acquire(full, "c", 70_000, 2, 10_000, stepped=True)
    assert not waits.run and dict(waits.leases) == full and waits.due_ms == 80_000
    assert acquire(full, "c", 70_000, 2, 10_000, expires_ms=75_000,
                   stepped=True).due_ms == 75_000
    assert acquire(full, "a", 70_000, 2, 10_000, stepped=True).run
    assert acquire({"a": 1_500}, "c", 70_000, 2, 10_000, stepped=True).run


async def _started_under(pool: asyncjobs.Pool, name: str) -> Delivery:
    """A job of ``add`` taken by consumer "me" and running, as start.lua leaves it."""
    job = await pool.enqueue(add, 1, 2)
    keys = pool.keys("default")
    with contextlib.suppress(Exception):
        await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
    [(_, [(entry, _)])] = await pool.client.xreadgroup("asyncjobs", "me", {keys.stream: ">"},
                                                       count=1)
    await pool.client.hset(keys.job(job.id), "s", "running")
    entry_id = entry.decode() if isinstance(entry, bytes) else str(entry)
    return Delivery(entry_id, job.id)


@pytest.mark.asyncio
@pytest.mark.on_cluster
async def test_a_lease_check_past_the_latest_time_expires_no_lease(pool: asyncjobs.Pool
                                                                   ) -> None:
    """concurrency.lua's contract: a limit of 1 held by a running job whose lease expired
    a second ago. Past ARGV[6] the lease counts as held: the job waits a lease period, and
    the reply says the clock stepped; '' (no check) or a later bound drops it and runs."""
    keys, name = pool.keys("default"), limit_name("add")
    store = pool.store("default")
    seconds, micros = await pool.client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    await pool.client.hset(keys.job("holder"), mapping={"s": "running", "cl": name})
    await pool.client.zadd(keys.concurrency(name), {"holder": now_ms - 1_000})

    async def check(delivery: Delivery, latest: int | None) -> tuple[str, int, int, bool]:
        [reply] = await run_pipelined(pool.client, [store.lease_call(
            "me", [LeaseAsk(delivery, name, 1)], 15_000, latest)])
        [(verdict, due)] = store.lease_reply(reply)
        return (verdict, due, *store.lease_clock(reply))

    verdict, due, server_ms, stepped = await check(await _started_under(pool, name), 1)
    assert (verdict, stepped) == ("waiting", True) and due >= server_ms + 15_000
    assert await pool.client.zscore(keys.concurrency(name), "holder") == now_ms - 1_000
    verdict, due, server_ms, stepped = await check(await _started_under(pool, name),
                                                   server_ms + 3_600_000)
    assert (verdict, stepped) == ("run", False) and due == server_ms + 15_000
    assert await pool.client.zscore(keys.concurrency(name), "holder") is None
    third = await _started_under(pool, name)
    await pool.client.delete(keys.concurrency(name))  # the second's live lease, too
    await pool.client.zadd(keys.concurrency(name), {"holder": now_ms - 1_000})
    verdict, _, _, stepped = await check(third, None)
    assert (verdict, stepped) == ("run", False)


concurrent: list[int] = [0, 0]  # running now, most at once
gate = {"release": asyncio.Event(), "began": asyncio.Event(), "unblock": asyncio.Event()}


@asyncjobs.task(concurrency_limit=1)
async def one_at_a_time(ctx: Context, hold: bool) -> None:
    concurrent[0] += 1
    concurrent[1] = max(concurrent)
    try:
        gate["began"].set()
        if hold:
            await gate["release"].wait()
    finally:
        concurrent[0] -= 1


def reset_one_at_a_time() -> None:
    concurrent[:] = [0, 0]
    gate.update(release=asyncio.Event(), began=asyncio.Event(), unblock=asyncio.Event())


@asyncjobs.task
async def blocker(ctx: Context) -> None:
    await gate["unblock"].wait()


@pytest.mark.asyncio
@pytest.mark.parametrize("priority", ["", "high"])
async def test_a_clock_step_forward_lets_no_more_jobs_run_than_the_limit(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        priority: str) -> None:
    """The fake server's clock is Python's ``time.time``. A job holds the only lease of a
    limit of 1 (leases of 12 s, renewed every 2 s); the clock steps 60 s forward and a
    second job of the limit comes at once: its lease check finds the holder's lease
    expired on the new time, before any renewal. It waits; once the holder ends (its
    release lets the waiter go) it runs: never two at once, each job once. The second job
    may be of another priority level (its first check on that level: the levels share
    one lease set, and one forecast)."""
    backend = Backend("fake", None, fake_factory(), f"t{secrets.token_hex(4)}")
    offset = stepped_clock(monkeypatch)
    caplog.set_level(logging.WARNING, "asyncjobs.worker")
    reset_one_at_a_time()
    async with backend.pool() as pool:
        worker = backend.worker([one_at_a_time], claim_timeout=12)
        async with running(backend, worker):
            first = await pool.enqueue(one_at_a_time, True)
            await asyncio.wait_for(gate["began"].wait(), 10)
            gate["began"].clear()
            offset[0] = 60.0
            second = await pool.enqueue(one_at_a_time.options(priority=priority or None),
                                        False)
            await asyncio.sleep(1.0)  # its lease check has come and gone: it waits
            assert not gate["began"].is_set()
            assert (await second.info()).state is asyncjobs.JobState.SCHEDULED
            gate["release"].set()
            assert await first.result(timeout=10) is None
            assert await second.result(timeout=10) is None
        infos = [await first.info(), await second.info()]
    assert concurrent[1] == 1
    assert [i.attempts for i in infos] == [1, 1]
    assert any("no concurrency lease expires" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_worker_with_long_leases_sees_a_step_that_ends_short_ones(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Two workers of one slot each: ``long`` with a claim timeout of 120 s (its own leases
    would survive a 30 s step), ``short`` with 12 s (whose leases a 30 s step ends), joined
    a moment ago (``long`` has not heard of it). ``short`` runs the limit's holder; the
    clock steps 30 s; the next job of the limit reaches ``long``, whose forecast allows at
    most 5 s: it sees the step and waits. Never two at once."""
    backend = Backend("fake", None, fake_factory(), f"t{secrets.token_hex(4)}")
    offset = stepped_clock(monkeypatch)
    caplog.set_level(logging.WARNING, "asyncjobs.worker")
    reset_one_at_a_time()
    async with backend.pool() as pool:
        long = backend.worker([one_at_a_time, blocker], claim_timeout=120, concurrency=1)
        short = backend.worker([one_at_a_time, blocker], claim_timeout=12, concurrency=1)
        async with running(backend, long):
            assert await (await pool.enqueue(one_at_a_time, False)).result(timeout=10) is None
            await pool.enqueue(blocker)  # keeps ``long`` busy while ``short`` takes the holder
            await asyncio.sleep(0.5)
            async with running(backend, short):
                gate["began"].clear()
                held = await pool.enqueue(one_at_a_time, True)
                await asyncio.wait_for(gate["began"].wait(), 10)
                gate["began"].clear()
                offset[0] = 30.0
                gate["unblock"].set()  # ``long`` is free: the next job is its
                second = await pool.enqueue(one_at_a_time, False)
                await asyncio.sleep(1.5)
                assert not gate["began"].is_set()
                gate["release"].set()
                assert await held.result(timeout=20) is None
                assert await second.result(timeout=20) is None
    assert concurrent[1] == 1
    assert any("no concurrency lease expires" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_check_sent_during_the_hold_does_not_prolong_it() -> None:
    """Two checks of one queue in flight at the end of a hold: the first sent inside it
    (which any server clock is past), the second after it with a forecast. The first's
    reply says "past", which is no news: the hold is not started again, and the next
    check forecasts as usual."""
    client = fake_factory()(max_connections=10, socket_timeout=None)
    store = QueueStore(client, Keys("t" + secrets.token_hex(4), "default"))
    config = WorkerConfig()
    rt = SimpleNamespace(consumer="me", lease_ms=15_000, keepalive_every_s=2.5,
                         fleet_least_claim_s=None, config=config, client=client,
                         stores={"default": store})
    checks = LeaseChecks(rt)  # type: ignore[arg-type]

    async def round_trip(prepared: tuple[Any, Any]) -> list[tuple[str, int]]:
        [reply] = await run_pipelined(client, [prepared[0]])
        return checks._reply(store, reply, prepared[1])

    await round_trip(checks._call(store, []))  # the first reading
    checks._hold_until[store.keys.shared] = time.monotonic() + 0.05  # as after a step
    inside = checks._call(store, [])
    await asyncio.sleep(0.1)
    after = checks._call(store, [])
    assert inside[0][2][5] == 0 and after[0][2][5] > 0  # ARGV[6]: past / a forecast
    await round_trip(inside)
    await round_trip(after)
    assert checks._hold_until[store.keys.shared] < time.monotonic()
    assert checks._call(store, [])[0][2][5] > 0
