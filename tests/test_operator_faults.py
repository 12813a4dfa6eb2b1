"""Operator faults done to Redis while workers run: what a tired SRE or a buggy script does.

Each test runs a real ``redis-server`` of its own (the faults hit the whole server: FLUSHALL,
CLIENT KILL, CLIENT PAUSE, CONFIG SET...) and at least one real worker: an in-process
``Worker`` whose ``run()`` is a task of the test, and for some a real ``asyncjobs worker
tests.test_operator_faults:worker`` subprocess (this module is also that worker's app). Jobs
are enqueued, running, delayed and retrying when the fault hits. The promises checked
(README, "Guarantees" and "Bad input never breaks a worker"):

- once ``enqueue`` returns, the job runs or ends visibly (no record stuck ``running``,
  ``queued`` or ``scheduled`` for ever), whatever was done to Redis, as far as its record
  is still there (FLUSHALL takes the records with it: then new jobs must run);
- a job runs once, but in the documented at-least-once cases;
- a worker never spins (its Redis commands once idle are counted with INFO commandstats
  and compared with the same fleet's count before the fault) and never wedges;
- bad data is logged in one line, never a traceback loop;
- a worker exits within its grace period on SIGTERM (plus the bounded hand-back).

Tests marked ``xfail(strict=True)`` expose defects (the reason names each); the others are
regression tests of faults the workers survive. Every attempt of this module's tasks adds a
token of its own to ``<prefix>:opsruns:<job id>`` (a set, so a command retried by the client
after a killed connection counts once), and in-process attempts are also counted, with how
many ran at once, in ``LIVE`` / ``OVERLAP``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.exceptions import RedisError

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._worker.shutdown import AFTER_GRACE_S

from .conftest import Backend, need_redis_server, running
from .procs import WorkerProcess
from .records import states

pytestmark = [pytest.mark.slow, pytest.mark.real_redis, pytest.mark.asyncio]

TARGET = "tests.test_operator_faults:worker"
CLAIM_S = 4.0
GRACE_S = 3.0
EXIT_SLACK_S = 5.0
"""A worker exits within its grace + this of a SIGTERM when Redis answers."""
SLOW_SCRIPT = """
local t = redis.call('TIME')
local began = tonumber(t[1]) + tonumber(t[2]) / 1e6
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) + tonumber(n[2]) / 1e6 - began >= tonumber(ARGV[1]) then break end
end
return 1
"""
"""A read-only script that keeps Redis busy for ARGV[1] seconds (SCRIPT KILL can end it)."""


# -- the tasks (also the subprocess worker's app) --------------------------------------------

LIVE: Counter[str] = Counter()
"""In-process attempts running now, by job id."""
OVERLAP: Counter[str] = Counter()
"""The most attempts of one job that ran at once in this process, by job id."""
RUNS: Counter[str] = Counter()
"""In-process attempts, by job id."""


async def _mark(ctx: Context) -> None:
    """Record this attempt: in this process's counters, and in Redis (a set of one token per
    attempt, so that a command the client retries after a killed connection counts once).
    The write is retried through the faults the tests make (never given up for long)."""
    RUNS[ctx.job_id] += 1
    token = f"{os.getpid()}:{ctx.attempt}:{secrets.token_hex(6)}"
    key = f"{ctx.pool.prefix}:opsruns:{ctx.job_id}"
    for _ in range(600):
        try:
            await ctx.pool.client.sadd(key, token)
            return
        except (RedisError, OSError):
            await asyncio.sleep(0.05)


@asyncjobs.task(name="ops_sleep", max_tries=10)
async def ops_sleep(ctx: Context, seconds: float) -> str:
    """Sleeps ``seconds``, counted."""
    LIVE[ctx.job_id] += 1
    OVERLAP[ctx.job_id] = max(OVERLAP[ctx.job_id], LIVE[ctx.job_id])
    try:
        await _mark(ctx)
        await asyncio.sleep(seconds)
        return "slept"
    finally:
        LIVE[ctx.job_id] -= 1


@asyncjobs.task(name="ops_flaky", max_tries=10)
async def ops_flaky(ctx: Context, retry_s: float) -> int:
    """Asks for a retry in ``retry_s`` on its first attempt (it then waits in the delayed
    set), completes on the next."""
    await _mark(ctx)
    if ctx.attempt == 1:
        raise asyncjobs.Retry(delay=retry_s)
    return ctx.attempt


@asyncjobs.task(name="ops_tick")
async def ops_tick(ctx: Context) -> None:
    """The cron job: counts its ticks."""
    for _ in range(100):
        try:
            await ctx.pool.client.incr(f"{ctx.pool.prefix}:opsticks")
            return
        except (RedisError, OSError):
            await asyncio.sleep(0.05)


TASKS = [ops_sleep, ops_flaky, ops_tick]
CRONS = [asyncjobs.cron(ops_tick, every=2, name="ops-tick")]

worker = asyncjobs.Worker(
    TASKS, cron=CRONS,
    prefix=os.environ.get("TEST_PREFIX", "asyncjobs"),
    claim_timeout=float(os.environ.get("TEST_CLAIM_TIMEOUT", str(CLAIM_S))),
    shutdown_grace=float(os.environ.get("TEST_GRACE", str(GRACE_S))),
    concurrency=int(os.environ.get("TEST_CONCURRENCY", "50")),
)
"""``asyncjobs worker tests.test_operator_faults:worker`` (prefix, claim timeout, grace and
concurrency from the environment)."""


# -- helpers ---------------------------------------------------------------------------------


def figures(scenario: str, **values: float | int | str) -> None:
    """Print a test's measured figures (``pytest -rP`` shows them)."""
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in values.items())
    print(f"FIGURES {scenario}: {shown}")


@pytest.fixture
def debug_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own that accepts DEBUG (off by default in Redis 7)."""
    need_redis_server()
    with RedisServer(extra_args=("--enable-debug-command", "yes")) as server:
        yield server


def backend_on(server: RedisServer) -> Backend:
    return Backend("real", server.url, url_factory(server.url), f"t{secrets.token_hex(4)}")


def in_process(backend: Backend, **options: Any) -> asyncjobs.Worker:
    """This module's worker, in process, on the backend's prefix."""
    options.setdefault("claim_timeout", CLAIM_S)
    options.setdefault("shutdown_grace", GRACE_S)
    options.setdefault("concurrency", 50)
    return backend.worker(TASKS, **options)


def start_proc(server: RedisServer, prefix: str, **env: str) -> WorkerProcess:
    """This module's worker as a real ``asyncjobs worker`` process, ready."""
    env.setdefault("TEST_CLAIM_TIMEOUT", f"{CLAIM_S:g}")
    env.setdefault("TEST_GRACE", f"{GRACE_S:g}")
    proc = WorkerProcess(TARGET, server.url, prefix, env=env)
    try:
        proc.wait_for("ready:")
    except BaseException:
        proc.close()
        raise
    return proc


@contextmanager
def procs(server: RedisServer, prefix: str, count: int, **env: str
          ) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    try:
        for _ in range(count):
            started.append(start_proc(server, prefix, **env))
        yield started
    finally:
        for proc in started:
            proc.close()


def sigterm_and_wait(proc: WorkerProcess, bound_s: float) -> float:
    """SIGTERM; assert a clean exit within ``bound_s``; returns how long it took."""
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    try:
        code = proc.wait(bound_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within {bound_s:g} s of SIGTERM:\n"
                             f"{proc.output[-3000:]}") from None
    took = time.monotonic() - began
    assert code == 0, f"exit code {code}:\n{proc.output[-3000:]}"
    return took


def tracebacks(text: str) -> int:
    return text.count("Traceback (most recent call last)")


class LogTrap(logging.Handler):
    """Collects the ``asyncjobs`` log records of an in-process worker."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def with_traceback(self) -> list[str]:
        return self.tracebacks_since(0.0)

    def tracebacks_since(self, since: float) -> list[str]:
        """The records logged with a traceback at ``since`` (time.time()) or later."""
        return [f"{r.name}: {r.getMessage()}: {r.exc_info[1]!r}" for r in self.records
                if r.exc_info and r.created >= since]

    def lines(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def trap() -> Iterator[LogTrap]:
    handler = LogTrap()
    logger = logging.getLogger("asyncjobs")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def commands(client: aredis.Redis) -> int:
    """Commands the server ran so far, but INFO (our probe); Lua's inner ones included."""
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.startswith("cmdstat_info"))


async def command_rate(client: aredis.Redis, seconds: float) -> float:
    """Commands per second over ``seconds`` of nothing but the workers' own traffic."""
    before = await commands(client)
    await asyncio.sleep(seconds)
    return (await commands(client) - before) / seconds


IDLE_WINDOW_S = 6.0
"""How long an idle fleet's commands are counted, before a fault and after it: longer than
the longest of its periods (a heartbeat every 5 s), so each window holds every kind of
burst (a reclaim scan every C/4, cron ticks every 2 s, lease renewals)."""


def spin_bound(baseline: float) -> float:
    """The most an idle fleet may send after a fault, from what it sent before: its bursts
    (reclaim scans, heartbeats, lease renewals, cron ticks) make the count of a short window
    vary by a third; a spin sends thousands a second."""
    return 2 * baseline + 20


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str,
                every_s: float = 0.1) -> float:
    """Poll ``check`` until true; returns how long it took; fails after ``timeout_s``."""
    began = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - began
        except (RedisError, OSError):
            pass  # the fault may still be on
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(every_s)


LOAD_POLL_S = 0.5
"""How often a test polls the states of a load's thousands of jobs: a poll of 1,500 takes
~30 ms of this process's CPU, which the in-process worker shares (every 0.1 s, a quarter
of a core)."""


async def all_in(pool: asyncjobs.Pool, ids: list[str], wanted: set[str]) -> bool:
    found = await states(pool, ids)
    return all(s in wanted for s in found.values())


async def runs_in_redis(pool: asyncjobs.Pool, ids: list[str]) -> dict[str, int]:
    """Each job's attempts, as its attempts recorded them in Redis."""
    pipe = pool.client.pipeline(transaction=False)
    for job_id in ids:
        pipe.scard(f"{pool.prefix}:opsruns:{job_id}")
    return dict(zip(ids, [int(n) for n in await pipe.execute()], strict=True))


@asynccontextmanager
async def admin_client(server: RedisServer) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(server.url, socket_timeout=60)
    try:
        yield client
    finally:
        await client.aclose()


def in_thread(fn: Callable[[], object]) -> threading.Thread:
    """Run a blocking admin command (DEBUG SLEEP, a slow script, CLIENT PAUSE) beside the
    test, on a connection of its own."""
    def body() -> None:
        with contextlib.suppress(RedisError, OSError):  # a killed script, a server gone
            fn()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


# -- 1. FLUSHALL / FLUSHDB mid-run -----------------------------------------------------------


@pytest.mark.long
@pytest.mark.timeout(180)
@pytest.mark.parametrize("flush", ["FLUSHALL", "FLUSHDB"])
async def test_a_flush_mid_run_leaves_a_fleet_that_runs_new_jobs_without_spinning(
    fresh_redis: RedisServer, trap: LogTrap, flush: str
) -> None:
    """One worker process and one in-process worker (a cron job every 2 s), with jobs
    running, delayed and retrying, and the whole keyspace flushed. The old jobs are gone
    with their records; what matters is the fleet: new jobs (plain, delayed, retried) run,
    the cron ticks again, the idle fleet sends no more commands than before the flush, no
    traceback is logged once it serves again (no loop), and the worker process exits within
    its grace on SIGTERM."""
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        with procs(fresh_redis, backend.prefix, 1) as [proc]:
            inner = in_process(backend, cron=CRONS)
            async with running(backend, inner):
                await asyncio.sleep(3)  # start-up, leader election, first cron ticks
                baseline = await command_rate(admin, IDLE_WINDOW_S)

                busy = [await pool.enqueue(ops_sleep, 8) for _ in range(6)]
                later = [await pool.enqueue(ops_sleep.options(delay=30), 0) for _ in range(3)]
                flaky = [await pool.enqueue(ops_flaky, 30) for _ in range(3)]
                await until(lambda: all_in(pool, [j.id for j in busy], {"running"}), 20,
                            "the slow jobs run")
                await until(lambda: all_in(pool, [j.id for j in flaky + later],
                                           {"scheduled"}), 20, "the retries wait")

                await admin.execute_command(flush)

                fresh = [await pool.enqueue(ops_sleep, 0) for _ in range(5)]
                delayed = [await pool.enqueue(ops_sleep.options(delay=1), 0) for _ in range(2)]
                retried = [await pool.enqueue(ops_flaky, 0.5) for _ in range(2)]
                for job in fresh + delayed:
                    assert await job.result(timeout=30) == "slept"
                for job in retried:
                    assert await job.result(timeout=30) == 2
                ticks = await until(lambda: _ticked(pool), 20, "a cron tick after the flush")

                # the old jobs' attempts end (cancelled: their entries are gone) before the
                # idle count
                await until(lambda: _no_live(busy), 20, "the old attempts end")
                await asyncio.sleep(CLAIM_S)
                recovered, mark = time.time(), len(proc.output)
                after = await command_rate(admin, IDLE_WINDOW_S)
                figures(f"flush {flush}", baseline_cmds_s=baseline, after_cmds_s=after,
                        tick_after_s=ticks)
                assert after <= spin_bound(baseline), (baseline, after)

            exited = sigterm_and_wait(proc, GRACE_S + EXIT_SLACK_S)
        # no traceback loop: none once the fleet serves again (a missing group can cost one
        # "internal error" traceback of a loop as the flush hits it: see the report)
        assert tracebacks(proc.output[mark:]) == 0, proc.output[mark:][-4000:]
        assert trap.tracebacks_since(recovered) == []
        figures(f"flush {flush} exit", exit_s=exited,
                tracebacks_at_the_flush=tracebacks(proc.output) + len(trap.with_traceback))


async def _ticked(pool: asyncjobs.Pool) -> bool:
    return int(await pool.client.get(f"{pool.prefix}:opsticks") or 0) > 0


async def _no_live(jobs: list[Any]) -> bool:
    return all(LIVE[j.id] == 0 for j in jobs)


# -- 2. the stream and its consumer group damaged while jobs run ------------------------------


async def _damage_stream(admin: aredis.Redis, stream: str, how: str) -> None:
    if how == "XGROUP DESTROY":
        assert await admin.xgroup_destroy(stream, "asyncjobs")
    elif how == "DEL":
        assert await admin.delete(stream) == 1
    else:  # XTRIM MAXLEN 0: every entry goes, the group and its pending list stay
        assert await admin.xtrim(stream, maxlen=0, approximate=False) > 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["XGROUP DESTROY", "DEL", "XTRIM MAXLEN 0"])
async def test_later_jobs_run_and_the_reclaim_scan_does_not_spin_after_the_stream_is_damaged(
    fresh_redis: RedisServer, trap: LogTrap, how: str
) -> None:
    """The queue's group destroyed, its stream deleted or trimmed to nothing while jobs run
    and wait: jobs enqueued afterwards run, the worker (its reclaim scans, its waits) sends
    no more commands once idle than before, and it logs no traceback once it serves again
    (no loop)."""
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend, claim_timeout=2)):
            await asyncio.sleep(1)
            baseline = await command_rate(admin, IDLE_WINDOW_S)
            busy = [await pool.enqueue(ops_sleep, 2) for _ in range(3)]
            await until(lambda: all_in(pool, [j.id for j in busy], {"running"}), 10, "running")
            await _damage_stream(admin, pool.keys("default").stream, how)

            later = [await pool.enqueue(ops_sleep, 0) for _ in range(5)]
            for job in later:
                assert await job.result(timeout=15) == "slept"
            await until(lambda: _no_live(busy), 10, "the old attempts end")
            await asyncio.sleep(2)
            recovered = time.time()
            after = await command_rate(admin, IDLE_WINDOW_S)
        figures(f"stream {how}", baseline_cmds_s=baseline, after_cmds_s=after,
                tracebacks_at_the_fault=len(trap.with_traceback))
        assert after <= spin_bound(baseline), (baseline, after)
        assert trap.tracebacks_since(recovered) == []  # no traceback loop


@pytest.mark.timeout(60)
async def test_a_destroyed_group_does_not_make_a_worker_run_its_running_job_twice_at_once(
    fresh_redis: RedisServer, trap: LogTrap
) -> None:
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend)):
            job = await pool.enqueue(ops_sleep, 3)
            await until(lambda: _live(job.id), 10, "the job runs")
            assert await admin.xgroup_destroy(pool.keys("default").stream, "asyncjobs")
            other = await pool.enqueue(ops_sleep, 0)  # wakes the worker: it takes again
            assert await other.result(timeout=10) == "slept"
            assert await job.result(timeout=15) == "slept"
        figures("group destroyed", overlap=OVERLAP[job.id], runs=RUNS[job.id])
        assert OVERLAP[job.id] == 1, f"{OVERLAP[job.id]} attempts of one job ran at once"


async def _live(job_id: str) -> bool:
    return LIVE[job_id] > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["DEL", "XTRIM MAXLEN 0"])
async def test_a_running_job_whose_entry_is_deleted_still_ends_visibly(
    fresh_redis: RedisServer, how: str
) -> None:
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend, claim_timeout=2)):
            job = await pool.enqueue(ops_sleep, 2)
            await until(lambda: _live(job.id), 10, "the job runs")
            await _damage_stream(admin, pool.keys("default").stream, how)
            # its 2 s body, then the claim timeout twice over: any recovery has had its turn
            with contextlib.suppress(AssertionError):
                await until(lambda: _ended(pool, job.id), 2 + 3 * 2, "the job ends")
            state = (await states(pool, [job.id]))[job.id]
        figures(f"entry {how}", state=state, runs=RUNS[job.id])
        assert state not in ("running", "queued"), f"the job is stuck {state!r}"


async def _ended(pool: asyncjobs.Pool, job_id: str) -> bool:
    return (await states(pool, [job_id]))[job_id] not in ("running", "queued", "scheduled")


# -- 3. a job's record, the delayed set, the lease, the registry -----------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["DEL", "HSET garbage", "SET a string"])
async def test_a_running_jobs_record_deleted_or_overwritten_mid_run_ends_visibly(
    fresh_redis: RedisServer, trap: LogTrap, how: str
) -> None:
    """Its attempt ends, and the job with it: complete (the worker rebuilds the record from
    what it knows) or in the dead letters with the reason; the jobs beside it run."""
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend, claim_timeout=2)):
            victims = [await pool.enqueue(ops_sleep, 1.5) for _ in range(3)]
            await until(lambda: all_in(pool, [j.id for j in victims], {"running"}), 10,
                        "running")
            for job in victims:
                key = pool.keys("default").job(job.id)
                if how == "DEL":
                    await admin.delete(key)
                elif how == "HSET garbage":
                    await admin.hset(key, mapping={"s": "bogus", "a": "x", "e": "nope",
                                                   "j": b"\xc1\xff", "h": b"\xc1"})
                else:
                    await admin.delete(key)
                    await admin.set(key, "not a hash")
            beside = [await pool.enqueue(ops_sleep, 0) for _ in range(3)]
            for job in beside:
                assert await job.result(timeout=10) == "slept"
            await until(lambda: all_in(pool, [j.id for j in victims], {"complete", "failed"}),
                        1.5 + 3 * 2, "the damaged jobs end")
            found = await states(pool, [j.id for j in victims])
        figures(f"record {how}", states=",".join(sorted(found.values())),
                runs=max(RUNS[j.id] for j in victims))
        assert all(RUNS[j.id] == 1 for j in victims)
        assert trap.with_traceback == []


@pytest.mark.timeout(60)
async def test_delayed_jobs_still_run_after_the_delayed_set_is_deleted(
    fresh_redis: RedisServer
) -> None:
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend, claim_timeout=2, lease_ttl=1)):
            delayed = [await pool.enqueue(ops_sleep.options(delay=1.5), 0) for _ in range(2)]
            retried = [await pool.enqueue(ops_flaky, 1.5) for _ in range(2)]
            ids = [j.id for j in delayed + retried]
            await until(lambda: all_in(pool, ids, {"scheduled"}), 10, "they wait")
            assert await admin.delete(pool.keys("default").delayed) == 1
            later = await pool.enqueue(ops_sleep.options(delay=0.5), 0)
            assert await later.result(timeout=10) == "slept"
            with contextlib.suppress(AssertionError):
                await until(lambda: all_in(pool, ids, {"complete"}), 1.5 + 10, "they run")
            found = await states(pool, ids)
        figures("delayed set deleted", states=",".join(sorted(found.values())))
        assert "scheduled" not in found.values(), found


@pytest.mark.timeout(90)
async def test_the_delayed_set_made_a_string_then_restored(
    fresh_redis: RedisServer, trap: LogTrap
) -> None:
    """The delayed set's key SET to a string for 4 s (a script writing the wrong key), then
    restored from a DUMP: meanwhile the scripts refuse to write (one log line each, no
    traceback) and settles fail, so the jobs that finished then run again after the claim
    timeout (the README's documented refusal); once restored, every job ends complete, and
    the delayed jobs and retries run."""
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend, claim_timeout=2, lease_ttl=1)):
            busy = [await pool.enqueue(ops_sleep, 1) for _ in range(3)]
            delayed = [await pool.enqueue(ops_sleep.options(delay=2), 0) for _ in range(2)]
            retried = [await pool.enqueue(ops_flaky, 2) for _ in range(2)]
            ids = [j.id for j in busy + delayed + retried]
            await until(lambda: all_in(pool, [j.id for j in busy], {"running"}), 10, "run")
            await until(lambda: all_in(pool, [j.id for j in retried], {"scheduled"}), 10,
                        "the retries wait")
            key = pool.keys("default").delayed
            saved = await admin.dump(key)
            assert saved is not None
            await admin.delete(key)
            await admin.set(key, "oops")
            await asyncio.sleep(4)
            await admin.delete(key)
            await admin.restore(key, 0, saved)
            took = await until(lambda: all_in(pool, ids, {"complete"}), 30, "all complete")
        figures("delayed set as a string", settled_after_s=took,
                runs=",".join(str(RUNS[i]) for i in ids))
        assert trap.with_traceback == []
        refusals = [line for line in trap.lines(logging.ERROR) if "holds a string" in line
                    or "WRONGTYPE" in line]
        assert refusals, trap.lines(logging.ERROR)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["DEL", "SET another value", "a hash"])
async def test_the_leader_lease_deleted_or_overwritten_without_expiry(
    fresh_redis: RedisServer, trap: LogTrap, how: str
) -> None:
    """The lease taken back by a worker: delayed jobs keep running on time."""
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend, lease_ttl=1)):
            lease = pool.keys("default").leader
            await until(lambda: _exists(admin, lease), 10, "a leader")
            for _ in range(3):  # again and again, as a buggy script would
                # One transaction: between a DEL and a write of its own, a worker may take
                # the lease back (the HSET then met its string: WRONGTYPE, in one CI run).
                async with admin.pipeline(transaction=True) as tx:
                    tx.delete(lease)
                    if how == "SET another value":
                        tx.set(lease, "someone-else")
                    elif how == "a hash":
                        tx.hset(lease, "holder", "someone-else")
                    await tx.execute()
                job = await pool.enqueue(ops_sleep.options(delay=0.3), 0)
                assert await job.result(timeout=10) == "slept"
        assert trap.with_traceback == []


async def _exists(client: aredis.Redis, key: str) -> bool:
    return bool(await client.exists(key))


@pytest.mark.timeout(60)
async def test_a_stray_lease_with_a_long_expiry_does_not_stall_delayed_jobs(
    fresh_redis: RedisServer
) -> None:
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend, lease_ttl=1)):
            lease = pool.keys("default").leader
            await until(lambda: _exists(admin, lease), 10, "a leader")
            await admin.set(lease, "stray-script-value", ex=3600)
            await asyncio.sleep(2)  # past the leader's lease (1 s): it has seen it lost
            job = await pool.enqueue(ops_sleep.options(delay=0.3), 0)
            with contextlib.suppress(asyncjobs.ResultTimeout):
                await job.result(timeout=15)
            state = (await states(pool, [job.id]))[job.id]
        figures("stray lease", state=state)
        assert state == "complete", f"a delayed job due 0.3 s later is {state!r} after 15 s"


@pytest.mark.timeout(60)
async def test_the_worker_registry_deleted(fresh_redis: RedisServer, trap: LogTrap) -> None:
    """The registry and the heartbeat keys deleted: the worker is listed again at its next
    heartbeat (every 5 s) and keeps running jobs."""
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        async with running(backend, in_process(backend)) as inner:
            await until(lambda: _listed(pool, inner.name), 10, "listed")
            keys = [k async for k in admin.scan_iter(f"{backend.prefix}:worker*")]
            assert len(keys) >= 2
            await admin.delete(*keys)
            assert not await _listed(pool, inner.name)
            job = await pool.enqueue(ops_sleep, 0)
            assert await job.result(timeout=10) == "slept"
            took = await until(lambda: _listed(pool, inner.name), 5 + 5, "listed again")
        figures("registry deleted", listed_again_s=took)
        assert trap.with_traceback == []


async def _listed(pool: asyncjobs.Pool, name: str) -> bool:
    return name in [w.name for w in await pool.admin.workers()]


# -- 4. CLIENT KILL, again and again, under load ----------------------------------------------


@pytest.mark.long
@pytest.mark.timeout(180)
async def test_client_kill_every_200_ms_for_5_s_loses_nothing_and_duplicates_nothing(
    fresh_redis: RedisServer, trap: LogTrap
) -> None:
    """2,000 jobs on two worker processes and one in-process worker while every normal
    connection (the workers', their blocking reads', the producer's) is killed every 200 ms
    for 5 s: every job ends complete, none stays running or queued, and a job runs more
    than once only as the README allows (its worker could not record it: a lost reply
    is retried once on a fresh connection, so a second run needs two kills in a row on one
    worker, far fewer than the jobs in flight at the kills); the workers log the outage
    once and no traceback, and exit within their grace on SIGTERM."""
    backend = backend_on(fresh_redis)
    jobs_n, concurrency = 2000, 20
    async with admin_client(fresh_redis) as admin, backend.pool() as pool:
        with procs(fresh_redis, backend.prefix, 2, TEST_CONCURRENCY=str(concurrency)) as fleet:
            async with running(backend, in_process(backend, concurrency=concurrency)):
                jobs = await pool.enqueue_many(
                    [asyncjobs.call(ops_sleep, 0.02) for _ in range(jobs_n)])
                ids = [j.id for j in jobs]
                began = time.monotonic()
                kills = rounds = 0
                while time.monotonic() - began < 5:
                    kills += await admin.client_kill_filter(_type="normal", skipme=True)
                    rounds += 1
                    await asyncio.sleep(0.2)
                await until(lambda: all_in(pool, ids, {"complete"}), 90, "every job complete",
                            every_s=LOAD_POLL_S)
                done_s = time.monotonic() - began
                runs = await runs_in_redis(pool, ids)
                later = await pool.enqueue(ops_sleep, 0)
                assert await later.result(timeout=15) == "slept"
            exits = [sigterm_and_wait(proc, GRACE_S + EXIT_SLACK_S) for proc in fleet]
        twice = {i: n for i, n in runs.items() if n > 1}
        figures("client kill storm", kill_rounds=rounds, killed=kills,
                done_after_s=done_s, ran_twice=len(twice),
                most_runs=max(runs.values()), exit_s=max(exits))
        assert min(runs.values()) >= 1
        assert len(twice) <= 3 * concurrency, twice
        for proc in fleet:
            assert tracebacks(proc.output) == 0, proc.output[-4000:]
        assert trap.with_traceback == []


# -- 5 and 6. a paused, sleeping, busy, script-less or full Redis mid-load -------------------


async def _fault(admin: aredis.Redis, server: RedisServer, pool: asyncjobs.Pool, kind: str
                 ) -> list[Any]:
    """Do one fault to Redis mid-load; returns the jobs enqueued during it (maxmemory)."""
    blocking = redis.Redis.from_url(server.url, socket_timeout=60)
    if kind in ("CLIENT PAUSE 3000 WRITE", "CLIENT PAUSE 3000 ALL"):
        await admin.execute_command(*kind.split())
        await asyncio.sleep(3)
    elif kind == "DEBUG SLEEP 2":
        in_thread(lambda: blocking.execute_command("DEBUG", "SLEEP", 2)).join(30)
    elif kind == "SCRIPT FLUSH":
        for _ in range(5):
            await admin.script_flush()
            await asyncio.sleep(0.3)
    elif kind == "maxmemory":
        used = int((await admin.info("memory"))["used_memory"])
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", used + 200_000)
        more: list[Any] = []
        for _ in range(5000):
            try:
                more.append(await pool.enqueue(ops_sleep, 0))
            except asyncjobs.RedisFull:
                break
        else:
            raise AssertionError("Redis never got full")
        await asyncio.sleep(2)
        await admin.config_set("maxmemory", 0)
        return more
    elif kind == "BUSY":
        await admin.config_set("lua-time-limit", 50)
        try:
            in_thread(lambda: blocking.eval(SLOW_SCRIPT, 0, 3)).join(30)
        finally:
            await admin.config_set("lua-time-limit", 5000)
    else:
        raise AssertionError(kind)
    blocking.close()
    return []


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", ["CLIENT PAUSE 3000 WRITE", "CLIENT PAUSE 3000 ALL",
                                  "DEBUG SLEEP 2", "SCRIPT FLUSH", "maxmemory", "BUSY"])
async def test_redis_paused_slow_busy_scriptless_or_full_mid_load(
    debug_redis: RedisServer, trap: LogTrap, kind: str
) -> None:
    """1,500 jobs on a worker process and an in-process worker, the fault done mid-load:
    every job (those accepted while Redis was full included) ends complete, none left
    running or queued, each run once; a job enqueued afterwards runs; no traceback. The
    claim timeout is the default's (15 s): the faults last far less than its third (see
    the next test for a stall longer than that)."""
    claim_s = 15.0
    backend = backend_on(debug_redis)
    async with admin_client(debug_redis) as admin, backend.pool() as pool:
        with procs(debug_redis, backend.prefix, 1, TEST_CONCURRENCY="20",
                   TEST_CLAIM_TIMEOUT=f"{claim_s:g}") as [proc]:
            async with running(backend, in_process(backend, concurrency=20,
                                                   claim_timeout=claim_s)):
                jobs = await pool.enqueue_many(
                    [asyncjobs.call(ops_sleep, 0.1) for _ in range(1500)])
                await until(lambda: _started_some(pool, jobs[:100]), 10, "the load runs")
                jobs += await _fault(admin, debug_redis, pool, kind)
                ids = [j.id for j in jobs]
                pending = len([s for s in (await states(pool, ids)).values()
                               if s != "complete"])
                took = await until(lambda: all_in(pool, ids, {"complete"}), 60,
                                   "every job complete", every_s=LOAD_POLL_S)
                recovered, mark = time.time(), len(proc.output)
                runs = await runs_in_redis(pool, ids)
                later = await pool.enqueue(ops_sleep, 0)
                assert await later.result(timeout=15) == "slept"
                await asyncio.sleep(3)  # a loop that logs a traceback again would, by now
            exited = sigterm_and_wait(proc, GRACE_S + EXIT_SLACK_S)
        twice = {i: n for i, n in runs.items() if n != 1}
        figures(f"fault {kind}", jobs=len(ids), left_after_fault=pending, done_after_s=took,
                not_once=len(twice), exit_s=exited,
                tracebacks_in_the_fault=tracebacks(proc.output) + len(trap.with_traceback))
        assert twice == {}
        # no traceback loop once Redis is back (a full Redis logs some meanwhile: see
        # test_a_full_redis_is_an_outage_to_the_scheduler_not_an_internal_error)
        assert tracebacks(proc.output[mark:]) == 0, proc.output[mark:][-4000:]
        assert trap.tracebacks_since(recovered) == []


async def _started_some(pool: asyncjobs.Pool, jobs: list[Any]) -> bool:
    return "complete" in (await states(pool, [j.id for j in jobs])).values()


@pytest.mark.timeout(60)
async def test_a_full_redis_is_an_outage_to_the_scheduler_not_an_internal_error(
    fresh_redis: RedisServer, trap: LogTrap
) -> None:
    """Two workers: the leader keeps its lease (PEXPIRE is allowed on a full Redis), the
    other one's tries to take it (SET NX) are refused with OOM."""
    backend = backend_on(fresh_redis)
    async with admin_client(fresh_redis) as admin, backend.pool() as pool, \
            running(backend, in_process(backend, lease_ttl=1)), \
            running(backend, in_process(backend, lease_ttl=1)):
        job = await pool.enqueue(ops_sleep.options(delay=4), 0)
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)  # full: every write is refused
        try:
            await asyncio.sleep(6)
        finally:
            await admin.config_set("maxmemory", 0)
        assert await job.result(timeout=15) == "slept"  # it still runs, once Redis has room
    figures("full redis", tracebacks=len(trap.with_traceback))
    assert trap.with_traceback == [], trap.with_traceback


STALL_CLAIM_S = 4.0
STALL_MS = 2500
STALLS = 4


@pytest.mark.long
@pytest.mark.timeout(90)
async def test_a_stalled_redis_does_not_hand_a_live_workers_jobs_to_another(
    debug_redis: RedisServer
) -> None:
    """The load of the previous test (a worker process and an in-process worker, 3,000 jobs
    of 0.1 s) with a claim timeout C of 4 s, and Redis stalled (DEBUG SLEEP) four times for
    2.5 s, under C: both workers refresh their entries every C/6, so no live worker's entry
    is idle C/2 while Redis answers. Killed connections for longer than that duplicate
    nothing (the CLIENT KILL storm above); a stall must not either."""
    backend = backend_on(debug_redis)
    blocking = redis.Redis.from_url(debug_redis.url, socket_timeout=60)
    async with backend.pool() as pool:
        with procs(debug_redis, backend.prefix, 1, TEST_CONCURRENCY="20",
                   TEST_CLAIM_TIMEOUT=f"{STALL_CLAIM_S:g}") as [proc]:
            async with running(backend, in_process(backend, concurrency=20,
                                                   claim_timeout=STALL_CLAIM_S)):
                jobs = await pool.enqueue_many(
                    [asyncjobs.call(ops_sleep, 0.1) for _ in range(3000)])
                ids = [j.id for j in jobs]
                await until(lambda: _started_some(pool, jobs[:100]), 10, "the load runs")
                for _ in range(STALLS):
                    await asyncio.to_thread(blocking.execute_command, "DEBUG", "SLEEP",
                                            STALL_MS / 1000)
                    await asyncio.sleep(1)
                await until(lambda: all_in(pool, ids, {"complete"}), 60, "all complete",
                            every_s=LOAD_POLL_S)
                runs = await runs_in_redis(pool, ids)
        output = proc.output
    blocking.close()
    twice = {i: n for i, n in runs.items() if n > 1}
    figures("stalls", ran_twice=len(twice))
    assert twice == {}, (f"{len(twice)} jobs ran twice; the worker process said:\n"
                         + "\n".join(line for line in output.splitlines()
                                     if "reclaimed" in line)[:1500])


# -- SIGTERM while Redis is busy or paused ----------------------------------------------------

SHORT_GRACE_S = 2.0
SHUTDOWN_BOUND_S = SHORT_GRACE_S + AFTER_GRACE_S + EXIT_SLACK_S
"""The shutdown's bound with Redis not answering (asyncjobs/_worker/shutdown.py): the grace,
then at most AFTER_GRACE_S (the cancelled jobs' wait, the last settles and the hand-back,
the connections' close), and the slack of a process's start and exit."""


async def _slow_job_running(server: RedisServer, prefix: str, seconds: float
                            ) -> tuple[str, redis.Redis]:
    """Enqueue one ops_sleep job and wait until its body runs (its attempt is marked);
    returns its id and a (blocking) admin client."""
    async with asyncjobs.create_pool(server.url, prefix=prefix) as pool:
        job = await pool.enqueue(ops_sleep, seconds)
        await until(lambda: _marked(pool, job.id), 15, "the job runs")
    return job.id, redis.Redis.from_url(server.url, socket_timeout=60)


async def _exit_within(proc: WorkerProcess, bound_s: float) -> tuple[int | None, float]:
    """SIGTERM, then wait for the exit; (exit code or None if still running, seconds)."""
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    try:
        code: int | None = await asyncio.to_thread(proc.wait, bound_s)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - began


async def _marked(pool: asyncjobs.Pool, job_id: str) -> bool:
    return bool(await pool.client.scard(f"{pool.prefix}:opsruns:{job_id}"))


@pytest.mark.timeout(90)
async def test_sigterm_while_redis_is_busy_drains_and_exits_cleanly(
    fresh_redis: RedisServer
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    with procs(fresh_redis, prefix, 1, TEST_GRACE=f"{SHORT_GRACE_S:g}") as [proc]:
        _, admin = await _slow_job_running(fresh_redis, prefix, 30)
        admin.config_set("lua-time-limit", 50)
        script = in_thread(lambda: redis.Redis.from_url(
            fresh_redis.url, socket_timeout=60).eval(SLOW_SCRIPT, 0, 20))
        try:
            await asyncio.sleep(0.5)  # the script runs: other commands are answered BUSY
            assert "BUSY" in str(_refusal(admin))
            code, took = await _exit_within(proc, SHUTDOWN_BOUND_S)
        finally:
            for _ in range(50):
                try:
                    admin.script_kill()
                    break
                except RedisError:
                    await asyncio.sleep(0.1)
            await asyncio.to_thread(script.join, 30)
            admin.config_set("lua-time-limit", 5000)
            admin.close()
        output = proc.output
    figures("sigterm while busy", exit_code=str(code), exit_s=took)
    assert code == 0, f"exit code {code}:\n{output[-2500:]}"
    assert tracebacks(output) == 0, output[-2500:]
    assert "reason=shutdown" in output  # the grace ran out: the shutdown cancelled the job


def _refusal(client: redis.Redis) -> object:
    try:
        return client.ping()
    except RedisError as exc:
        return exc


@pytest.mark.long
@pytest.mark.timeout(120)
async def test_sigterm_while_redis_is_paused_keeps_to_the_grace_period(
    fresh_redis: RedisServer
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    with procs(fresh_redis, prefix, 1, TEST_GRACE=f"{SHORT_GRACE_S:g}") as [proc]:
        job_id, admin = await _slow_job_running(fresh_redis, prefix, 12)
        admin.execute_command("CLIENT", "PAUSE", 25_000, "ALL")
        await asyncio.sleep(0.5)
        code, took = await _exit_within(proc, SHUTDOWN_BOUND_S)
        # The pause outlasts the bound, so Redis never answers the stopping worker. Nothing
        # reads Redis after the exit, and CLIENT UNPAUSE would itself wait out an ALL pause
        # (Redis 7.0: ~18 s more here), so the server is stopped instead (SIGTERM ends it
        # at once, paused or not).
        admin.close()
        fresh_redis.stop()
        output = proc.output
    stopping = re.search(r"(\d\d:\d\d:\d\d,\d{3}) .*stopping: ", output)
    figures("sigterm while paused", exit_code=str(code), exit_s=took,
            drain_began=stopping[1] if stopping else "never")
    assert code == 0, f"exit code {code}:\n{output[-2500:]}"
    # (the worker's cron job, every 2 s, may complete a tick before the pause: not this one)
    assert f"job complete id={job_id}" not in output, (
        f"a 12 s job ran to its end on a worker with a 2 s grace:\n{output[-2500:]}")
    assert f"job interrupted id={job_id}" in output and "reason=shutdown" in output
