"""An adversarial sweep of flow control: rate limits, concurrency limits and queue
maximums attacked with garbage in their keys, dead and racing workers, deferred jobs that
are aborted or expire, limits changed at runtime, a skewed worker clock and idle workers
that could spin. Each test can fail: it counts what runs (a shared counter in the task
body, on the Redis clock where it matters) rather than trusting the worker's word."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.keys import limit_name
from asyncjobs._redis.scripts import run_pipelined
from asyncjobs._redis.values import Delivery, LeaseAsk

from .conftest import Backend, running

# -- helpers ---------------------------------------------------------------------------------


async def until(predicate: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def redis_ms(pool: asyncjobs.Pool) -> int:
    seconds, micros = await pool.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def state_is(pool: asyncjobs.Pool, job_id: str, *states: JobState) -> bool:
    return await pool.job(job_id).status() in states


class Counter:
    """How many bodies run at once, and the most ever seen (one process)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.runs: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def inside(self, job_id: str) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.runs[job_id] = self.runs.get(job_id, 0) + 1
        try:
            yield
        finally:
            self.now -= 1


async def _taken_by(pool: asyncjobs.Pool, consumer: str, job_id: str) -> Delivery:
    """Read the job's entry as ``consumer`` and start it, as a worker's take would."""
    keys = pool.keys("default")
    with contextlib.suppress(Exception):
        await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
    reply = await pool.client.xreadgroup("asyncjobs", consumer, {keys.stream: ">"}, count=1)
    [(_, [(entry, fields)])] = reply
    got = fields.get(b"i") or fields.get("i")
    assert (got.decode() if isinstance(got, bytes) else got) == job_id
    entry_id = entry.decode() if isinstance(entry, bytes) else str(entry)
    await pool.store("default").start(consumer, [Delivery(entry_id, job_id)])
    return Delivery(entry_id, job_id)


# -- rate limits: garbage in the limit key ---------------------------------------------------


@asyncjobs.task(rate_limit="10/s", name="hostile_rate")
async def hostile_rate(ctx: Context, i: int) -> int:
    return i


@pytest.mark.asyncio
@pytest.mark.parametrize("garbage", [
    "abc", "-5", "nan", "inf", "-inf", "1e300", "0x10", "", "hash", "list",
    "year-ahead-no-ttl", "year-ahead-short-ttl",
])
async def test_garbage_in_a_rate_key_never_wedges_the_limit(backend: Backend,
                                                             garbage: str) -> None:
    """Only rate.lua writes a rate key, always with a TTL that ends just after the TAT it
    holds. Anything else there (wrong type, not a number, a TAT a year ahead that no TTL
    backs) counts as no TAT: the job runs at once instead of waiting for that year."""
    async with backend.pool() as pool:
        key = pool.keys("default").rate("hostile_rate", "")
        now_us = await redis_ms(pool) * 1000
        if garbage == "hash":
            await pool.client.hset(key, "tat", "1")
        elif garbage == "list":
            await pool.client.rpush(key, "1")
        elif garbage == "year-ahead-no-ttl":
            await pool.client.set(key, str(now_us + 365 * 86400 * 10**6))
        elif garbage == "year-ahead-short-ttl":
            await pool.client.set(key, str(now_us + 365 * 86400 * 10**6), px=60_000)
        else:
            await pool.client.set(key, garbage)
        job = await pool.enqueue(hostile_rate, 1)
        async with running(backend, backend.worker([hostile_rate])):
            assert await job.result(timeout=10) == 1
        info = await job.info()
    assert info.attempts == 1


# -- concurrency limits: a released waiter that never takes its slot -------------------------


BATON = Counter()


@asyncjobs.task(concurrency_limit=1, name="baton")
async def baton(ctx: Context, i: int) -> int:
    async with BATON.inside(ctx.job_id):
        return i


LEASE_MS = 60_000
"""The ghost's leases: far beyond what any test here waits, so a waiter that starts in
time was let go by a release, not by its safety net."""


async def _ghost_holds_and_two_wait(pool: asyncjobs.Pool, k1_expires_s: float | None = None
                                    ) -> tuple[Delivery, Any, Any, str]:
    """A worker that is not running ("ghost", driven by the test through the scripts) holds
    the only lease of ``baton`` with J; K1 and K2 wait on it, in that order."""
    store, name = pool.store("default"), limit_name("baton")
    j = await pool.enqueue(baton, 0)
    dj = await _taken_by(pool, "ghost", j.id)
    k1 = await pool.enqueue(baton.options(expires=k1_expires_s) if k1_expires_s else baton, 1)
    d1 = await _taken_by(pool, "ghost", k1.id)
    k2 = await pool.enqueue(baton, 2)
    d2 = await _taken_by(pool, "ghost", k2.id)
    verdicts = []
    for d in (dj, d1, d2):  # one call each, a few ms apart: K1 is the older waiter
        [reply] = await run_pipelined(pool.client, [store.lease_call(
            "ghost", [LeaseAsk(d, name, 1)], LEASE_MS)])
        verdicts += [v for v, _ in store.lease_reply(reply)]
        await asyncio.sleep(0.005)
    assert verdicts == ["run", "waiting", "waiting"]
    return dj, k1, k2, name


async def _ghost_ends(pool: asyncjobs.Pool, held: Delivery, name: str) -> None:
    """The ghost records J's end: its lease is released and K1 (the oldest waiter) let go."""
    from asyncjobs._redis.values import SettleOp

    store = pool.store("default")
    [reply] = await run_pipelined(pool.client, [store.settle_call(
        "ghost", [SettleOp(held.entry, held.job_id, "aborted", number=60, lease=name)])])
    assert list(reply) == [1]


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["aborted-while-queued", "expired-before-its-start",
                                 "aborted-while-running"])
async def test_a_released_waiter_that_ends_unrun_passes_the_slot_on(backend: Backend,
                                                                    how: str) -> None:
    """A release lets the oldest waiter (K1) go; if K1 then ends without running (aborted
    in the stream, or past its expiry when a worker starts it, or aborted while its start
    was on the way), the free slot goes to the next waiter (K2) at once, not at K2's
    safety-net due time a lease period (here a minute) later."""
    BATON.__init__()
    async with backend.pool() as pool:
        dj, k1, k2, name = await _ghost_holds_and_two_wait(
            pool, 1.0 if how == "expired-before-its-start" else None)
        await _ghost_ends(pool, dj, name)
        assert await k1.status() is JobState.QUEUED  # let go by the release
        if how == "aborted-while-queued":
            assert await k1.abort()
        elif how == "expired-before-its-start":
            await asyncio.sleep(1.1)
        else:  # the start said 'running' (K1 was read and started), then came the abort
            d1 = await _taken_by(pool, "ghost-2", k1.id)
            assert await k1.abort()
            store = pool.store("default")
            [reply] = await run_pipelined(pool.client, [store.lease_call(
                "ghost-2", [LeaseAsk(d1, name, 1)], LEASE_MS)])
            assert [v for v, _ in store.lease_reply(reply)] == ["aborted"]
            from asyncjobs._redis.values import SettleOp
            [reply] = await run_pipelined(pool.client, [store.settle_call(
                "ghost-2", [SettleOp(d1.entry, d1.job_id, "aborted", number=60)])])
        async with running(backend, backend.worker([baton], claim_timeout=60)):
            assert await k2.result(timeout=8) == 2
        k1_state = await k1.status()
        leases = await pool.client.zcard(pool.keys("default").concurrency(name))
    assert k1_state in (JobState.ABORTED, JobState.EXPIRED)
    assert BATON.peak == 1 and leases == 0


@pytest.mark.asyncio
async def test_a_waiter_that_expires_ends_visibly_and_leaves_the_wait_list(backend: Backend
                                                                          ) -> None:
    """K waits on a full limit with an expiry before the holder's lease lapses: its
    safety-net due time is its expiry, where it ends `expired`; nobody waits on the limit
    any more, and the admin listing says so (no phantom waiter until the next release)."""
    async with backend.pool() as pool:
        store, name = pool.store("default"), limit_name("baton")
        j = await pool.enqueue(baton, 0)
        dj = await _taken_by(pool, "ghost", j.id)
        k = await pool.enqueue(baton.options(expires=0.5), 1)
        dk = await _taken_by(pool, "ghost", k.id)
        [reply] = await run_pipelined(pool.client, [store.lease_call(
            "ghost", [LeaseAsk(dj, name, 1), LeaseAsk(dk, name, 1)], LEASE_MS)])
        assert [v for v, _ in store.lease_reply(reply)] == ["run", "waiting"]
        async with running(backend, backend.worker([baton], claim_timeout=60)):
            await until(lambda: state_is(pool, k.id, JobState.EXPIRED), "K expired", 10)
            limits = await pool.admin.concurrency()
        waiters = await pool.client.zcard(pool.keys("default").concurrency_wait(name))
    assert [(c.running, c.waiting) for c in limits] == [(1, 0)]
    assert waiters == 0


# -- dead, racing and skewed workers ---------------------------------------------------------


@pytest.mark.asyncio
async def test_an_abandoned_workers_lease_lapses_and_both_jobs_run_once(backend: Backend
                                                                        ) -> None:
    """A worker that dies mid-job (here "ghost": it took J and J's lease, as a worker with
    a 2 s claim timeout does, then never renewed nor settled anything) blocks the limit no
    longer than its lease: K, waiting behind it, and J itself (reclaimed) both run, one at
    a time, each once."""
    BATON.__init__()
    async with backend.pool() as pool:
        store, name = pool.store("default"), limit_name("baton")
        j = await pool.enqueue(baton, 0)
        dj = await _taken_by(pool, "ghost", j.id)
        [reply] = await run_pipelined(pool.client, [store.lease_call(
            "ghost", [LeaseAsk(dj, name, 1)], 2_000)])
        assert [v for v, _ in store.lease_reply(reply)] == ["run"]
        k = await pool.enqueue(baton, 1)
        began = time.monotonic()
        async with running(backend, backend.worker([baton], claim_timeout=2)):
            assert await k.result(timeout=10) == 1
            assert await j.result(timeout=10) == 0
        took = time.monotonic() - began
        leases = await pool.client.zcard(pool.keys("default").concurrency(name))
    assert BATON.peak == 1 and sorted(BATON.runs.values()) == [1, 1]
    assert leases == 0 and took < 8


@asyncjobs.task(concurrency_limit=2, name="raced")
async def raced(ctx: Context, i: int) -> int:
    async with RACED.inside(ctx.job_id):
        await asyncio.sleep(0.01)
    return i


RACED = Counter()


@pytest.mark.asyncio
async def test_two_workers_racing_for_the_last_slot_never_both_take_it(backend: Backend
                                                                       ) -> None:
    """Deterministic first: two consumers ask for the one slot left in the same instant
    (their calls pipelined on two connections, released together); exactly one runs. Then
    two real workers drain 40 jobs of a limit of 2: never more than 2 bodies at once."""
    RACED.__init__()
    async with backend.pool() as pool, backend.pool() as other:
        store, name = pool.store("default"), limit_name("raced")
        held = await pool.enqueue(raced, -1)
        dh = await _taken_by(pool, "a", held.id)
        [reply] = await run_pipelined(pool.client, [store.lease_call(
            "a", [LeaseAsk(dh, name, 2)], 60_000)])
        assert [v for v, _ in store.lease_reply(reply)] == ["run"]
        x, y = await pool.enqueue(raced, -2), await pool.enqueue(raced, -3)
        dx, dy = await _taken_by(pool, "a", x.id), await _taken_by(pool, "b", y.id)
        go = asyncio.Event()

        async def ask(p: asyncjobs.Pool, who: str, d: Delivery) -> str:
            await go.wait()
            [r] = await run_pipelined(p.client, [p.store("default").lease_call(
                who, [LeaseAsk(d, name, 2)], 60_000)])
            return p.store("default").lease_reply(r)[0][0]

        asks = [asyncio.create_task(ask(pool, "a", dx)), asyncio.create_task(ask(other, "b", dy))]
        await asyncio.sleep(0)
        go.set()
        verdicts = sorted(await asyncio.gather(*asks))
        assert verdicts == ["run", "waiting"]
        await pool.client.delete(store.keys.concurrency(name))  # the test's leases go
        for job in (held, x, y):
            await job.abort()
        jobs = await pool.enqueue_many([asyncjobs.call(raced, i) for i in range(40)])
        async with running(backend, backend.worker([raced], concurrency=10)), \
                running(backend, backend.worker([raced], concurrency=10)):
            results = [await j.result(timeout=30) for j in jobs]
    assert results == list(range(40))
    assert RACED.peak == 2 and set(RACED.runs.values()) == {1}


SKEWED = Counter()


@asyncjobs.task(concurrency_limit=1, rate_limit="20/s", name="skewed")
async def skewed(ctx: Context, i: int) -> int:
    async with SKEWED.inside(ctx.job_id):
        await asyncio.sleep(0.005)
    return i


@pytest.mark.asyncio
@pytest.mark.parametrize("skew_s", [-365 * 86400.0, 365 * 86400.0])
async def test_a_worker_clock_a_year_off_changes_no_limit(real: Backend,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          skew_s: float) -> None:
    """The worker's wall clock (``time.time``) a year ahead or behind the real Redis
    server's: both limits still hold, on the Redis clock (the starts are read from the
    job records, which the scripts stamp with Redis TIME)."""
    SKEWED.__init__()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew_s)
    async with real.pool() as pool:
        jobs = await pool.enqueue_many([asyncjobs.call(skewed, i) for i in range(12)])
        async with running(real, real.worker([skewed], concurrency=8)):
            results = [await j.result(timeout=30) for j in jobs]
        infos = [await j.info() for j in jobs]
    assert results == list(range(12))
    assert SKEWED.peak == 1
    starts = sorted(i.started_at.timestamp() for i in infos if i.started_at)
    assert len(starts) == 12
    assert abs(starts[0] - real_time()) < 60  # stamped on the server's clock
    # 12 jobs at 20/s: 11 intervals of 50 ms, at most 1 ms early each (the tolerance)
    assert starts[-1] - starts[0] >= 11 * 0.049


@pytest.mark.asyncio
async def test_a_rate_change_at_runtime_keeps_deferred_slots(backend: Backend) -> None:
    """What the README says of a deploy that changes a limit: the job already deferred
    keeps its slot, and new jobs queue behind it at the new rate. Measured: the first new
    job comes one *old* interval after the last deferred slot (the key holds the next
    free slot, computed with the old interval), the next ones at the new rate."""
    @asyncjobs.task(rate_limit="1/h", name="changing")
    async def slow(ctx: Context, i: int) -> int:
        return i

    @asyncjobs.task(rate_limit="100/s", name="changing")
    async def fast(ctx: Context, i: int) -> int:
        return i

    async with backend.pool() as pool:
        a, b = await pool.enqueue(slow, 0), await pool.enqueue(slow, 1)
        async with running(backend, backend.worker([slow])):
            assert await a.result(timeout=10) == 0
            await until(lambda: state_is(pool, b.id, JobState.SCHEDULED), "B deferred")
        c, d = await pool.enqueue(fast, 2), await pool.enqueue(fast, 3)
        async with running(backend, backend.worker([fast])):
            await until(lambda: state_is(pool, d.id, JobState.SCHEDULED), "D deferred")
            infos = [await j.info() for j in (b, c, d)]
    due = [i.scheduled_for.timestamp() for i in infos if i.scheduled_for]
    assert len(due) == 3
    assert round(due[1] - due[0]) == 3600  # the old interval after B's slot
    assert abs((due[2] - due[1]) - 0.010) < 0.002  # then the new rate


# -- an idle worker amid garbage: no spin ----------------------------------------------------


async def _commands(pool: asyncjobs.Pool) -> int:
    stats: dict[str, Any] = await pool.client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


@pytest.mark.asyncio
async def test_an_idle_worker_amid_garbage_in_every_limit_key_does_not_spin(
        fresh_redis: RedisServer) -> None:
    """Every flow-control key holds garbage (a NaN rate TAT, a lease set that is a string,
    a wait set that is a list, a limits hash of non-numbers, a maximum length of 'nan', a
    reserved slot of 'inf', waiters and delayed ids without records). The jobs still run,
    and the idle worker afterwards sends a handful of commands a second, not thousands."""
    import secrets

    backend = Backend("real", fresh_redis.url, url_factory(fresh_redis.url),
                      f"t{secrets.token_hex(4)}")
    async with backend.pool() as pool:
        keys, name = pool.keys("default"), limit_name("baton")
        await pool.client.set(keys.rate("hostile_rate", ""), "nan")
        await pool.client.set(keys.concurrency(name), "garbage")
        await pool.client.rpush(keys.concurrency_wait(name), "x")
        await pool.client.hset(keys.concurrency_limits,
                               mapping={name: "nan", "9:nothing:": "-5", "junk": "1e400"})
        await pool.client.hset(keys.settings, "max_length", "nan")
        await pool.client.zadd(keys.concurrency_wait(limit_name("raced")), {"ghost": 0})
        await pool.client.zadd(keys.delayed, {"no-record": 0})
        now = await redis_ms(pool)
        await pool.enqueue(baton.options(job_id="inf-slot", delay=3600), 99)
        await pool.client.hset(keys.job("inf-slot"), mapping={"rs": "inf", "cw": name})
        await pool.client.zadd(keys.delayed, {"inf-slot": now})
        jobs = [await pool.enqueue(baton, 1), await pool.enqueue(hostile_rate, 2),
                await pool.enqueue(raced, 3)]
        async with running(backend, backend.worker([baton, hostile_rate, raced])):
            assert [await j.result(timeout=15) for j in jobs] == [1, 2, 3]
            assert await pool.job("inf-slot").result(timeout=15) == 99
            await asyncio.sleep(1.0)
            before, began = await _commands(pool), time.monotonic()
            await asyncio.sleep(6.0)
            rate = (await _commands(pool) - before) / (time.monotonic() - began)
            limits = await pool.admin.concurrency()
    assert rate < 20, f"{rate:.0f} commands/s: something spins"
    assert all(c.limit >= 0 for c in limits)
