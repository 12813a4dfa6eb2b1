"""Shared concurrency limits (``@task(concurrency_limit=N, concurrency_key=...)``): the
definition checks and the lease rule as pure functions, then the limit on both backends
(waiting is not an attempt, every ending releases the lease, hostile keys and data, the
cost in Redis commands), then three worker processes holding one limit together and a
SIGKILLed worker whose slot comes back within the claim timeout. Every concurrency figure
is recorded by the tasks themselves on the Redis clock (tests/apps/concurrent.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import statistics
import time
from typing import Any

import pytest
import redis as sync_redis
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import Context, JobState, Retry
from asyncjobs._limits import MAX_CONCURRENCY, acquire, parse_concurrency
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.keys import limit_name, split_limit_name
from asyncjobs._worker.limiter import LeaseChecks
from asyncjobs.exceptions import ConfigurationError

from .apps import concurrent
from .conftest import Backend, running
from .procs import workers

pytestmark = pytest.mark.on_cluster

TARGET = "tests.apps.concurrent:worker"

# -- definition ------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "why"), [
    (0, "between 1 and"), (-1, "between 1 and"), (MAX_CONCURRENCY + 1, "between 1 and"),
    (True, "must be an int, not bool"), (2.0, "must be an int, not float"),
    ("3", "must be an int, not str"), (None, None),
])
def test_a_bad_limit_fails_at_task_definition_with_one_line(limit: Any, why: str | None
                                                            ) -> None:
    if why is None:  # None is "no limit", and fine
        @asyncjobs.task(concurrency_limit=limit)
        async def fine(ctx: Context) -> None: ...
        assert fine.concurrency_limit is None
        return
    with pytest.raises(ConfigurationError) as caught:
        @asyncjobs.task(concurrency_limit=limit)
        async def send(ctx: Context) -> None: ...
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("task 'send': concurrency_limit") and why in message


@pytest.mark.parametrize("options", [
    {"concurrency_key": lambda customer: customer},
    {"concurrency_limit": 2, "concurrency_key": "customer"},
])
def test_a_concurrency_key_needs_a_limit_and_a_function(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="concurrency_key needs a concurrency_limit"):
        @asyncjobs.task(**options)
        async def report(ctx: Context, customer: str) -> None: ...


def test_a_limit_survives_per_job_options() -> None:
    @asyncjobs.task(concurrency_limit=2, concurrency_key=lambda c: c)
    async def report(ctx: Context, c: str) -> None: ...
    copy = report.options(timeout=5)
    assert copy.concurrency_limit == 2 and copy.concurrency_key is report.concurrency_key
    assert parse_concurrency(MAX_CONCURRENCY) == MAX_CONCURRENCY


@pytest.mark.parametrize(("task", "key"), [("t", ""), ("a:b", "c"), ("x", "1:y:z"),
                                           ("", "")])
def test_limit_names_keep_task_and_key_apart(task: str, key: str) -> None:
    assert split_limit_name(limit_name(task, key)) == (task, key)
    assert split_limit_name("garbage") == ("", "garbage")
    assert split_limit_name("9:ab:c") == ("", "9:ab:c")


def test_a_limit_name_with_thousands_of_digits_is_not_one() -> None:
    """Written by hand: Python would refuse to read the number (ValueError past 4,300
    digits), which crashed ``pool.admin.concurrency()``, ``job.info()`` and ``info``."""
    for name in ("9" * 5000 + ":x", "0" * 5000 + "1:t:k", "1" * 10 + ":" + "t" * 20):
        assert split_limit_name(name) == ("", name)


@settings(max_examples=500, deadline=None)
@given(st.text() | st.builds(lambda n, rest: f"{n}:{rest}", st.integers(0, 10**30),
                               st.text()))
def test_any_text_splits_as_a_limit_name_or_as_itself(name: str) -> None:
    task, key = split_limit_name(name)
    assert (task, key) == ("", name) or limit_name(task, key) == name


# -- the lease rule --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 5), lease_ms=st.integers(1, 1000),
       events=st.lists(st.tuples(st.sampled_from(("ask", "end")), st.integers(0, 9),
                                 st.integers(0, 400)), max_size=60))
def test_the_rule_never_lets_more_than_n_live_leases_and_wastes_no_slot(
        limit: int, lease_ms: int, events: list[tuple[str, int, int]]) -> None:
    """Jobs ask and end at nondecreasing times (a holder that never ends is a dead worker:
    its lease lapses). Live leases never exceed N; a job waits only when N others hold
    live leases, and then until the earliest of them expires at the latest."""
    leases: dict[str, int] = {}
    now = 0
    for kind, job, gap in events:
        now += gap
        name = f"j{job}"
        if kind == "end":
            leases.pop(name, None)
            continue
        verdict = acquire(leases, name, now, limit, lease_ms)
        live = {j: t for j, t in leases.items() if t > now}
        assert len(verdict.leases) <= limit
        assert all(t > now for t in verdict.leases.values())
        if verdict.run:
            assert verdict.leases[name] == now + lease_ms
        else:
            assert name not in live and len(live) == limit
            assert verdict.due_ms == min(live.values()) > now
        leases = dict(verdict.leases)


def test_a_waiting_job_is_due_at_its_expiry_when_that_comes_first() -> None:
    full = {"a": 1_500, "b": 2_000}
    assert acquire(full, "c", 1_000, 2, 10_000).due_ms == 1_500
    assert acquire(full, "c", 1_000, 2, 10_000, expires_ms=1_200).due_ms == 1_200
    assert acquire(full, "a", 1_000, 2, 10_000).run  # a job delivered again keeps its lease
    assert acquire(full, "c", 1_500, 2, 10_000).run  # a's lease has lapsed


# -- on Redis (fake and real) ----------------------------------------------------------------


class Seen:
    """An observer keeping (kind, job id, attempt) of the job events."""

    def __init__(self) -> None:
        self.kinds: list[tuple[str, str, int]] = []

    def job_event(self, event: asyncjobs.JobEvent) -> None:
        self.kinds.append((event.kind, event.job_id, event.attempt))


async def until(predicate: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def state_is(pool: asyncjobs.Pool, job_id: str, *states: JobState) -> bool:
    return await pool.job(job_id).status() in states


async def body_ran(pool: asyncjobs.Pool, prefix: str, job_id: str) -> bool:
    """Whether the job's body has run (``concurrent.tracked`` counted it), so it holds its
    lease. Its record says `running` earlier, before the lease is asked for: a job
    enqueued in between may win the lease, and the first one then waits."""
    return bool(int(await pool.client.get(concurrent.key(prefix, f"runs:{job_id}")) or 0))


def use(pool: asyncjobs.Pool) -> Any:
    return pool.keys("default")


@pytest.mark.asyncio
async def test_a_waiting_job_is_visible_and_not_counted_as_an_attempt(backend: Backend
                                                                       ) -> None:
    gate, holding = asyncio.Event(), asyncio.Event()

    @asyncjobs.task(concurrency_limit=1)
    async def export(ctx: Context, i: int) -> tuple[int, int]:
        if i == 0:
            holding.set()
            await gate.wait()
        return i, ctx.attempt

    seen = Seen()
    async with backend.pool() as pool:
        first = await pool.enqueue(export, 0)
        async with running(backend, backend.worker([export], observers=[seen])):
            try:
                # The body runs: the lease is held. (The record says `running` from the
                # start, before the lease is asked for: a job enqueued then may win it.)
                await asyncio.wait_for(holding.wait(), 20)
                second = await pool.enqueue(export, 1)
                await until(lambda: state_is(pool, second.id, JobState.SCHEDULED), "the wait")
                info = await second.info()
                limits = await pool.admin.concurrency()
            finally:
                gate.set()
            assert await second.result(timeout=20) == (1, 1)
            assert await first.result(timeout=20) == (0, 1)
            after = await pool.admin.concurrency()
        stats = await pool.admin.queue_stats()
        final = await second.info()
    assert info.attempts == 0
    assert info.waiting_on is not None
    assert info.waiting_on.startswith("concurrency limit of task 'export': every lease")
    assert [(c.task, c.key, c.limit, c.running, c.waiting) for c in limits] == [
        ("export", "", 1, 1, 1)]
    assert after == []  # released, and nobody waits: the limit is no longer listed
    assert final.waiting_on is None and final.state is JobState.COMPLETE
    assert [k for k, j, _ in seen.kinds if j == second.id] == [
        "concurrency_limited", "started", "complete"]
    assert stats.counters.get("concurrency_waited") == 1


@pytest.mark.asyncio
async def test_never_more_than_n_at_once_in_one_worker_and_each_job_runs_once(
        backend: Backend) -> None:
    @asyncjobs.task(concurrency_limit=3)
    async def call(ctx: Context, i: int) -> int:
        await concurrent.tracked(ctx, "api", 0.02)
        return i

    n = 40
    async with backend.pool() as pool:
        jobs = await pool.enqueue_many([asyncjobs.call(call, i) for i in range(n)])
        concurrent.PREFIX = backend.prefix  # where tracked() counts
        await backend.run(backend.worker([call], concurrency=20, burst=True))
        peak = int(await pool.client.get(concurrent.key(backend.prefix, "max:api")) or 0)
        runs = await pool.client.mget(
            [concurrent.key(backend.prefix, f"runs:{j.id}") for j in jobs])
        infos = [await j.info() for j in jobs]
        leases = await pool.client.zcard(use(pool).concurrency(limit_name("call")))
    assert peak == 3  # never more, and the limit is not stricter than it says
    assert [int(r) for r in runs] == [1] * n
    assert {i.state for i in infos} == {JobState.COMPLETE} and {i.attempts for i in infos} == {1}
    assert leases == 0


@pytest.mark.asyncio
async def test_per_key_limits_are_independent(backend: Backend) -> None:
    gate = asyncio.Event()

    @asyncjobs.task(concurrency_limit=1, concurrency_key=lambda customer, *_: customer)
    async def report(ctx: Context, customer: str, n: int) -> str:
        await concurrent.tracked(ctx, "all", 0)
        await concurrent.tracked(ctx, customer, 0)
        if n == 1:
            await gate.wait()
        return f"{customer}{n}"

    concurrent.PREFIX = backend.prefix
    async with backend.pool() as pool:
        a1 = await pool.enqueue(report, "acme", 1)
        async with running(backend, backend.worker([report], concurrency=4)):
            try:
                await until(lambda: body_ran(pool, backend.prefix, a1.id), "acme1 runs")
                a2 = await pool.enqueue(report, "acme", 2)
                b1 = await pool.enqueue(report, "globex", 1)
                await until(lambda: state_is(pool, a2.id, JobState.SCHEDULED), "acme2 waits")
                await until(lambda: body_ran(pool, backend.prefix, b1.id), "globex1 runs")
                limits = await pool.admin.concurrency()
                waiting_on = (await a2.info()).waiting_on
            finally:
                gate.set()
            assert await a2.result(timeout=20) == "acme2"
            assert await b1.result(timeout=20) == "globex1"
    assert [(c.key, c.running, c.waiting) for c in limits] == [("acme", 1, 1),
                                                              ("globex", 1, 0)]
    assert waiting_on is not None and "for key 'acme'" in waiting_on


# Each scenario: a job J of a limit of one ends one way while K waits on the same limit.
# The claim timeout (the lease's life) is 60 s, far beyond K's 10 s: K completes in time
# only if J's ending released the lease (and let K go).


ENTERED: set[str] = set()
"""Jobs whose ``ending`` body has run (so they held the lease: see ``body_ran``)."""


async def entered(job_id: str) -> bool:
    return job_id in ENTERED


@asyncjobs.task(concurrency_limit=1, name="ending")
async def ending(ctx: Context, how: str) -> str:
    ENTERED.add(ctx.job_id)
    if how == "raise-then-ok" and ctx.attempt == 1:
        raise Retry(delay=300)
    if how in ("raise", "raise-then-ok"):
        raise ValueError("boom")
    if how in ("sleep", "hang"):
        await asyncio.sleep(30)
    return how


@pytest.mark.asyncio
@pytest.mark.parametrize(("how", "end", "options"), [
    ("ok", JobState.COMPLETE, {}),
    ("raise-then-ok", JobState.SCHEDULED, {}),  # a retry, 300 s later
    ("raise", JobState.FAILED, {"max_tries": 1}),
    ("sleep", JobState.FAILED, {"timeout": 0.3, "max_tries": 1}),
    ("hang", JobState.ABORTED, {}),
])
async def test_every_ending_releases_the_lease(backend: Backend, how: str, end: JobState,
                                               options: dict[str, Any]) -> None:
    async with backend.pool() as pool:
        j = await pool.enqueue(ending.options(**options), how)
        async with running(backend, backend.worker([ending], claim_timeout=60)):
            await until(lambda: entered(j.id), "J to run")
            k = await pool.enqueue(ending, "ok")
            if how == "hang":
                await until(lambda: state_is(pool, k.id, JobState.SCHEDULED), "K waits")
                assert await j.abort()
            assert await k.result(timeout=10) == "ok"
            await until(lambda: state_is(pool, j.id, end), f"J {end}")
        leases = await pool.client.zcard(use(pool).concurrency(limit_name("ending")))
        info = await j.info()
    assert leases == 0
    assert info.state is end


@pytest.mark.asyncio
async def test_a_shutdown_hands_back_the_lease_and_lets_the_waiter_go(backend: Backend
                                                                      ) -> None:
    async with backend.pool() as pool:
        j = await pool.enqueue(ending, "sleep")
        async with running(backend, backend.worker([ending], claim_timeout=60,
                                                    shutdown_grace=0.2)):
            await until(lambda: entered(j.id), "J to run")
            k = await pool.enqueue(ending, "ok")
            await until(lambda: state_is(pool, k.id, JobState.SCHEDULED), "K waits")
        # Stopped: J was handed back (queued again, its attempt not counted), the lease it
        # held was released, and K was let go at once (queued, not scheduled at the
        # lease's expiry a minute away).
        keys = use(pool)
        leases = await pool.client.zcard(keys.concurrency(limit_name("ending")))
        waiters = await pool.client.zcard(keys.concurrency_wait(limit_name("ending")))
        j_info, k_info = await j.info(), await k.info()
    assert (leases, waiters) == (0, 0)
    assert (j_info.state, j_info.attempts) == (JobState.QUEUED, 0)
    assert (k_info.state, k_info.attempts) == (JobState.QUEUED, 0)


@pytest.mark.asyncio
async def test_a_waiting_job_can_be_aborted_and_leaves_the_wait_list(backend: Backend
                                                                      ) -> None:
    async with backend.pool() as pool:
        j = await pool.enqueue(ending, "sleep")
        async with running(backend, backend.worker([ending], claim_timeout=60)):
            await until(lambda: entered(j.id), "J to run")
            k = await pool.enqueue(ending, "ok")
            await until(lambda: state_is(pool, k.id, JobState.SCHEDULED), "K waits")
            before = [(c.running, c.waiting) for c in await pool.admin.concurrency()]
            assert await k.abort()
            after = [(c.running, c.waiting) for c in await pool.admin.concurrency()]
            assert await j.abort()
            await until(lambda: state_is(pool, j.id, JobState.ABORTED), "J aborted")
        stats = await pool.admin.queue_stats()
        k_state = await k.status()
    assert (before, after) == ([(1, 1)], [(1, 0)])
    assert k_state is JobState.ABORTED and stats.delayed == 0


@pytest.mark.asyncio
async def test_a_job_longer_than_the_claim_timeout_keeps_its_lease(backend: Backend) -> None:
    """The keep-alive renews the lease: K, waiting, starts only once J (2.5 claim timeouts
    long) has ended."""
    holding = asyncio.Event()

    @asyncjobs.task(concurrency_limit=1)
    async def long(ctx: Context, s: float) -> float:
        holding.set()
        await asyncio.sleep(s)
        return s

    async with backend.pool() as pool:
        j = await pool.enqueue(long, 2.5)
        async with running(backend, backend.worker([long], claim_timeout=1)):
            await asyncio.wait_for(holding.wait(), 20)  # J holds the lease (see body_ran)
            k = await pool.enqueue(long, 0)
            assert await k.result(timeout=20) == 0
        j_info, k_info = await j.info(), await k.info()
    assert j_info.ended_at is not None and k_info.started_at is not None
    assert k_info.started_at >= j_info.ended_at
    assert (j_info.attempts, k_info.attempts) == (1, 1)


@pytest.mark.asyncio
async def test_a_dead_holders_lease_lapses_and_the_waiter_starts(backend: Backend) -> None:
    """A lease held by a job whose worker died (its record still says running under the
    limit, nobody renews it) blocks the limit until it lapses, then the waiting job starts
    at its safety-net due time, without any release."""
    @asyncjobs.task(concurrency_limit=1)
    async def sync(ctx: Context) -> str:
        return "ran"

    async with backend.pool() as pool:
        keys, name = use(pool), limit_name("sync")
        # the job must reach its check, and wait, before the lease lapses: room for a worker
        # start on a loaded machine (its loop was seen blocked 1.4-1.7 s under heavy load,
        # and with a 1.5 s lease the job then ran at once, never seen waiting)
        lapses_ms = await redis_ms(pool) + 4_000
        await pool.client.hset(keys.job("dead"), mapping={"s": "running", "cl": name})
        await pool.client.zadd(keys.concurrency(name), {"dead": lapses_ms})
        job = await pool.enqueue(sync)
        async with running(backend, backend.worker([sync])):
            await until(lambda: state_is(pool, job.id, JobState.SCHEDULED), "the wait")
            waiting = await job.info()
            assert await job.result(timeout=20) == "ran"
        info = await job.info()
    assert waiting.scheduled_for is not None
    assert round(waiting.scheduled_for.timestamp() * 1000) == lapses_ms
    assert info.started_at is not None and info.attempts == 1
    late_ms = info.started_at.timestamp() * 1000 - lapses_ms
    print(f"\nthe waiter started {late_ms:.0f} ms after the dead holder's lease lapsed")
    assert late_ms >= 0


async def redis_ms(pool: asyncjobs.Pool) -> int:
    seconds, micros = await pool.client.time()
    return int(seconds * 1000 + micros // 1000)


@pytest.mark.asyncio
@pytest.mark.parametrize(("key_fn", "why"), [
    (lambda customer: {}["nope"], "concurrency_key raised KeyError"),
    (lambda customer: [customer], "concurrency_key must return a str or an int, not list"),
    (lambda customer: "\ud800", "concurrency_key returned a str that is not valid UTF-8"),
    (lambda customer: (_ for _ in ()).throw(SystemExit(3)),
     "concurrency_key raised SystemExit: 3"),
    (lambda customer: 10 ** 5000, "concurrency_key returned an int of more than 200 digits"),
])
async def test_a_key_function_that_fails_dead_letters_the_job(
        backend: Backend, key_fn: Any, why: str) -> None:
    @asyncjobs.task(concurrency_limit=2, concurrency_key=key_fn)
    async def mail(ctx: Context, customer: str) -> str:
        return customer

    async with backend.pool() as pool:
        job = await pool.enqueue(mail, "acme")
        await backend.run(backend.worker([mail], burst=True))
        info = await job.info()
    assert info.state == JobState.FAILED and info.attempts == 1
    assert info.dead_letter_reason == f"task 'mail': {why}" or (
        info.dead_letter_reason or "").startswith(f"task 'mail': {why}")
    assert info.errors[-1].type == "asyncjobs.BadConcurrencyKey"


@pytest.mark.asyncio
@pytest.mark.parametrize("garbage", ["string", "ghost", "wait-string", "record"])
async def test_garbage_in_the_limit_keys_is_repaired_and_jobs_run(backend: Backend,
                                                                  garbage: str) -> None:
    """A lease or wait key of the wrong type, a lease no worker could have written (a
    'ghost' member expiring in 3,000 years), a holder whose record is not a hash: each is
    dropped when it is in the way, counted as repaired, and the jobs run; nothing raises or
    loops."""
    @asyncjobs.task(concurrency_limit=1)
    async def pay(ctx: Context, i: int) -> int:
        return i

    async with backend.pool() as pool:
        keys = use(pool)
        name = limit_name("pay")
        if garbage == "string":
            await pool.client.set(keys.concurrency(name), "garbage")
        elif garbage == "ghost":
            await pool.client.zadd(keys.concurrency(name), {"ghost": 1e14})
        elif garbage == "wait-string":
            await pool.client.set(keys.concurrency_wait(name), "garbage")
        else:  # a lease that looks real, but its job key holds no record
            await pool.client.zadd(keys.concurrency(name), {"rec": await redis_ms(pool) + 9e5})
            await pool.client.set(keys.job("rec"), "not a hash")
        jobs = await pool.enqueue_many([asyncjobs.call(pay, i) for i in range(3)])
        await backend.run(backend.worker([pay], burst=True))
        results = [await j.result(timeout=5) for j in jobs]
        stats = await pool.admin.queue_stats()
        leases = await pool.client.zcard(keys.concurrency(name))
    assert results == [0, 1, 2]
    assert stats.counters.get("concurrency_repaired") == 1
    assert stats.dead == 0 and leases == 0


@pytest.mark.asyncio
async def test_an_unlimited_job_pays_nothing_and_a_free_slot_one_round_trip(
        real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted exactly (the lease round trips) and with INFO commandstats: a job of a task
    without a limit runs no lease command at all; a job whose slot is free costs one more
    script call, the acquisitions of the jobs started together sharing one round trip."""
    @asyncjobs.task(concurrency_limit=MAX_CONCURRENCY)
    async def limited(ctx: Context, i: int) -> int:
        return i

    @asyncjobs.task
    async def free(ctx: Context, i: int) -> int:
        return i

    n = 500
    trips: list[int] = []
    original = LeaseChecks._send

    async def counted(self: LeaseChecks, batch: list[Any]) -> None:
        trips.append(len(batch))
        await original(self, batch)

    monkeypatch.setattr(LeaseChecks, "_send", counted)

    async def calls(task: Any) -> dict[str, int]:
        backend = dataclasses.replace(real, prefix=f"{real.prefix}{task.name}")
        async with backend.pool() as pool:
            await pool.enqueue_many([asyncjobs.call(task, i) for i in range(n)])
            await pool.client.config_resetstat()
            await backend.run(backend.worker([task], burst=True))
            stats: dict[str, Any] = await pool.client.info("commandstats")
            counters = (await pool.admin.queue_stats()).counters
            assert counters.get("complete") == n and "concurrency_waited" not in counters
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    without = await calls(free)
    assert trips == []
    lease_commands = {"zscore", "zpopmin", "hdel"}
    assert lease_commands.isdisjoint(without), lease_commands & set(without)
    with_limit = await calls(limited)
    assert sum(trips) == n  # every job asked once
    extra = with_limit.get("evalsha", 0) - without.get("evalsha", 0)
    assert extra <= n * 1.05, extra  # one more script call per job at most (a margin)
    # every job released its lease, once: the release looks for a waiter in each of the
    # queue's three priority levels (the limit is one for all of them)
    assert with_limit.get("zpopmin", 0) == 3 * n
    print(f"\nper job without a limit: {sum(without.values()) / n:.1f} commands "
          f"({without.get('evalsha', 0) / n:.2f} script calls); with a free slot: "
          f"{sum(with_limit.values()) / n:.1f} commands "
          f"({with_limit.get('evalsha', 0) / n:.2f} script calls; {len(trips)} lease "
          f"round trips for {n} jobs)")


# -- worker processes ------------------------------------------------------------------------


def records(client: sync_redis.Redis, key: str) -> list[tuple[int, str, int]]:
    found = []
    for raw in client.lrange(key, 0, -1):
        ms, job, attempt = raw.decode().split(":")
        found.append((int(ms), job, int(attempt)))
    return found


def handoffs_ms(starts: list[tuple[int, str, int]], ends: list[tuple[int, str, int]],
                limit: int) -> list[int]:
    """For each start that had to wait for a slot (the limit was full just before it), the
    time from the slot freeing (the latest end before it) to the start."""
    events = sorted([(t, 1) for t, _, _ in starts] + [(t, -1) for t, _, _ in ends])
    gaps, live, last_end = [], 0, 0
    for t, step in events:
        if step < 0:
            live -= 1
            last_end = t
        else:
            if live == limit - 1 and last_end and t - last_end < 5_000:
                gaps.append(t - last_end)
            live += 1
    return gaps


@pytest.mark.slow
def test_three_processes_never_run_more_than_n_and_run_each_job_once(
        redis_server: RedisServer) -> None:
    prefix = f"c{time.monotonic_ns()}"
    n, limit = 45, 3
    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        with workers(TARGET, redis_server.url, prefix, 3, TEST_CONC_LIMIT=str(limit)):
            async def enqueue() -> list[str]:
                async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
                    jobs = await pool.enqueue_many(
                        [asyncjobs.call(concurrent.call_api, i, 0.1) for i in range(n)])
                    for job in jobs:
                        await job.result(timeout=60)
                    return [job.id for job in jobs]

            ids = asyncio.run(enqueue())
        peak = int(client.get(concurrent.key(prefix, "max:api")) or 0)
        runs = [int(r or 0)
                for r in client.mget([concurrent.key(prefix, f"runs:{i}") for i in ids])]
        starts = records(client, concurrent.key(prefix, "starts"))
        ends = records(client, concurrent.key(prefix, "ends"))
        waited = int(client.hget(f"{prefix}:{{default}}:stats", "concurrency_waited") or 0)
    finally:
        client.close()
    assert peak == limit
    assert runs == [1] * n
    assert {a for _, _, a in starts} == {1}  # waiting is not an attempt
    gaps = handoffs_ms(starts, ends, limit)
    assert waited > 0 and gaps
    print(f"\n{n} jobs, 3 processes, limit {limit}: peak {peak}; {waited} waits; slot freed "
          f"-> next waiting job started: median {statistics.median(gaps):.0f} ms, max "
          f"{max(gaps)} ms over {len(gaps)} hand-offs")


@pytest.mark.slow
def test_a_sigkilled_workers_slot_comes_back_within_the_claim_timeout(
        redis_server: RedisServer) -> None:
    """Limit one. The first worker runs A (long on its first attempt) and is SIGKILLed;
    B and C wait. The limit's next run starts within the claim timeout of the kill (A's
    entry is reclaimed after half of it, and A's second attempt finds the lease it still
    holds; B and C follow as it releases it), A runs again (attempt 2), and never do two
    run at once. The path where the dead holder's lease must lapse first is
    ``test_a_dead_holders_lease_lapses_and_the_waiter_starts``."""
    prefix = f"k{time.monotonic_ns()}"
    claim = 3.0
    client = sync_redis.Redis.from_url(redis_server.url)
    env = {"TEST_CONC_LIMIT": "1", "TEST_CLAIM_TIMEOUT": str(claim)}

    def redis_ms() -> int:
        seconds, micros = client.time()
        return int(seconds * 1000 + micros // 1000)

    async def wait_for(pool: asyncjobs.Pool, job_ids: list[str], *states: JobState) -> None:
        async def reached() -> bool:
            return all([await state_is(pool, j, *states) for j in job_ids])
        await until(reached, f"{job_ids} to be {states}", 30)

    async def scenario() -> tuple[list[str], int]:
        async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
            with workers(TARGET, redis_server.url, prefix, 1, **env) as [first]:
                a = await pool.enqueue(concurrent.call_api, 0, 0.05, 60.0)
                await until(lambda: body_ran(pool, prefix, a.id), "A runs", 30)
                b = await pool.enqueue(concurrent.call_api, 1, 0.05)
                c = await pool.enqueue(concurrent.call_api, 2, 0.05)
                await wait_for(pool, [b.id, c.id], JobState.SCHEDULED)
                with workers(TARGET, redis_server.url, prefix, 1, **env):
                    first.kill()
                    killed_ms = redis_ms()
                    for job in (a, b, c):
                        await job.result(timeout=60)
            return [a.id, b.id, c.id], killed_ms

    try:
        ids, killed_ms = asyncio.run(scenario())
        starts = records(client, concurrent.key(prefix, "starts"))
        ends = records(client, concurrent.key(prefix, "ends"))
        infos = asyncio.run(_infos(redis_server.url, prefix, ids))
    finally:
        client.close()
    a, b, c = ids
    assert [i.attempts for i in infos] == [2, 1, 1]
    assert sorted((j, n) for _, j, n in starts) == sorted([(a, 1), (a, 2), (b, 1), (c, 1)])
    first_after = min(t for t, j, n in starts if (j, n) != (a, 1))
    returned_s = (first_after - killed_ms) / 1000
    print(f"\nSIGKILL -> the slot's next job started after {returned_s:.2f} s "
          f"(claim timeout {claim} s)")
    assert 0 < returned_s <= claim + 1.0, returned_s
    # Never two at once: each run starts after the one before ended (A's killed run ended
    # at the kill).
    ended = {(j, n): t for t, j, n in ends} | {(a, 1): killed_ms}
    runs = sorted((t, ended[(j, n)]) for t, j, n in starts)
    for (_, before_end), (start, _) in itertools.pairwise(runs):
        assert start >= before_end


async def _infos(url: str, prefix: str, ids: list[str]) -> list[asyncjobs.JobInfo]:
    async with asyncjobs.create_pool(url, prefix=prefix) as pool:
        return [await pool.job(i).info() for i in ids]


# -- visibility: the CLI and the metrics -----------------------------------------------------


@pytest.mark.asyncio
async def test_info_job_and_metrics_show_a_limit_and_its_waiters(real: Backend) -> None:
    from prometheus_client import CollectorRegistry

    from asyncjobs.metrics import WorkerMetrics

    from .test_ops_cli import as_json, cli

    gate, holding = asyncio.Event(), asyncio.Event()

    @asyncjobs.task(concurrency_limit=1, concurrency_key=lambda c: c)
    async def report(ctx: Context, c: str) -> str:
        holding.set()
        await gate.wait()
        return c

    registry = CollectorRegistry()
    metrics = WorkerMetrics(worker="w", queues=["default"], concurrency=4, registry=registry,
                            tasks=["report"])
    async with real.pool() as pool:
        await pool.enqueue(report, "acme")
        async with running(real, real.worker([report])):
            try:
                await asyncio.wait_for(holding.wait(), 20)  # it holds the lease (body_ran)
                # An id of our own: a random one may start with '-' (an option to the CLI).
                second = await pool.enqueue(report.options(job_id="second"), "acme")
                await until(lambda: state_is(pool, second.id, JobState.SCHEDULED), "the wait")
                info = await asyncio.to_thread(lambda: as_json(cli(real, "info", "--json")))
                code, shown, err = await asyncio.to_thread(cli, real, "job", second.id)
                await metrics.refresh(pool, type("Idle", (), {"active": 0})())
                held = registry.get_sample_value("asyncjobs_concurrency_running_jobs",
                                                 {"queue": "default", "task": "report"})
                waiting = registry.get_sample_value("asyncjobs_concurrency_waiting_jobs",
                                                    {"queue": "default", "task": "report"})
            finally:
                gate.set()
            assert await second.result(timeout=20) == "acme"
            await metrics.refresh(pool, type("Idle", (), {"active": 0})())
        after = registry.get_sample_value("asyncjobs_concurrency_running_jobs",
                                          {"queue": "default", "task": "report"})
    assert info["concurrency"] == {"default": [
        {"task": "report", "key": "acme", "limit": 1, "running": 1, "waiting": 1}]}
    assert code == 0, err
    assert "waiting on" in shown and "'report' for key 'acme'" in shown
    assert (held, waiting, after) == (1, 1, 0)
