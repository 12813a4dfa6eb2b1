"""Hostile input to delayed jobs, cron, the leader lease and kept results, on a real
``redis-server``: garbage in every field of the scheduling keys (the delayed set's members
and scores, the cron hash's cursors and ``<name>:job`` fields, the lease key), kept results
written by hand, cron expressions and due times at their edges, two schedulers leading at
once, a job enqueued again under its id while it waits.

After each attack: every job still ends visibly (a result, a dead letter with its reason,
expired, aborted), the scheduler goes on with the other jobs, an idle worker stays idle
(Redis commands counted, not wall time), and errors are typed and one line (no traceback
in the log).

Each test drives its own event loop with ``asyncio.run`` (not pytest-asyncio's asyncio +
uvloop pair): the loop is not what is attacked here, and running each test once keeps the
load low. Tests marked ``xfail(strict=True)`` expose defects; their reasons name the cause.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import ConfigurationError, Context, CorruptJob, JobState
from asyncjobs._redis import kept
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.fake import fake_factory
from asyncjobs._scheduling.cron import CatchUp, CronExpr, Every, plan_ticks, tick_id
from asyncjobs._scheduling.leader import Lease

from .conftest import Backend, running
from .procs import run_cli

pytestmark = [pytest.mark.real_redis]

T = TypeVar("T")

TICKS: Counter[str] = Counter()
"""Runs of each cron tick, by job id."""
RUNS: Counter[str] = Counter()
"""Runs of each ``sh_echo`` job, by job id."""


@asyncjobs.task(name="sh_tick")
async def sh_tick(ctx: Context) -> None:
    TICKS[ctx.job_id] += 1


@asyncjobs.task(name="sh_other")
async def sh_other(ctx: Context) -> None:
    TICKS[f"other:{ctx.job_id}"] += 1


@asyncjobs.task(name="sh_echo")
async def sh_echo(ctx: Context, n: int) -> int:
    RUNS[ctx.job_id] += 1
    return n


def run(main: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(main)


async def until(check: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str,
                *, bad: Callable[[], str | None] = lambda: None) -> None:
    """Poll ``check`` until true; fail after ``timeout_s``, or at once when ``bad`` says
    what went wrong (a traceback in the log: no need to wait out the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if not isinstance(found, bool):
            found = await found
        if found:
            return
        if (wrong := bad()) is not None:
            raise AssertionError(f"{what}: {wrong}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """asyncjobs log lines that carry a traceback (an internal error, not one line)."""
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("asyncjobs") and r.exc_info]


def first_traceback(caplog: pytest.LogCaptureFixture) -> Callable[[], str | None]:
    def check() -> str | None:
        found = tracebacks(caplog)
        return f"a traceback was logged: {found[0]!r}" if found else None
    return check


def ticks_of(name: str) -> dict[str, int]:
    return {job_id: n for job_id, n in TICKS.items() if job_id.startswith(f"cron:{name}:")}


async def commands(client: Any) -> int:
    """Commands the server has run so far, INFO (our probe) left out."""
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.startswith("cmdstat_info"))


def backend_on(server: RedisServer) -> Backend:
    return Backend("real", server.url, url_factory(server.url), f"t{secrets.token_hex(4)}")


def fresh_name(base: str) -> str:
    """A cron name of this test alone (ticks are counted by job id, process-wide)."""
    return f"{base}-{secrets.token_hex(3)}"


# -- cron expressions and schedules at their edges (pure) -------------------------------------


@pytest.mark.parametrize("expression", [
    "0 0 30 2 *", "0 0 31 4 *", "0 0 30-31 2 *", "0 0 31 2,4,6,9,11 *", "0 0 31 2-4/2 *",
    "0 0 * 2 MON#6", "*/0 * * * *", "61 * * * *", "* * * *", "* * * * * * *", "",
    "\x00 * * * *", "0 0 31W 2 *",
])
def test_cron_expressions_that_can_never_fire_or_parse_are_refused_in_one_line(
    expression: str,
) -> None:
    """February 30th and its kin never fire: refused where the cron job is declared (a
    ValueError of one line naming the expression), not found out by a worker later."""
    with pytest.raises(ValueError) as caught:
        asyncjobs.cron(sh_tick, expression)
    message = str(caught.value)
    assert "\n" not in message and repr(expression) in message


@pytest.mark.parametrize(("expression", "first"), [
    ("0 0 * 2 MON#5", datetime(2044, 2, 29, tzinfo=UTC)),  # a fifth Monday in February
    ("0 0 * 2 SUN#5", datetime(2032, 2, 29, tzinfo=UTC)),
    ("0 0 29 2 *", datetime(2028, 2, 29, tzinfo=UTC)),
])
def test_a_schedule_whose_next_tick_is_years_away_is_planned_quickly(
    expression: str, first: datetime,
) -> None:
    now = datetime(2026, 12, 3, tzinfo=UTC)
    schedule = CronExpr(expression)
    began = time.monotonic()
    plan = plan_ticks(schedule, now - timedelta(days=1), now, policy=CatchUp.ALL,
                      grace=timedelta(seconds=60), max_catch_up=10)
    assert schedule.next_after(now) == first
    assert plan.fire == () and plan.cursor == now - timedelta(days=1)
    assert time.monotonic() - began < 2.0


@pytest.mark.parametrize("schedule", [CronExpr("* * * * * *"), Every(1)],
                         ids=["cron every second", "every=1"])
def test_every_second_across_a_year_boundary_fires_each_tick_once(schedule: Any) -> None:
    cursor = datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC)
    now = datetime(2027, 1, 1, 0, 0, 2, tzinfo=UTC)
    plan = plan_ticks(schedule, cursor, now, policy=CatchUp.SKIP, grace=timedelta(seconds=60),
                      max_catch_up=1)
    assert plan.fire == tuple(cursor + timedelta(seconds=s) for s in range(1, 5))
    assert plan.cursor == now and plan.dropped == 0
    ids = [tick_id("y", t) for t in plan.fire]
    assert ids == ["cron:y:2026-12-31T23:59:59Z", "cron:y:2027-01-01T00:00:00Z",
                   "cron:y:2027-01-01T00:00:01Z", "cron:y:2027-01-01T00:00:02Z"]


# -- the cron hash: garbage cursors --------------------------------------------------------------


def test_a_cron_cursor_that_is_not_a_number_is_overwritten_not_a_crash_loop(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    name = fresh_name("garbage")

    async def main() -> None:
        async with real.pool() as pool:
            await pool.client.hset(pool.keys("default").cron,
                                   mapping={"retired-job": "abc", name: "1.5"})
            worker = real.worker([sh_tick], lease_ttl=1,
                                 cron=[asyncjobs.cron(sh_tick, every=0.25, name=name)])
            async with running(real, worker):
                await until(lambda: len(ticks_of(name)) >= 2, 6, "the cron fires again",
                            bad=first_traceback(caplog))
        assert tracebacks(caplog) == []

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())


@pytest.mark.parametrize("cursor", ["999999999999999", "253402300799999", "-62135596800001"])
def test_a_cron_cursor_beyond_the_years_a_datetime_holds_is_not_a_crash_loop(
    real: Backend, caplog: pytest.LogCaptureFixture, cursor: str,
) -> None:
    name = fresh_name("edge")

    async def main() -> None:
        async with real.pool() as pool:
            await pool.client.hset(pool.keys("default").cron, name, cursor)
            worker = real.worker([sh_tick], lease_ttl=1,
                                 cron=[asyncjobs.cron(sh_tick, every=0.25, name=name)])
            async with running(real, worker):
                await until(lambda: len(ticks_of(name)) >= 2, 6, "the cron fires",
                            bad=first_traceback(caplog))
        assert tracebacks(caplog) == []

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())


def test_a_cron_cursor_far_in_the_future_does_not_stop_the_cron_for_ever(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    name = fresh_name("future")

    async def main() -> None:
        async with real.pool() as pool:
            await pool.client.hset(pool.keys("default").cron, name, "10000000000000")  # 2286
            worker = real.worker([sh_tick], lease_ttl=1,
                                 cron=[asyncjobs.cron(sh_tick, every=0.25, name=name)])
            async with running(real, worker):
                await until(lambda: len(ticks_of(name)) >= 2, 4, "the cron fires",
                            bad=first_traceback(caplog))

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())


def test_a_cron_keeps_firing_after_the_server_clock_steps_forward_and_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """On the in-memory server, whose clock is Python's ``time.time`` (so a test can step
    it): every=1 s, the clock an hour ahead for 2 s, then right again."""
    backend = Backend("fake", None, fake_factory(), f"t{secrets.token_hex(4)}")
    offset = [0.0]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    name = fresh_name("stepped")

    def fired_after(moment: float) -> int:
        return sum(1 for t in ticks_of(name) if _tick_time(t).timestamp() > moment)

    async def main() -> None:
        worker = backend.worker([sh_tick], lease_ttl=1,
                                cron=[asyncjobs.cron(sh_tick, every=1, name=name)])
        async with running(backend, worker):
            await until(lambda: len(ticks_of(name)) >= 1, 5, "the cron fires")
            offset[0] = 3600.0
            await until(lambda: fired_after(real_time() + 3000) >= 1, 5,
                        "the cron fires on the stepped clock")
            await asyncio.sleep(1)  # the stepped clock goes on a moment (not a sync)
            offset[0] = 0.0
            back = real_time()
            await until(lambda: fired_after(back) - fired_after(back + 3000) >= 2, 5,
                        "the cron fires again on the right clock")

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())


def _tick_time(job_id: str) -> datetime:
    return datetime.fromisoformat(job_id.split(":", 2)[2].replace("Z", "+00:00"))


def test_no_overlap_ignores_a_previous_job_that_is_not_one_of_its_ticks(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    name = fresh_name("overlap")

    async def main() -> None:
        async with real.pool() as pool:
            far = await pool.enqueue(
                sh_echo.options(at=datetime(9999, 1, 1, tzinfo=UTC)), 1)
            await pool.client.hset(pool.keys("default").cron, f"{name}:job", far.id)
            worker = real.worker([sh_tick, sh_echo], lease_ttl=1, cron=[
                asyncjobs.cron(sh_tick, every=0.25, name=name, no_overlap=True)])
            async with running(real, worker):
                await until(lambda: len(ticks_of(name)) >= 2, 4, "the cron fires",
                            bad=first_traceback(caplog))
            assert await far.status() is JobState.SCHEDULED

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())


def test_two_cron_jobs_of_one_name_are_refused_or_both_run(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    name = fresh_name("dup")
    crons = [asyncjobs.cron(sh_tick, every=0.25, name=name),
             asyncjobs.cron(sh_other, every=0.5, name=name)]
    refusal = ""
    try:
        worker = real.worker([sh_tick, sh_other], lease_ttl=1, cron=crons)
    except (ConfigurationError, ValueError) as exc:
        refusal = str(exc)
    if refusal:  # refused where the worker is made: one line naming the cron job
        assert name in refusal and "\n" not in refusal
        return

    async def main() -> None:
        async with running(real, worker):
            await until(lambda: len(ticks_of(name)) >= 4, 5, "the first cron job fires")
            await until(lambda: any(t.startswith(f"other:cron:{name}:") for t in TICKS), 3,
                        "the second cron job fires")

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())


# -- the cron hash of the wrong type -------------------------------------------------------------


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The scheduler's error lines (here: its refusals of the cron hash)."""
    return [r.getMessage() for r in caplog.records
            if r.name == "asyncjobs.scheduler" and r.levelno >= logging.ERROR]


def test_a_cron_hash_of_the_wrong_type_stops_neither_delayed_jobs_nor_the_worker(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    """The cron hash made a string: delayed jobs still run on time, the refusal is one line
    (no traceback), and the cron fires again once the key is deleted."""
    name = fresh_name("wrongtype")

    async def main() -> None:
        async with real.pool() as pool:
            cron_key = pool.keys("default").cron
            await pool.client.set(cron_key, "garbage")
            worker = real.worker([sh_tick, sh_echo], lease_ttl=1,
                                 cron=[asyncjobs.cron(sh_tick, every=0.25, name=name)])
            async with running(real, worker):
                await until(lambda: bool(refusals(caplog)), 5, "the refusal is logged")
                jobs = [await pool.enqueue(sh_echo.options(delay=0.2), n) for n in range(3)]
                for n, job in enumerate(jobs):
                    assert await job.result(timeout=5) == n
                assert ticks_of(name) == {}
                await pool.client.delete(cron_key)
                await until(lambda: len(ticks_of(name)) >= 2, 8, "the cron fires again")
        assert tracebacks(caplog) == []

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())


def test_the_refusal_of_a_cron_hash_of_the_wrong_type_names_the_key(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> str:
        async with real.pool() as pool:
            cron_key: str = pool.keys("default").cron
            await pool.client.set(cron_key, "garbage")
            worker = real.worker([sh_tick], lease_ttl=1, cron=[
                asyncjobs.cron(sh_tick, every=0.25, name=fresh_name("named"))])
            async with running(real, worker):
                await until(lambda: bool(refusals(caplog)), 5, "the refusal is logged")
        return cron_key

    with caplog.at_level(logging.INFO, "asyncjobs"):
        cron_key = run(main())
    assert cron_key in refusals(caplog)[0]


def test_the_refusal_of_a_cron_hash_of_the_wrong_type_backs_off(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with real.pool() as pool:
            await pool.client.set(pool.keys("default").cron, "garbage")
            worker = real.worker([sh_tick], lease_ttl=1, cron=[
                asyncjobs.cron(sh_tick, every=0.25, name=fresh_name("backoff"))])
            async with running(real, worker):
                await until(lambda: bool(refusals(caplog)), 5, "the refusal is logged")
                await asyncio.sleep(8)  # a window to count lines in, not a synchronisation

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())
    # Backing off from 1 s (doubling): lines at about 0, 1, 3 and 7 s; at most 5 in 8 s.
    print(f"{len(refusals(caplog))} refusal lines")
    assert len(refusals(caplog)) <= 5, refusals(caplog)


# -- grace --------------------------------------------------------------------------------------


def test_a_tiny_grace_does_not_drop_ticks_while_the_leader_runs(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    name = fresh_name("grace")
    try:
        job = asyncjobs.cron(sh_tick, every=0.25, name=name, catch_up="skip", grace=0)
    except ValueError:
        return  # refused where declared, in one line: a fix as good as firing every tick

    async def main() -> None:
        worker = real.worker([sh_tick], lease_ttl=1, cron=[job])
        async with running(real, worker):
            await until(lambda: len(ticks_of(name)) >= 9, 6, "ticks run")

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())
    fired = sorted(datetime.fromisoformat(t.split(":", 2)[2].replace("Z", "+00:00"))
                   for t in ticks_of(name))
    gaps = {b - a for a, b in itertools.pairwise(fired)}
    assert gaps == {timedelta(seconds=0.25)}, f"ticks dropped: {sorted(gaps)}"


# -- two leaders at once --------------------------------------------------------------------------


def test_two_schedulers_leading_at_once_run_each_tick_and_delayed_job_once(
    real: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The extreme of two workers with skewed clocks racing on the lease: both believe they
    hold it all along (the lease itself never taken). Correctness must not rest on the lease
    (README): each cron tick runs once, none is lost, each delayed job runs once."""
    async def granted(self: Lease) -> bool:
        self._granted(time.monotonic())  # trusted for 80 % of the TTL, renewed at a third
        return True

    monkeypatch.setattr(Lease, "acquire", granted)
    monkeypatch.setattr(Lease, "renew", granted)
    every, seconds = fresh_name("twice"), fresh_name("second")
    crons = [asyncjobs.cron(sh_tick, every=0.1, name=every),
             asyncjobs.cron(sh_tick, "* * * * * *", name=seconds)]

    async def main() -> list[str]:
        async with real.pool() as pool:
            jobs = await pool.enqueue_many(
                asyncjobs.call(sh_echo.options(delay=0.3 + n / 100), n) for n in range(200))
            first = real.worker([sh_tick, sh_echo], lease_ttl=1, cron=crons)
            second = real.worker([sh_tick, sh_echo], lease_ttl=1, cron=crons)
            async with running(real, first), running(real, second):
                await until(lambda: len(ticks_of(every)) >= 25, 10, "ticks run")
                for n, job in enumerate(jobs):
                    assert await job.result(timeout=10) == n
                await asyncio.sleep(0.3)  # would a late duplicate run? (a window, not a sync)
            return [j.id for j in jobs]

    with caplog.at_level(logging.INFO, "asyncjobs"):
        ids = run(main())
    leads = [r for r in caplog.records if r.getMessage() == "scheduler leads queue default"]
    assert len(leads) >= 2, "both schedulers led"
    assert [RUNS[i] for i in ids] == [1] * len(ids)
    for name, step in ((every, timedelta(seconds=0.1)), (seconds, timedelta(seconds=1))):
        found = ticks_of(name)
        assert set(found.values()) == {1}, f"a tick of {name} ran twice"
        fired = sorted(datetime.fromisoformat(t.split(":", 2)[2].replace("Z", "+00:00"))
                       for t in found)
        assert {b - a for a, b in itertools.pairwise(fired)} <= {step}, "lost"
    assert tracebacks(caplog) == []


# -- the delayed set: garbage members and scores --------------------------------------------------


def test_garbage_in_the_delayed_set_ends_visibly_and_an_idle_leader_does_not_spin(
    fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    """Members that name no job at every kind of score Redis keeps (±inf, ±1e300, 2^53,
    2^63, fractional, due and not), a job key of another type, a record that is no longer
    scheduled, one whose expiry is not a time, one without a payload, written under a
    running leader: the good delayed jobs run once (within a lease period: the garbage at
    the head of the set keeps their enqueue from waking the leader), each bad job ends
    dead-lettered with its
    reason, nothing is left due, no traceback is logged, and the idle leader (whose cron job
    next fires in 2044) sends no more commands than before the attack."""
    real = backend_on(fresh_redis)

    async def main() -> None:
        async with real.pool() as pool:
            k, c = pool.keys("default"), pool.client
            worker = real.worker([sh_tick, sh_echo], lease_ttl=2, cron=[
                asyncjobs.cron(sh_tick, "0 0 * 2 MON#5", name=fresh_name("leap"))])
            async with running(real, worker):
                await asyncio.sleep(1)  # start-up and the first leadership settle
                before = await commands(c)
                await asyncio.sleep(4)  # a window to count commands in, not a sync
                baseline = await commands(c) - before
                await c.zadd(k.delayed, {
                    "ghost-ninf": float("-inf"), "ghost-neg": -1e300, "ghost-zero": 0,
                    "ghost-frac": 0.5, "ghost-2p53": 2.0**53, "ghost-2p63": 2.0**63,
                    "ghost-big": 1e300, "ghost-pinf": float("inf")})
                await c.set(k.job("as-string"), "x")
                await c.hset(k.job("ended-meanwhile"), mapping={"s": "complete", "j": b"x"})
                await c.hset(k.job("bad-expiry"), mapping={"s": "scheduled", "j": b"x",
                                                           "x": "soon"})
                await c.hset(k.job("no-payload"), mapping={"s": "scheduled", "a": "0"})
                await c.zadd(k.delayed, {"as-string": 5, "ended-meanwhile": 6.25,
                                         "bad-expiry": 7, "no-payload": 8})
                good = [await pool.enqueue(sh_echo.options(delay=0.3), n) for n in range(3)]
                for n, job in enumerate(good):
                    assert await job.result(timeout=10) == n
                await until(lambda: _all_failed(pool, ["bad-expiry", "no-payload"]), 5,
                            "the bad records end")
                now_ms = int((await c.time())[0]) * 1000
                assert await c.zrangebyscore(k.delayed, "-inf", now_ms) == []
                await asyncio.sleep(1)  # the promotions of the attack settle
                before = await commands(c)
                await asyncio.sleep(4)  # a window to count commands in, not a sync
                after = await commands(c) - before
            letters = {f[b"i"].decode(): f[b"r"].decode() for _, f in await c.xrange(k.dead)}
            assert "holds something other than a hash" in letters["as-string"]
            assert "expiry field is not a time" in letters["bad-expiry"]
            assert "payload cannot be decoded" in letters["no-payload"]
            assert set(letters) == {"as-string", "bad-expiry", "no-payload"}
            assert await pool.job("ended-meanwhile").status() is JobState.COMPLETE
            left = {m.decode() for m in await c.zrange(k.delayed, 0, -1)}
            assert left == {"ghost-2p53", "ghost-2p63", "ghost-big", "ghost-pinf"}
        assert [RUNS[j.id] for j in good] == [1, 1, 1]
        # An idle leader with a 2 s lease: under 20 commands/s (renewals, a promotion per
        # lease period, reclaim scans, heartbeats), in bursts: 4 s windows swing by a few
        # bursts. A spin is thousands.
        print(f"idle leader: {baseline} commands in 4 s before the attack, {after} after")
        assert baseline < 4 * 40, f"{baseline} commands in 4 s"
        assert after <= 1.5 * baseline + 10, (baseline, after)

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())
    assert tracebacks(caplog) == []


async def _all_failed(pool: asyncjobs.Pool, job_ids: list[str]) -> bool:
    return all([await pool.job(i).status() is JobState.FAILED for i in job_ids])


# -- due times at their edges ---------------------------------------------------------------------


def test_due_times_at_the_edges_run_or_wait_and_read_back(real: Backend) -> None:
    """Due at the epoch, in year 1 and with no delay: run at once. Due at the last
    millisecond of year 9999: scheduled, readable by every reader (status, info, the
    listing, the CLI) and abortable."""
    last = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)

    async def main() -> None:
        async with real.pool() as pool:
            now = await pool.enqueue(sh_echo.options(delay=0), 0)
            epoch = await pool.enqueue(sh_echo.options(at=datetime(1970, 1, 1, tzinfo=UTC)), 1)
            year1 = await pool.enqueue(sh_echo.options(at=datetime(1, 1, 1, tzinfo=UTC)), 2)
            ancient = await pool.enqueue(sh_echo.options(
                at=datetime(1969, 7, 20, 20, 17, tzinfo=UTC)), 3)
            end = await pool.enqueue(sh_echo.options(at=last), 4)
            for job in (now, epoch, year1, ancient):
                assert await job.status() is JobState.QUEUED
            async with running(real, real.worker([sh_echo], lease_ttl=1)):
                for n, job in enumerate((now, epoch, year1, ancient)):
                    assert await job.result(timeout=5) == n
                assert await end.status() is JobState.SCHEDULED
                info = await end.info()
                assert info.scheduled_for is not None
                assert abs(info.scheduled_for - last) < timedelta(milliseconds=1)
                page = await pool.admin.jobs("scheduled")
                assert [(r.job_id, r.at is not None) for r in page.items] == [(end.id, True)]
                shown = await asyncio.to_thread(run_cli, "job", end.id, "--redis-url",
                                                real.url or "", "--prefix", real.prefix)
                assert shown.returncode == 0 and "9999-12-31" in shown.stdout, shown
                assert await end.abort() is True
                assert await end.status() is JobState.ABORTED
                assert await pool.client.zcard(pool.keys("default").delayed) == 0

    run(main())


@pytest.mark.parametrize("order", ["oldest", "newest"])
def test_paging_scheduled_jobs_of_one_due_time_lists_them_all_while_some_leave(
    real: Backend, order: str,
) -> None:
    async def main() -> None:
        async with real.pool() as pool:
            jobs = await pool.enqueue_many(
                asyncjobs.call(sh_echo.options(delay=600), n) for n in range(10))
            delayed = pool.keys("default").delayed
            assert len({s for _, s in await pool.client.zrange(delayed, 0, -1,
                                                                withscores=True)}) == 1
            listed: list[str] = []
            cursor = None
            for _ in range(20):
                page = await pool.admin.jobs("scheduled", order=order, cursor=cursor, limit=3)
                listed += [row.job_id for row in page.items]
                if page.items:  # the page's last job is aborted before the next page
                    assert await pool.job(page.items[-1].job_id).abort() is True
                if (cursor := page.cursor) is None:
                    break
            assert sorted(listed) == sorted(j.id for j in jobs)

    run(main())


def test_a_later_delay_overrides_an_earlier_at(real: Backend) -> None:
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    refusal = ""
    try:
        chained = sh_echo.options(at=tomorrow).options(delay=1)
    except (ConfigurationError, ValueError) as exc:
        refusal = str(exc)
    if refusal:
        assert "\n" not in refusal
        return

    async def main() -> None:
        async with real.pool() as pool:
            job = await pool.enqueue(chained, 1)
            due = (await job.info()).scheduled_for
            assert due is not None and due < datetime.now(UTC) + timedelta(seconds=30), due

    run(main())


# -- the same job id enqueued again while it waits -----------------------------------------------


def test_a_job_enqueued_again_under_its_id_while_scheduled_runs_once_as_first_enqueued(
    real: Backend,
) -> None:
    async def main() -> None:
        async with real.pool() as pool:
            job_id = f"once-{secrets.token_hex(4)}"
            first = await pool.enqueue(sh_echo.options(job_id=job_id, delay=0.5), 1)
            again = await pool.enqueue(sh_echo.options(job_id=job_id), 2)  # no delay now
            later = await pool.enqueue(sh_echo.options(job_id=job_id, delay=3600), 3)
            assert first.id == again.id == later.id == job_id
            assert await again.status() is JobState.SCHEDULED
            assert await pool.client.zcard(pool.keys("default").delayed) == 1
            assert await pool.client.xlen(pool.keys("default").stream) == 0
            async with running(real, real.worker([sh_echo], lease_ttl=1)):
                assert await first.result(timeout=5) == 1  # the first call's argument
                after = await pool.enqueue(sh_echo.options(job_id=job_id, delay=0.1), 4)
                assert await after.result(timeout=1) == 1  # its result is kept: dedup
                # aborted while scheduled, then enqueued again: the aborted record answers
                other = f"aborted-{secrets.token_hex(4)}"
                waiting = await pool.enqueue(sh_echo.options(job_id=other, delay=60), 5)
                assert await waiting.abort() is True
                await pool.enqueue(sh_echo.options(job_id=other, delay=0.1), 6)
                assert await waiting.status() is JobState.ABORTED
            assert RUNS[job_id] == 1 and RUNS[other] == 0

    run(main())


# -- the leader lease key ------------------------------------------------------------------------


def test_a_lease_key_of_any_type_or_without_expiry_stalls_scheduling_for_a_moment_only(
    real: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    """The lease key replaced, while a leader runs, by a stream with an expiry, a holder's
    token without one, a list, and a holder's token expiring in two hours: each is removed
    by the next try at the lease (one line in the log), a worker leads again, and a delayed
    job enqueued meanwhile runs."""
    hex32 = "0" * 32

    async def main() -> None:
        async with real.pool() as pool:
            lease, c = pool.keys("default").leader, pool.client

            async def held_by_a_worker() -> bool:
                if await c.type(lease) != b"string":
                    return False
                value = (await c.get(lease) or b"").decode()
                return not value.startswith("ghost|") and len(value.split("|")[-1]) == 32

            async with running(real, real.worker([sh_echo], lease_ttl=1)):
                await until(held_by_a_worker, 5, "a leader")
                for n, how in enumerate(("stream", "token", "list", "long")):
                    swap = c.pipeline(transaction=True)  # MULTI: no leader gets in between
                    swap.delete(lease)
                    if how == "stream":
                        swap.xadd(lease, {"holder": "x"}).expire(lease, 600)
                    elif how == "token":
                        swap.set(lease, f"ghost|{hex32}")
                    elif how == "list":
                        swap.rpush(lease, "x")
                    else:
                        swap.set(lease, f"ghost|{hex32}", ex=7200)
                    await swap.execute()
                    job = await pool.enqueue(sh_echo.options(delay=0.2), n)
                    await until(held_by_a_worker, 5, f"a worker leads again after {how}")
                    assert await job.result(timeout=5) == n, how
        removed = [r.getMessage().split(": ", 1)[1] for r in caplog.records
                   if "removed the lease" in r.getMessage()]
        assert removed == ["not a holder's value", "no expiry", "no expiry",
                           "an expiry longer than any holder sets"]

    with caplog.at_level(logging.INFO, "asyncjobs"):
        run(main())
    assert tracebacks(caplog) == []


async def _exists(client: Any, key: str) -> bool:
    return bool(await client.exists(key))


# -- kept results written by hand ----------------------------------------------------------------

_varints = st.one_of(st.integers(0, 127), st.integers(0, 2**63 - 1),
                     st.sampled_from([2**56, 2**62, 2**63 - 1]))
_packed = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda version, numbers, tail: bytes([version]) + b"".join(
        kept._leb128(n) for n in numbers) + tail,
        st.sampled_from([0, 1, 1, 1, 2, 255]), st.lists(_varints, max_size=8),
        st.binary(max_size=24)),
    st.builds(lambda cut, fields: kept.encode(fields)[:cut], st.integers(0, 60), st.builds(
        lambda a, q, st_, et, r: {b"a": b"%d" % a, b"q": b"%d" % q, b"st": b"%d" % st_,
                                  b"j": b"\x93\xa4echo\x90\x80", b"w": b"w", b"et": b"%d" % et,
                                  b"r": r},
        st.integers(0, 2**40), st.integers(0, 2**50), st.integers(0, 2**50),
        st.integers(0, 2**50), st.binary(max_size=8))),
)


@settings(deadline=None, derandomize=True, database=None, max_examples=150,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=_packed)
def test_every_reader_of_a_kept_result_written_by_hand_answers_or_raises_corrupt_job(
    real: Backend, value: bytes,
) -> None:
    """Job.status / info / result, the complete listing and find_job on a kept value of any
    bytes (truncated, another version, varints of any size): a value, or CorruptJob with
    one line; never another exception, never a hang."""
    async def main() -> None:
        async with real.pool() as pool:
            [job_id] = kept.new_job_ids(1)
            keys = pool.keys("default")
            shared = keys.kept(job_id)
            assert shared is not None
            await pool.client.hset(shared, job_id, value)
            await pool.client.xadd(keys.ended, {job_id: "1000"})
            await pool.client.sadd(pool.global_keys.queues, "default")  # a known queue
            handle = pool.job(job_id)
            reads: dict[str, Callable[[], Awaitable[Any]]] = {
                "status": handle.status, "info": handle.info,
                "result": lambda: handle.result(timeout=2)}
            for what, read in reads.items():
                try:
                    got = await asyncio.wait_for(read(), 5)
                except CorruptJob as exc:
                    message = str(exc)
                else:
                    message = ""
                if message:  # one line, naming the job
                    assert "\n" not in message and job_id in message
                    continue
                if what == "status":  # a kept value that reads is a complete job
                    assert got is JobState.COMPLETE
                elif what == "info":
                    assert got.state is JobState.COMPLETE and got.id == job_id
            await pool.admin.jobs("complete")
            assert await pool.admin.find_job(job_id) == ["default"]
            await pool.client.delete(shared)

    run(main())
