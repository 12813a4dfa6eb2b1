"""Shared rate limits (``@task(rate_limit=..., rate_key=...)``): the spec parser and the GCRA
rule as pure functions, then the limit on both backends, and the rate three worker
processes achieve together, measured from start times recorded on the Redis clock."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._limits import (
    LATE_GRACE_MS,
    PERIODS_S,
    TOLERANCE_US,
    RateKeyError,
    gcra,
    keeps_slot,
    limit_key,
    parse_rate,
)
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._worker.limiter import RateChecks
from asyncjobs.exceptions import ConfigurationError

from .conftest import Backend, running
from .procs import workers

pytestmark = pytest.mark.on_cluster

# -- the spec parser -------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "count", "period_s", "interval_us"), [
    ("10/s", 10, 1, 100_000),
    ("100/m", 100, 60, 600_000),
    ("5/h", 5, 3600, 720_000_000),
    (" 3 / second ", 3, 1, 333_334),
    ("1/MINUTE", 1, 60, 60_000_000),
    ("1000000/s", 1_000_000, 1, 1),
])
def test_specs_read_as_count_per_period(spec: str, count: int, period_s: int,
                                        interval_us: int) -> None:
    limit = parse_rate(spec)
    assert (limit.count, limit.period_s, limit.interval_us) == (count, period_s, interval_us)


@pytest.mark.parametrize("spec", ["10/fortnight", "0/s", "-1/s", "abc", "", "1.5/s", "10",
                                  "/s", "10/", "1/s/s", "2000000/s", "10 per second", 10])
def test_a_bad_spec_fails_at_task_definition_with_one_line(spec: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        @asyncjobs.task(rate_limit=spec)
        async def send(ctx: Context) -> None: ...
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("task 'send': rate_limit")


def test_a_rate_key_needs_a_rate_limit() -> None:
    with pytest.raises(ConfigurationError, match="rate_key needs a rate_limit"):
        @asyncjobs.task(rate_key=lambda customer: customer)
        async def report(ctx: Context, customer: str) -> None: ...


@settings(max_examples=300, deadline=None)
@given(count=st.integers(1, 1_000_000), unit=st.sampled_from(sorted(PERIODS_S)),
       spaces=st.sampled_from(("", " ")))
def test_every_valid_spec_parses_and_never_allows_more_than_it_says(
        count: int, unit: str, spaces: str) -> None:
    limit = parse_rate(f"{spaces}{count}{spaces}/{spaces}{unit.upper()}{spaces}")
    period_us = PERIODS_S[unit] * 1_000_000
    assert (limit.count, limit.period_s) == (count, PERIODS_S[unit])
    # Rounded up, never down: `count` jobs never fit in less than the period, and by less
    # than one microsecond per job.
    assert limit.interval_us * count >= period_us
    assert (limit.interval_us - 1) * count < period_us


@settings(max_examples=300, deadline=None)
@given(spec=st.text(max_size=12))
def test_any_text_parses_or_raises_configuration_error(spec: str) -> None:
    try:
        limit = parse_rate(spec)
    except ConfigurationError as exc:
        message = str(exc)
    else:
        assert limit.count >= 1 and limit.interval_us >= 1
        return
    assert "\n" not in message


# -- the GCRA rule ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(interval=st.integers(1, 10**7),
       gaps=st.lists(st.integers(0, 3 * 10**7), min_size=1, max_size=60),
       start=st.integers(0, 10**15), tolerance=st.sampled_from((0, TOLERANCE_US)))
def test_gcra_never_lets_a_window_hold_more_than_the_limit_and_wastes_no_slot(
        interval: int, gaps: list[int], start: int, tolerance: int) -> None:
    """Requests arrive at nondecreasing times; each gets a slot (now, or later, reserved).
    No job gets a slot before it arrived; a job runs now exactly when its slot is now; a
    window of W µs never holds more than (W + tolerance) / interval + 1 slots; and a job
    waits only when the jobs before it filled the schedule (the limit is not stricter
    than it says)."""
    tat: int | None = None
    now = start
    slots: list[int] = []
    for gap in gaps:
        now += gap
        verdict = gcra(tat, now, interval, tolerance)
        assert verdict.slot_us >= now
        assert verdict.allowed == (verdict.slot_us == now)
        due = now if tat is None else max(tat, now)
        assert verdict.tat_us == due + interval
        if not verdict.allowed:
            assert verdict.slot_us == due > now + tolerance
        slots.append(verdict.slot_us)
        tat = verdict.tat_us
    window = 10 * interval
    for i, first in enumerate(slots):
        inside = sum(1 for s in slots[i:] if s < first + window)
        assert inside <= (window + tolerance) // interval + 1


def test_gcra_lets_the_first_job_and_one_per_interval_run() -> None:
    assert gcra(None, 1_000, 100).allowed
    assert gcra(900, 1_000, 100, 0).allowed  # the TAT is in the past: free now
    assert gcra(1_000 + TOLERANCE_US, 1_000, 100).allowed  # within the tolerance
    held = gcra(1_050, 1_000, 100, 0)
    assert (held.allowed, held.slot_us, held.tat_us) == (False, 1_050, 1_150)
    held = gcra(2_001, 1_000, 100)
    assert (held.allowed, held.slot_us, held.tat_us) == (False, 2_001, 2_101)


@pytest.mark.parametrize(("reserved", "now", "interval_us", "keeps"), [
    (0, 1_000, 100_000, False),                    # no reservation
    (1_000, 1_000, 100_000, True),                 # on time
    (1_000, 999, 100_000, False),                  # early (moved by hand): check again
    (1_000, 1_000 + LATE_GRACE_MS, 100_000, True),
    (1_000, 1_001 + LATE_GRACE_MS, 100_000, False),  # a stall took its slot
    (1_000, 1_000 + 3_600_000, 3_600_000_000, True),  # 1/h: late by < one interval
    (1_000, 1_001 + 3_600_000, 3_600_000_000, False),
])
def test_a_reserved_slot_is_kept_only_when_it_has_come_and_is_not_long_past(
        reserved: int, now: int, interval_us: int, keeps: bool) -> None:
    assert keeps_slot(reserved, now, interval_us) is keeps


# -- the key ---------------------------------------------------------------------------------


def test_the_key_is_the_key_functions_text() -> None:
    assert limit_key(None, ["acme"], {}) == ""
    assert limit_key(lambda customer, *_: customer, ["acme", 3], {}) == "acme"
    assert limit_key(lambda customer, *, n: n, ["acme"], {"n": 7}) == "7"


def boom(customer: str) -> str:
    raise LookupError("no such customer")


def exit_now() -> str:
    raise SystemExit(3)


def interrupt() -> str:
    raise KeyboardInterrupt


class Loud(str):
    """A str whose __str__ raises: the key is its value all the same."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


class Odd(int):
    def __str__(self) -> str:
        raise RuntimeError("no text")

    __repr__ = __str__


class Sly(int):
    def bit_length(self) -> int:
        raise RuntimeError("no length")


def test_a_subclass_s_own_text_is_not_asked_for() -> None:
    key = limit_key(lambda customer: Loud(customer), ["acme"], {})
    assert key == "acme" and type(key) is str
    assert limit_key(lambda customer: Odd(42), ["acme"], {}) == "42"
    assert limit_key(lambda customer: Sly(7), ["acme"], {}) == "7"


def test_a_mock_that_claims_to_be_a_str_is_not_a_key() -> None:
    from unittest.mock import Mock

    with pytest.raises(RateKeyError, match="must return a str or an int, not Mock"):
        limit_key(lambda customer: Mock(spec=str), ["acme"], {})


@pytest.mark.parametrize(("fn", "why"), [
    (boom, "rate_key raised LookupError: no such customer"),
    (lambda customer: None, "rate_key must return a str or an int, not NoneType"),
    (lambda customer: 1.5, "rate_key must return a str or an int, not float"),
    (lambda customer: True, "rate_key must return a str or an int, not bool"),
    (lambda customer: "x" * 201, "rate_key returned 201 characters (at most 200)"),
    (lambda: "x", "rate_key raised TypeError"),
    # Python refuses the digits of an int this long (ValueError past 4,300 digits)
    (lambda customer: 10 ** 5000, "rate_key returned an int of more than 200 digits"),
    (lambda customer: 10 ** 200, "rate_key returned 201 characters (at most 200)"),
    # e.g. bytes decoded with errors="surrogateescape": Redis could never be sent it
    (lambda customer: "acme\udcff", "rate_key returned a str that is not valid UTF-8"),
    (lambda customer: exit_now(), "rate_key raised SystemExit: 3"),
    (lambda customer: interrupt(), "rate_key raised KeyboardInterrupt"),
])
def test_a_key_that_cannot_be_computed_says_why(fn: Any, why: str) -> None:
    with pytest.raises(RateKeyError) as caught:
        limit_key(fn, ["acme"], {})
    assert str(caught.value).startswith(why)


# -- on Redis (fake and real) ----------------------------------------------------------------


class Seen:
    """An observer keeping the job events' kinds."""

    def __init__(self) -> None:
        self.kinds: list[tuple[str, str, int]] = []

    def job_event(self, event: asyncjobs.JobEvent) -> None:
        self.kinds.append((event.kind, event.job_id, event.attempt))


async def until(predicate: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def state_is(pool: asyncjobs.Pool, job_id: str, *states: JobState) -> bool:
    return await pool.job(job_id).status() in states


async def redis_now_ms(pool: asyncjobs.Pool) -> int:
    seconds, micros = await pool.client.time()
    return int(seconds * 1000 + micros // 1000)


@pytest.mark.asyncio
async def test_a_deferred_job_runs_at_its_slot_as_its_first_attempt(backend: Backend) -> None:
    @asyncjobs.task(rate_limit="5/s")
    async def ping(ctx: Context, i: int) -> tuple[int, int]:
        return i, ctx.attempt

    seen = Seen()
    async with backend.pool() as pool:
        jobs = [await pool.enqueue(ping, i) for i in range(3)]
        async with running(backend, backend.worker([ping], observers=[seen])):
            results = [await job.result(timeout=20) for job in jobs]
        assert sorted(map(tuple, results)) == [(0, 1), (1, 1), (2, 1)]
        for job in jobs:
            assert (await job.info()).attempts == 1
        stats = await pool.admin.queue_stats()
    # One job ran at once; the two others were deferred once each, then ran on time.
    deferred = [job_id for kind, job_id, _ in seen.kinds if kind == "rate_limited"]
    assert len(deferred) == 2 and len(set(deferred)) == 2
    assert [a for kind, _, a in seen.kinds if kind == "started"] == [1, 1, 1]
    assert stats.counters.get("rate_limited") == 2


@pytest.mark.asyncio
async def test_a_job_over_its_limit_waits_scheduled_for_its_own_slot(backend: Backend) -> None:
    """A flood over a 1/h limit: one job runs, every other one gets a slot of its own, one
    hour apart, and waits in the delayed set (no busy loop: each was checked once)."""
    @asyncjobs.task(rate_limit="1/h")
    async def mail(ctx: Context, i: int) -> int:
        return i

    seen = Seen()
    async with backend.pool() as pool:
        jobs = [await pool.enqueue(mail, i) for i in range(6)]
        async with running(backend, backend.worker([mail], observers=[seen])):
            await jobs[0].result(timeout=20)

            async def all_waiting() -> bool:
                return all([await state_is(pool, j.id, JobState.SCHEDULED) for j in jobs[1:]])

            await until(all_waiting, "the other jobs to be deferred")
        infos = [await job.info() for job in jobs[1:]]
        first = await jobs[0].info()
        stats = await pool.admin.queue_stats()
        now = await redis_now_ms(pool)
    assert [i.attempts for i in infos] == [0] * 5
    due = sorted(i.scheduled_for.timestamp() * 1000 for i in infos if i.scheduled_for)
    assert len(due) == 5
    assert due[0] > now + 59 * 60_000  # the first free slot is an hour after the first job
    assert all(round((b - a) / 1000) == 3600 for a, b in itertools.pairwise(due))
    assert stats.delayed == 5 and stats.counters.get("rate_limited") == 5
    # each says why it waits, and for which slot
    for info in infos:
        assert info.scheduled_for is not None and info.waiting_on == (
            f"rate limit of task 'mail': its slot is at "
            f"{info.scheduled_for.isoformat(timespec='milliseconds')}")
    assert first.waiting_on is None  # it ran
    assert sum(1 for kind, _, _ in seen.kinds if kind == "rate_limited") == 5, seen.kinds
    assert sum(1 for kind, _, _ in seen.kinds if kind == "started") == 1


@pytest.mark.asyncio
async def test_two_keys_are_limited_independently(backend: Backend) -> None:
    @asyncjobs.task(rate_limit="1/h", rate_key=lambda customer, *_: customer)
    async def report(ctx: Context, customer: str, n: int) -> str:
        return f"{customer}{n}"

    async with backend.pool() as pool:
        a1 = await pool.enqueue(report, "acme", 1)
        a2 = await pool.enqueue(report, "acme", 2)
        b1 = await pool.enqueue(report, "globex", 1)
        async with running(backend, backend.worker([report])):
            assert await a1.result(timeout=20) == "acme1"
            assert await b1.result(timeout=20) == "globex1"  # not behind acme's limit
            await until(lambda: state_is(pool, a2.id, JobState.SCHEDULED), "acme2 deferred")


@pytest.mark.asyncio
async def test_expiry_is_honoured_for_a_job_over_its_limit(backend: Backend) -> None:
    """A job whose expiry comes before its slot ends expired at once, and does not take the
    slot: the next job gets it."""
    @asyncjobs.task(rate_limit="1/h")
    async def mail(ctx: Context, i: int) -> int:
        return i

    async with backend.pool() as pool:
        first = await pool.enqueue(mail, 1)
        soon = await pool.enqueue(mail.options(expires=600), 2)
        later = await pool.enqueue(mail, 3)
        async with running(backend, backend.worker([mail])):
            assert await first.result(timeout=20) == 1
            await until(lambda: state_is(pool, soon.id, JobState.EXPIRED), "the expiry")
            await until(lambda: state_is(pool, later.id, JobState.SCHEDULED), "the deferral")
        info = await later.info()
        now = await redis_now_ms(pool)
    assert info.scheduled_for is not None
    due = info.scheduled_for.timestamp() * 1000
    assert now + 59 * 60_000 < due < now + 61 * 60_000  # the expired job's slot, not the next


@pytest.mark.asyncio
async def test_a_deferred_job_can_be_aborted(backend: Backend) -> None:
    @asyncjobs.task(rate_limit="1/h")
    async def mail(ctx: Context, i: int) -> int:
        return i

    async with backend.pool() as pool:
        first = await pool.enqueue(mail, 1)
        second = await pool.enqueue(mail, 2)
        async with running(backend, backend.worker([mail])):
            await first.result(timeout=20)
            await until(lambda: state_is(pool, second.id, JobState.SCHEDULED), "the deferral")
            assert await second.abort()
            assert await second.status() == JobState.ABORTED
        stats = await pool.admin.queue_stats()
    assert stats.delayed == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(("key_fn", "why"), [
    (lambda customer: {}["nope"], "rate_key raised KeyError"),
    (lambda customer: [customer], "rate_key must return a str or an int, not list"),
])
async def test_a_key_function_that_fails_dead_letters_the_job(
        backend: Backend, key_fn: Any, why: str) -> None:
    @asyncjobs.task(rate_limit="10/s", rate_key=key_fn)
    async def mail(ctx: Context, customer: str) -> str:
        return customer

    async with backend.pool() as pool:
        job = await pool.enqueue(mail, "acme")
        await backend.run(backend.worker([mail], burst=True))
        info = await job.info()
    assert info.state == JobState.FAILED and info.attempts == 1
    assert info.dead_letter_reason is not None
    assert info.dead_letter_reason.startswith(f"task 'mail': {why}")


def surrogate_for_bad(customer: str) -> str:
    return "\udcff" if customer == "bad" else customer


def exit_for_bad(customer: str) -> str:
    if customer == "bad":
        raise SystemExit(3)
    return customer


@pytest.mark.asyncio
@pytest.mark.parametrize(("key_fn", "why"), [
    (surrogate_for_bad, "rate_key returned a str that is not valid UTF-8"),
    (exit_for_bad, "rate_key raised SystemExit: 3"),
])
async def test_a_bad_key_dead_letters_its_job_alone(backend: Backend, key_fn: Any,
                                                    why: str) -> None:
    """The limit checks of jobs started together go to Redis in one round trip: a key that
    could not be sent (or a key function raising a BaseException) must fail its own job,
    once, not the batch, not the worker. Burst mode: the worker ends once all are done."""
    @asyncjobs.task(rate_limit="1000/s", rate_key=key_fn)
    async def mail(ctx: Context, customer: str) -> str:
        return customer

    @asyncjobs.task(rate_limit="1000/s")
    async def other(ctx: Context, i: int) -> int:
        return i

    async with backend.pool() as pool:
        bad = await pool.enqueue(mail, "bad")
        good = [await pool.enqueue(mail, f"c{i}") for i in range(3)]
        others = [await pool.enqueue(other, i) for i in range(3)]
        await backend.run(backend.worker([mail, other], burst=True, concurrency=10))
        info = await bad.info()
        assert [await job.result(timeout=1) for job in good] == ["c0", "c1", "c2"]
        assert [await job.result(timeout=1) for job in others] == [0, 1, 2]
    assert info.state == JobState.FAILED and info.attempts == 1
    assert info.dead_letter_reason is not None
    assert info.dead_letter_reason.startswith(f"task 'mail': {why}")
    assert [e.type for e in info.errors] == ["asyncjobs.BadRateKey"]


@pytest.mark.asyncio
async def test_a_job_under_its_limit_costs_at_most_one_round_trip(
        real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose limit is not exceeded costs at most one more round trip than the same job
    without a limit: every job is checked, and the checks of the jobs started together
    share one. Counted exactly (the limiter's round trips) and with INFO commandstats (the
    benchmark's figure, which includes the workers' background calls)."""
    @asyncjobs.task(rate_limit="1000000/s")
    async def limited(ctx: Context, i: int) -> int:
        return i

    @asyncjobs.task
    async def free(ctx: Context, i: int) -> int:
        return i

    n = 500
    trips: list[int] = []
    original = RateChecks._send

    async def counted(self: RateChecks, batch: list[Any]) -> None:
        trips.append(len(batch))
        await original(self, batch)

    monkeypatch.setattr(RateChecks, "_send", counted)

    async def calls(task: Any) -> dict[str, int]:
        backend = dataclasses.replace(real, prefix=f"{real.prefix}{task.name}")
        async with backend.pool() as pool:
            await pool.enqueue_many([asyncjobs.call(task, i) for i in range(n)])
            await pool.client.config_resetstat()
            await backend.run(backend.worker([task], burst=True))
            stats: dict[str, Any] = await pool.client.info("commandstats")
            counters = (await pool.admin.queue_stats()).counters
            assert counters.get("complete") == n and "rate_limited" not in counters
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    without = await calls(free)
    assert trips == []
    with_limit = await calls(limited)
    assert sum(trips) == n  # every job was checked, once
    assert len(trips) <= n
    extra = with_limit.get("evalsha", 0) - without.get("evalsha", 0)
    assert extra <= n * 1.05, extra  # at most one more round trip per job (with a margin)
    print(f"\nper job without a limit: {sum(without.values()) / n:.1f} commands "
          f"({without.get('evalsha', 0) / n:.2f} script calls); with a limit not exceeded: "
          f"{sum(with_limit.values()) / n:.1f} commands "
          f"({with_limit.get('evalsha', 0) / n:.2f} script calls; {len(trips)} rate checks "
          f"for {n} jobs)")


# -- three worker processes ------------------------------------------------------------------


@pytest.mark.slow
def test_three_processes_together_hold_the_rate_within_ten_percent(
        redis_server: RedisServer) -> None:
    """130 jobs over a 10/s limit, three worker processes: the jobs that started in the 10 s
    after the first one (start times recorded on the Redis clock) number 100, within 10 %."""
    import redis as sync_redis

    from .apps import limited

    prefix = f"t{time.monotonic_ns()}"
    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        with workers("tests.apps.limited:worker", redis_server.url, prefix, 3,
                     TEST_RATE="10/s"):
            async def enqueue() -> None:
                async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
                    await pool.enqueue_many([asyncjobs.call(limited.ping, i)
                                             for i in range(130)])

            asyncio.run(enqueue())
            deadline = time.monotonic() + 60
            while client.llen(f"{prefix}:starts") < 115 and time.monotonic() < deadline:
                time.sleep(0.2)
            starts = [raw.decode().split(":") for raw in client.lrange(f"{prefix}:starts",
                                                                        0, -1)]
    finally:
        client.close()
    assert len(starts) >= 115, f"only {len(starts)} jobs started"
    times = sorted(int(us) for us, _ in starts)
    attempts = {int(a) for _, a in starts}
    first = times[0]
    in_window = sum(1 for t in times if first <= t < first + 10_000_000)
    print(f"\n{in_window} jobs started in the 10 s window at a 10/s limit")
    assert math.isclose(in_window, 100, rel_tol=0.10), in_window
    assert attempts == {1}  # no deferral counted as an attempt


@pytest.mark.asyncio
async def test_a_keepalive_during_a_rate_check_leaves_the_deferral_to_the_check(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """rate.lua defers a job and releases its entry; until the worker reads that reply, the
    attempt still looks held. A keep-alive round in between (every 0.2 s here) must not take
    the released entry for one another worker took ("lost": the attempt cancelled, its
    deferral never told to the observers)."""
    from asyncjobs._redis import scripts
    from asyncjobs._redis.store import QueueStore

    touches = 0
    real_touch = QueueStore.touch

    async def counted_touch(self: QueueStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal touches
        touches += 1
        return await real_touch(self, *args, **kwargs)

    real_run = scripts.run_pipelined

    async def slow_rate_replies(client: Any, calls: Any) -> list[Any]:
        replies = await real_run(client, calls)
        if any(script.name == "rate" for script, _, _ in calls):
            # the deferrals are done in Redis: give the keep-alive two rounds to see them
            seen, deadline = touches, time.monotonic() + 1.5
            while touches < seen + 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        return replies

    monkeypatch.setattr(QueueStore, "touch", counted_touch)
    monkeypatch.setattr(scripts, "run_pipelined", slow_rate_replies)

    @asyncjobs.task(rate_limit="1/h")
    async def mail(ctx: Context, i: int) -> int:
        await asyncio.sleep(3)  # holds its entry: the keep-alive has something to touch
        return i

    seen = Seen()
    async with backend.pool() as pool:
        jobs = [await pool.enqueue(mail, i) for i in range(4)]
        async with running(backend, backend.worker([mail], observers=[seen],
                                                   claim_timeout=1.2)):
            async def all_told() -> bool:
                return sum(1 for kind, _, _ in seen.kinds if kind == "rate_limited") >= 3

            await until(all_told, "the deferrals to reach the observer", timeout_s=10)
            assert await jobs[0].result(timeout=10) == 0
        for job in jobs[1:]:
            assert await job.status() is JobState.SCHEDULED
    kinds = [kind for kind, _, _ in seen.kinds]
    assert kinds.count("rate_limited") == 3 and "interrupted" not in kinds, seen.kinds


@pytest.mark.asyncio
@pytest.mark.parametrize("confirm_starts", [False, True], ids=["on-time", "late-starts"])
async def test_a_keepalive_begun_before_a_rate_check_leaves_the_deferral_to_the_check(
        backend: Backend, monkeypatch: pytest.MonkeyPatch, confirm_starts: bool) -> None:
    """The keep-alive leaves out of its touch the attempts being checked, but a touch whose
    list was made just before the check began (the attempts were started, their tasks had
    not run yet) can reach Redis after rate.lua deferred the jobs and released their
    entries: it reports them lost while the check's reply is still on its way. That
    must not cancel the attempts ("interrupted", their deferrals never told). Here the
    order is forced: the attempts wait for the touch's list before their check, the touch
    waits for rate.lua before it runs, and the check's reply waits for the touch's.

    Only the keep-alive's touch (its task runs ``upkeep._touch``) is held: the touch that
    confirms a start answered late (``late.confirmed``, in the fetch loop, before the
    attempts begin) goes at once. Held too, it stalled the fetch loop, so the attempts
    never began (a clean-clone run, where the load made the starts late). 'late-starts'
    makes every start's first stamp due at once, so each start is confirmed (on time)
    before its attempt begins, to keep that path covered."""
    from asyncjobs._redis import scripts
    from asyncjobs._redis.store import QueueStore
    from asyncjobs._worker import late
    from asyncjobs._worker.attempt_path import AttemptPath

    if confirm_starts:
        real_stamp, stamped = late.stamp, set()

        def due_at_once(rows: Any, sent: float, refresh_s: float) -> None:
            real_stamp(rows, sent, refresh_s)
            for _, st in rows:
                if id(st) not in stamped:  # a start's first stamp; its confirmation's are real
                    stamped.add(id(st))
                    st.confirm_after = float("-inf")

        monkeypatch.setattr(late, "stamp", due_at_once)
    listed, rate_ran, touched = asyncio.Event(), asyncio.Event(), asyncio.Event()
    real_touch = QueueStore.touch

    def from_keepalive() -> bool:
        task = asyncio.current_task()
        return task is not None and getattr(task.get_coro(), "__qualname__", "") == "_touch"

    async def late_touch(self: QueueStore, consumer: str, held: Any, *args: Any,
                         **kwargs: Any) -> Any:
        if not held or listed.is_set() or not from_keepalive():
            return await real_touch(self, consumer, held, *args, **kwargs)
        listed.set()  # the list holds the attempts, none of them checked yet
        await asyncio.wait_for(rate_ran.wait(), 20)
        try:
            return await real_touch(self, consumer, held, *args, **kwargs)
        finally:
            touched.set()  # the keep-alive reads the reply before the check reads its own

    real_path_run = AttemptPath.run

    async def check_after_the_list(self: AttemptPath, running_: Any, st: Any) -> Any:
        await asyncio.wait_for(listed.wait(), 20)
        return await real_path_run(self, running_, st)

    real_run = scripts.run_each_pipelined  # the rate checks' round trip

    async def rate_replies_after_the_touch(client: Any, calls: Any) -> list[Any]:
        replies = await real_run(client, calls)
        if any(script.name == "rate" for script, _, _ in calls):
            rate_ran.set()
            await asyncio.wait_for(touched.wait(), 20)
        return replies

    monkeypatch.setattr(QueueStore, "touch", late_touch)
    monkeypatch.setattr(AttemptPath, "run", check_after_the_list)
    monkeypatch.setattr(scripts, "run_each_pipelined", rate_replies_after_the_touch)

    @asyncjobs.task(rate_limit="1/h")
    async def mail(ctx: Context, i: int) -> int:
        return i

    seen = Seen()
    async with backend.pool() as pool:
        jobs = [await pool.enqueue(mail, i) for i in range(4)]
        async with running(backend, backend.worker([mail], observers=[seen],
                                                   claim_timeout=1.2)):
            async def all_decided() -> bool:
                return sum(1 for kind, _, _ in seen.kinds
                           if kind in ("rate_limited", "interrupted")) >= 3

            await until(all_decided, "the deferrals (or interruptions) to be told",
                        timeout_s=30)
            assert await jobs[0].result(timeout=30) == 0
        for job in jobs[1:]:
            assert await job.status() is JobState.SCHEDULED
    assert touched.is_set()
    kinds = [kind for kind, _, _ in seen.kinds]
    assert kinds.count("rate_limited") == 3 and "interrupted" not in kinds, seen.kinds
