"""The settler through dropped connections (``asyncjobs/_worker/settler.py``).

Real Redis answers a value over its ``proto-max-bulk-len`` with a protocol error before it
drops the connection, so the path where a settle only ever loses its connection is driven
here by a wrapper around ``scripts.run_each_pipelined`` (what the settler sends its calls
through): for chosen settle calls it raises what redis-py raises, before or after the real
call ran. Everything else is real: a worker on a redis-server of the suite's own.

- A transient drop (one failed round trip, then success) records every outcome once: a
  call that ran but whose reply was lost is not reported as jobs lost to another worker.
- An op that loses the connection every time it is sent (a result over 1 MiB, as Redis
  does for a value over its limit) is sent on its own after its first failure, and after
  ``DROPS`` such drops (Redis answering a PING after each) is replaced by its job's
  failure, with the reason; the other jobs of its batch are recorded as usual; the
  attempts are bounded and each failed round is followed by a back-off.
- A pool with no connection free sent nothing: it is no drop, however often it happens;
  the job's result is recorded once a connection is free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._redis import scripts
from asyncjobs._redis.connection import pool_exhausted
from asyncjobs._redis.keys import GROUP
from asyncjobs._worker import settler as settler_module
from asyncjobs._worker.outcomes import SMALLEST_BULK

from .conftest import Backend, running

pytestmark = pytest.mark.asyncio

BIG = 2 * 1024 * 1024
"""A result over the 1 MiB every Redis takes (and far under the test server's limit)."""
SMALL_JOBS = 6
RUNAWAY = 50
"""Settle round trips past which the settler is taken to spin (the tests need 8 at most):
the test then stops the worker and fails, rather than wait for its deadline."""
RUNS: dict[Any, int] = {}
TOGETHER: dict[str, Any] = {}


async def _finish_together() -> None:
    """Hold each job until all of them run, so that they end in the same moment (and
    their outcomes reach the settler in one batch, as far as the event loop allows)."""
    TOGETHER["arrived"] += 1
    if TOGETHER["arrived"] >= TOGETHER["expected"]:
        TOGETHER["all_in"].set()
    try:
        async with asyncio.timeout(10):
            await TOGETHER["all_in"].wait()
    except TimeoutError:  # (not a failure in itself: the assertions tell)
        pass


@asyncjobs.task(max_tries=1)
async def small(ctx: Context, i: int) -> int:
    RUNS[i] = RUNS.get(i, 0) + 1
    await _finish_together()
    return i


@asyncjobs.task(max_tries=1)
async def big(ctx: Context, size: int) -> bytes:
    RUNS["big"] = RUNS.get("big", 0) + 1
    await _finish_together()
    return b"x" * size


@dataclass
class Settles:
    """Every settle round trip the settler sent: per call, its ops as (job id, outcome,
    largest value); and what the wrapper did with it."""

    sent: list[list[list[tuple[str, str, int]]]] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)
    runaway: asyncio.Event = field(default_factory=asyncio.Event)
    """Set past ``RUNAWAY`` round trips: the settler does not stop sending."""

    def calls_carrying_big(self) -> list[list[tuple[str, str, int]]]:
        return [call for trip in self.sent for call in trip
                if any(size > SMALLEST_BULK for _, _, size in call)]

    def calls_with(self, job_id: str) -> list[list[tuple[str, str, int]]]:
        return [call for trip in self.sent for call in trip
                if any(j == job_id for j, _, _ in call)]


def _ops(call: scripts.Call) -> list[tuple[str, str, int]]:
    """A settle call's ops (settle.lua: 10 leading arguments, then 7 per op)."""
    args = call[2][10:]
    ops = []
    for at in range(0, len(args), 7):
        entry, job_id, outcome, payload, _number, history, lease = args[at:at + 7]
        size = max(len(v) if isinstance(v, bytes | str) else 0
                   for v in (entry, job_id, payload, history, lease))
        ops.append((str(job_id), str(outcome), size))
    return ops


Policy = Callable[[list[list[tuple[str, str, int]]]], Awaitable[BaseException | None]]
"""Given a round trip's settle calls: the error to raise instead of sending it (None: send)."""


def wrap_settles(monkeypatch: pytest.MonkeyPatch, policy: Policy,
                 after_sending: bool = False) -> Settles:
    """Put ``policy`` between the settler and Redis. ``after_sending``: the failing round
    trip is sent first (it runs in Redis), and only its reply is lost."""
    real = scripts.run_each_pipelined
    settle = scripts.load(scripts.SETTLE)
    seen = Settles()

    async def run_each_pipelined(client: Any, calls: Sequence[scripts.Call]) -> list[Any]:
        if not any(call[0] is settle for call in calls):
            return await real(client, calls)
        trip = [_ops(call) for call in calls]
        seen.sent.append(trip)
        if len(seen.sent) > RUNAWAY:
            seen.runaway.set()
        error = await policy(trip)
        seen.failed.append(error is not None)
        if error is None:
            return await real(client, calls)
        if after_sending:
            await real(client, calls)
        raise error

    monkeypatch.setattr(scripts, "run_each_pipelined", run_each_pipelined)
    return seen


class _Asyncio:
    """The settler's ``asyncio``, with a ``sleep`` (its back-off: the only sleep it takes)
    that records the delay asked and only yields."""

    def __init__(self) -> None:
        self.backoffs: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.backoffs.append(delay)
        await asyncio.sleep(0)
        return result


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    fake = _Asyncio()
    monkeypatch.setattr(settler_module, "asyncio", fake)
    return fake.backoffs


async def _run(real: Backend, pool: asyncjobs.Pool, seen: Settles
               ) -> tuple[list[asyncjobs.Job[Any]], asyncjobs.Job[Any]]:
    """Enqueue the small jobs and the big one, run a burst worker until every job ended
    (or the settler is found spinning: then stop it, and fail)."""
    RUNS.clear()
    TOGETHER.clear()
    TOGETHER.update(arrived=0, expected=SMALL_JOBS + 1, all_in=asyncio.Event())
    smalls = await pool.enqueue_many([asyncjobs.call(small, i) for i in range(SMALL_JOBS)])
    big_job = await pool.enqueue(big, BIG)
    worker = real.worker([small, big], concurrency=20, claim_timeout=2, burst=True,
                         shutdown_grace=1)
    run = asyncio.create_task(real.run(worker))
    spinning = asyncio.create_task(seen.runaway.wait())
    await asyncio.wait([run, spinning], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    spinning.cancel()
    if not run.done():
        worker.stop()
        await asyncio.wait_for(run, 30)
        pytest.fail(f"the burst worker did not end: {len(seen.sent)} settle round trips")
    await run
    return smalls, big_job


async def _check_smalls(smalls: list[asyncjobs.Job[Any]]) -> None:
    for i, job in enumerate(smalls):
        info = await job.info()
        assert info.state is JobState.COMPLETE and info.attempts == 1, info
        assert await job.result(timeout=1) == i
        assert RUNS[i] == 1, RUNS


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def drop_big(trip: list[list[tuple[str, str, int]]]) -> BaseException | None:
    """Drop every round trip that carries a value over the smallest bulk limit."""
    if any(size > SMALLEST_BULK for call in trip for _, _, size in call):
        return RedisConnectionError("Connection closed by server.")
    return None


@pytest.mark.parametrize("after_sending", [False, True], ids=["before_sending", "reply_lost"])
async def test_a_transient_drop_records_every_outcome_once(
        real: Backend, monkeypatch: pytest.MonkeyPatch, backoffs: list[float],
        caplog: pytest.LogCaptureFixture, after_sending: bool) -> None:
    """The first settle round trip loses its connection (before it was sent, or after it
    ran in Redis); the next ones go through. Every job is recorded as it ended, each body
    ran once, no job is reported lost to another worker, none is left pending."""
    caplog.set_level(logging.INFO, logger="asyncjobs.worker")
    dropped: list[int] = []

    async def once(trip: list[list[tuple[str, str, int]]]) -> BaseException | None:
        if dropped:
            return None
        dropped.append(sum(map(len, trip)))
        return RedisConnectionError("Connection closed by server.")

    seen = wrap_settles(monkeypatch, once, after_sending)
    async with real.pool() as pool:
        smalls, big_job = await _run(real, pool, seen)
        await _check_transient(pool, seen, smalls, big_job, backoffs, caplog, dropped,
                               after_sending)


async def _check_transient(pool: asyncjobs.Pool, seen: Settles,
                           smalls: list[asyncjobs.Job[Any]], big_job: asyncjobs.Job[Any],
                           backoffs: list[float], caplog: pytest.LogCaptureFixture,
                           dropped: list[int], after_sending: bool) -> None:
    assert seen.failed.count(True) == 1, seen.failed
    assert dropped == [1 + SMALL_JOBS], dropped  # (the batch of every job)
    await _check_smalls(smalls)
    info = await big_job.info()
    assert info.state is JobState.COMPLETE and info.attempts == 1, info
    assert await big_job.result(timeout=1) == b"x" * BIG
    assert RUNS["big"] == 1
    # One failed round, one back-off; a single drop costs the big result nothing.
    assert len(backoffs) == 1 and backoffs[0] > 0, backoffs
    assert not _messages(caplog, "job lost"), "a resent op was reported lost"
    assert not _messages(caplog, "stay pending")
    assert not _messages(caplog, "dead-lettered")
    recorded_late = _messages(caplog, "recorded by a settle whose reply was lost")
    # Sent again after a round trip that ran: each of its ops answered 0 (already settled)
    # and is taken as recorded; before sending, the second send records them for real.
    assert len(recorded_late) == (dropped[0] if after_sending else 0), recorded_late
    pending = await pool.client.xpending(pool.keys("default").stream, GROUP)
    assert pending["pending"] == 0, pending


async def test_an_op_that_drops_the_connection_every_time_fails_its_job_alone(
        real: Backend, monkeypatch: pytest.MonkeyPatch, backoffs: list[float],
        caplog: pytest.LogCaptureFixture) -> None:
    """Every round trip carrying the 2 MiB result loses its connection (Redis answers a
    PING all along). The small jobs finished with it are recorded; the big op is sent on
    its own after its first failure, is dropped ``DROPS`` times on its own, then replaced
    by its job's failure (dead-lettered with the reason, its result dropped), which is
    recorded. Bounded: 1 + DROPS sends of the op, a back-off after each failed round."""
    caplog.set_level(logging.INFO, logger="asyncjobs.worker")

    seen = wrap_settles(monkeypatch, drop_big)
    async with real.pool() as pool:
        smalls, big_job = await _run(real, pool, seen)
        await _check_smalls(smalls)
        info = await big_job.info()
        letters = await pool.client.xlen(pool.keys("default").dead)
        pending = await pool.client.xpending(pool.keys("default").stream, GROUP)

    assert pending["pending"] == 0, pending
    assert letters == 1
    assert info.state is JobState.FAILED, info
    reason = info.dead_letter_reason or ""
    assert reason.startswith("the result is larger than Redis takes: 2,097,"), reason
    assert (f"Redis dropped the connection each of the {settler_module.DROPS} times it "
            "was sent") in reason, reason
    assert RUNS["big"] == 1  # recorded, not left pending to run again

    carrying = seen.calls_carrying_big()
    # the first send in a call of the batch (the others in it recorded later), then
    # DROPS sends on its own; then the failure standing in for it, recorded
    assert len(carrying) == 1 + settler_module.DROPS, [len(c) for c in carrying]
    assert all(len(call) == 1 for call in carrying[1:]), [len(c) for c in carrying]
    ours = seen.calls_with(big_job.id)
    assert len(ours) == len(carrying) + 1
    assert [(outcome, size <= SMALLEST_BULK) for _, outcome, size in ours[-1]] == [
        ("failed", True)]
    # Each failed round was followed by a back-off; the replacement went at once.
    assert len(carrying[0]) == 1 + SMALL_JOBS, carrying[0]  # (the batch of every job)
    assert len(backoffs) == settler_module.DROPS, backoffs
    assert all(delay > 0 for delay in backoffs), backoffs
    assert not _messages(caplog, "stay pending")
    assert not _messages(caplog, "job lost")
    dead = _messages(caplog, "job dead-lettered")
    assert len(dead) == 1 and big_job.id in dead[0], dead


async def _exhausted(url: str, blocking: bool) -> BaseException:
    """What redis-py raises when a pool has no connection free: the worker's own kind of
    pool (a ``BlockingConnectionPool``, after its timeout), or a plain ``ConnectionPool``
    (``MaxConnectionsError``). Both are ``ConnectionError``s, as a dropped connection is."""
    pool: ConnectionPool = (BlockingConnectionPool.from_url(url, max_connections=1,
                                                            timeout=0.01)
                            if blocking else ConnectionPool.from_url(url, max_connections=1))
    held = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await pool.get_connection()  # type: ignore[no-untyped-call]
    except RedisConnectionError as exc:
        return exc
    finally:
        await pool.release(held)
        await pool.disconnect()
    raise AssertionError("the pool had a second connection")


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking_pool", "max_connections"])
async def test_a_pool_with_no_connection_free_is_no_drop(
        real: Backend, monkeypatch: pytest.MonkeyPatch, backoffs: list[float],
        caplog: pytest.LogCaptureFixture, blocking: bool) -> None:
    """Every round trip carrying the 2 MiB result finds the pool full, more times than
    ``DROPS``, then a connection is free: nothing was sent, so none of these counts as a
    dropped connection, and the job's result is recorded, not replaced by a failure."""
    assert real.url is not None
    sample = await _exhausted(real.url, blocking)
    assert isinstance(sample, RedisConnectionError) and pool_exhausted(sample), sample
    full = settler_module.DROPS + 2
    refused: list[BaseException] = []

    async def full_pool(trip: list[list[tuple[str, str, int]]]) -> BaseException | None:
        if len(refused) < full and any(size > SMALLEST_BULK for call in trip
                                       for _, _, size in call):
            assert real.url is not None
            refused.append(await _exhausted(real.url, blocking))
            return refused[-1]
        return None

    seen = wrap_settles(monkeypatch, full_pool)
    async with real.pool() as pool:
        smalls, big_job = await _run(real, pool, seen)
        await _check_smalls(smalls)
        info = await big_job.info()
        result = await big_job.result(timeout=1)
        letters = await pool.client.xlen(pool.keys("default").dead)

    assert len(refused) == full, refused
    assert all(pool_exhausted(exc) for exc in refused), refused
    assert info.state is JobState.COMPLETE and info.attempts == 1, info
    assert result == b"x" * BIG and RUNS["big"] == 1
    assert letters == 0
    carrying = seen.calls_carrying_big()
    assert len(carrying) == full + 1  # each refusal, then the send that went through
    # the same op each time (its result: 'keep' or 'complete'), never its failure
    outcomes = {op[1] for call in seen.calls_with(big_job.id) for op in call
                if op[0] == big_job.id}
    assert len(outcomes) == 1 and outcomes <= {"keep", "complete"}, outcomes
    assert len(backoffs) == full and all(delay > 0 for delay in backoffs), backoffs
    # told as a full pool, not as Redis being unavailable
    assert len(_messages(caplog, "connection pool exhausted (settle)")) == full
    assert not _messages(caplog, "redis unavailable")
    assert not _messages(caplog, "dead-lettered")
    assert not _messages(caplog, "job lost")


async def test_an_op_whose_failure_drops_the_connection_too_is_given_up(
        real: Backend, monkeypatch: pytest.MonkeyPatch, backoffs: list[float],
        caplog: pytest.LogCaptureFixture) -> None:
    """An entry written by hand with a 2 MiB job id (no record: it is dead-lettered as
    garbage) carries that id in its op and in the failure that replaces it: both lose the
    connection every time. After ``DROPS`` drops of the op and ``DROPS`` of its
    replacement, the settler gives it up (logged; the entry stays pending, to be taken
    again after the claim timeout, per at-least-once) instead of sending it for ever; the
    jobs beside it are recorded."""
    caplog.set_level(logging.INFO, logger="asyncjobs.worker")

    seen = wrap_settles(monkeypatch, drop_big)
    RUNS.clear()
    TOGETHER.clear()
    TOGETHER.update(arrived=0, expected=SMALL_JOBS, all_in=asyncio.Event())
    huge_id = "h" * BIG
    async with real.pool() as pool:
        stream = pool.keys("default").stream
        smalls = await pool.enqueue_many([asyncjobs.call(small, i) for i in range(SMALL_JOBS)])
        await pool.client.xadd(stream, {"i": huge_id})
        worker = real.worker([small, big], concurrency=20, claim_timeout=60,
                             shutdown_grace=1)
        async with running(real, worker):
            for job in smalls:
                await job.result(timeout=20)
            async with asyncio.timeout(20):  # bounded poll for the give-up
                while not _messages(caplog, "could not record"):
                    assert not seen.runaway.is_set(), "the settler does not stop sending"
                    await asyncio.sleep(0.02)
            pending = await pool.client.xpending_range(stream, GROUP, "-", "+", 10)
            letters = await pool.client.xlen(pool.keys("default").dead)
            carrying = seen.calls_carrying_big()
            given_up = _messages(caplog, "could not record")
        await _check_smalls(smalls)

    assert len(pending) == 1 and pending[0]["times_delivered"] == 1, pending
    assert letters == 0
    assert len(given_up) == 1 and "1 finished jobs; they stay pending" in given_up[0]
    drops = settler_module.DROPS
    assert len(carrying) == 1 + 2 * drops, [len(c) for c in carrying]
    outcomes = [op[1] for call in carrying for op in call if len(op[0]) == BIG]
    assert outcomes == ["garbage"] * len(carrying)
    # the op itself (its reason quotes the id: larger), then the failure replacing it
    # (its own reason, short: the id is its largest value)
    sizes = [op[2] for call in carrying for op in call if len(op[0]) == BIG]
    assert len(set(sizes[:1 + drops])) == 1 and sizes[0] > BIG, sizes
    assert sizes[1 + drops:] == [BIG] * drops, sizes
    replaced = [r.getMessage() for r in caplog.records
                if "Redis dropped the connection each of" in r.getMessage()]
    assert len(replaced) == 1, len(replaced)
    # a back-off after every failed round but the one that replaced the op
    assert len(backoffs) == 2 * drops, backoffs
