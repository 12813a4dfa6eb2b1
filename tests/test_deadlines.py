"""The hard timeouts of running attempts on one loop timer (``asyncjobs/_worker/deadlines.py``):
each attempt expires once, at its own deadline, in deadline order, whatever order they
were added in and whichever were discarded; a failing expiry does not skip the others;
nothing stays on the loop once no attempt is tracked. Driven by a loop whose clock and
timers the test moves by hand (no sleeps), then once on a real event loop with the worker.

Regression: a timer per attempt (``loop.call_later``) cost ~2 µs a job in the event loop."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import JobState
from asyncjobs._codec import encode_spec
from asyncjobs._model import JobSpec
from asyncjobs._redis import kept
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.values import Delivery, NewJob
from asyncjobs._worker.attempt import Running
from asyncjobs._worker.deadlines import CLOCK_SLACK_S, Deadlines

from .conftest import Backend

ROOT = Path(__file__).resolve().parent.parent


class Handle:
    def __init__(self, loop: HandLoop, when: float, callback: Callable[[], None]) -> None:
        self.loop, self.when, self.callback, self.cancelled = loop, when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class HandLoop:
    """``time()`` and ``call_at()``, moved by ``advance``; a timer may be made to run
    ``early`` seconds before its time, as a millisecond loop clock may."""

    def __init__(self, early: float = 0.0) -> None:
        self.now = 0.0
        self.early = early
        self._timers: list[tuple[float, int, Handle]] = []
        self._seq = itertools.count()
        self.fired = 0
        self._soon: list[Handle] = []
        self.armed_count = 0

    def time(self) -> float:
        return self.now

    def is_closed(self) -> bool:
        return False

    def call_at(self, when: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(self, when, callback)
        self.armed_count += 1
        heapq.heappush(self._timers, (when, next(self._seq), handle))
        return handle

    def call_soon(self, callback: Callable[[], None]) -> Handle:
        handle = Handle(self, self.now, callback)
        self._soon.append(handle)
        return handle

    def turn(self) -> None:
        """Run what ``call_soon`` scheduled (the end of this loop iteration)."""
        soon, self._soon = self._soon, []
        for handle in soon:
            if not handle.cancelled:
                handle.callback()

    @property
    def pending(self) -> int:
        return (sum(not h.cancelled for _, _, h in self._timers)
                + sum(not h.cancelled for h in self._soon))

    def advance(self, to: float) -> None:
        self.turn()
        while self._timers and self._timers[0][0] - self.early <= to:
            when, _, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, when - self.early)
            self.fired += 1
            handle.callback()
        self.now = max(self.now, to)


def running(n: int) -> Running:
    return Running("default", Delivery(f"{n}-0", f"job{n}"))


def deadlines(loop: HandLoop, log: list[tuple[float, str]],
              fail: set[str] = frozenset()) -> Deadlines:  # type: ignore[assignment]
    def expire(r: Running) -> None:
        log.append((loop.now, r.job_id))
        if r.job_id in fail:
            raise RuntimeError("expiry failed")

    return Deadlines(loop, expire)  # type: ignore[arg-type]


def test_each_attempt_expires_at_its_own_deadline_in_deadline_order() -> None:
    loop, log = HandLoop(), []
    d = deadlines(loop, log)
    a, b, c = running(1), running(2), running(3)
    d.add(a, 300)  # the long default first
    loop.advance(1.0)
    d.add(b, 5)  # due at 6: sooner, so the timer moves
    d.add(c, 2)  # due at 3
    loop.advance(1000)
    assert log == [(3.0, "job3"), (6.0, "job2"), (300.0, "job1")]
    assert len(d) == 0 and not d.armed and loop.pending == 0


def test_a_discarded_attempt_never_expires_and_the_next_one_still_does() -> None:
    loop, log = HandLoop(), []
    d = deadlines(loop, log)
    a, b = running(1), running(2)
    d.add(a, 1)
    d.add(b, 10)
    d.discard(a)  # ended in time: the timer, set for a, stays for b's sake
    loop.advance(5)
    assert log == []
    loop.advance(10)
    assert log == [(10.0, "job2")]


def test_attempts_that_end_without_awaiting_share_one_timer() -> None:
    loop, log = HandLoop(), []
    d = deadlines(loop, log)
    for n in range(100):  # each attempt ends before the next starts, in one iteration
        r = running(n)
        d.add(r, 300)
        d.discard(r)
    assert loop.armed_count == 1
    loop.turn()
    assert not d.armed and loop.pending == 0
    loop.advance(1000)
    assert log == []


def test_nothing_stays_on_the_loop_once_no_attempt_is_tracked() -> None:
    loop, log = HandLoop(), []
    d = deadlines(loop, log)
    rs = [running(n) for n in range(50)]
    for r in rs:
        d.add(r, 300)
    assert d.armed and loop.pending == 1  # one timer, not fifty
    for r in rs:
        d.discard(r)
    loop.turn()  # the timer goes at the end of the loop iteration
    assert not d.armed and loop.pending == 0
    d.discard(rs[0])  # twice: harmless
    d.add(rs[0], 1)
    assert d.armed and loop.pending == 1
    loop.advance(2)
    assert log == [(1.0, "job0")]


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_the_last_discard_after_the_loop_closed_disarms_at_once(use_uvloop: bool) -> None:
    """A task left behind at shutdown (it ignored its cancellation) ends when its coroutine
    is finalized, after its loop was closed: its discard can schedule nothing there."""
    import uvloop

    loop = uvloop.new_event_loop() if use_uvloop else asyncio.new_event_loop()
    d = Deadlines(loop, lambda r: None)
    r = running(1)
    d.add(r, 300)
    loop.close()
    d.discard(r)
    assert not d.armed and len(d) == 0


LEFT_BEHIND = r"""
import asyncio, gc, secrets, sys
import asyncjobs

worker = None


@asyncjobs.task(name="stubborn", timeout=300, max_tries=1)
async def stubborn(ctx):
    asyncio.get_running_loop().call_later(0.3, worker.stop)
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass


url, prefix = sys.argv[1], "t" + secrets.token_hex(4)


async def enqueue():
    async with asyncjobs.create_pool(url, prefix=prefix) as pool:
        await pool.enqueue(stubborn)


asyncio.run(enqueue())
worker = asyncjobs.Worker([stubborn], prefix=prefix, shutdown_grace=0.2)
worker.run_sync(redis_url=url)
gc.collect()  # the left-behind task's coroutine is finalized: its finally blocks run
print("done", file=sys.stderr)
"""


def test_a_task_left_behind_at_shutdown_ends_without_an_internal_error(
        redis_server: RedisServer) -> None:
    done = subprocess.run([sys.executable, "-c", LEFT_BEHIND, redis_server.url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.rstrip().endswith("done"), done.stderr[-3000:]
    assert "still running after the worker stopped" in done.stderr  # it was left behind
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, \
        done.stderr[-3000:]


def test_a_failing_expiry_is_logged_and_the_others_due_with_it_still_expire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop, log = HandLoop(), []
    d = deadlines(loop, log, fail={"job1"})
    for n in (1, 2, 3):
        d.add(running(n), 5)
    d.add(running(4), 9)
    with caplog.at_level(logging.ERROR, "asyncjobs.worker"):
        loop.advance(100)
    assert sorted(job for _, job in log) == ["job1", "job2", "job3", "job4"]
    assert "could not expire job job1 at its timeout" in caplog.text


@pytest.mark.parametrize("early", [0.0, CLOCK_SLACK_S / 2, CLOCK_SLACK_S, 0.01])
def test_a_timer_run_early_expires_what_it_was_set_for_once_without_spinning(
        early: float) -> None:
    """A loop may run a timer a little before its time (a millisecond clock): what the
    timer was set for expires on that run, as with a timer per attempt, exactly once, and
    the timer is not set again for the same instant (which would spin)."""
    loop, log = HandLoop(early=early), []
    d = deadlines(loop, log)
    deadline = {"job1": 5.0, "job2": 5 + CLOCK_SLACK_S / 2, "job3": 7.0}
    for n, job in enumerate(deadline, 1):
        d.add(running(n), deadline[job])
    loop.advance(100)
    assert [job for _, job in log] == ["job1", "job2", "job3"]
    assert log[0][0] == pytest.approx(5 - early)  # on the timer's run
    for when, job in log:
        assert when >= deadline[job] - early - CLOCK_SLACK_S - 1e-9, (job, when)
    # job2 is taken with job1 while within the slack of the loop's clock; else its timer runs
    assert loop.fired == (2 if early <= CLOCK_SLACK_S / 2 else 3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_timeout_that_is_no_number_is_refused_and_changes_nothing(bad: float) -> None:
    """A NaN deadline once poisoned the earliest-deadline search: every later timeout of
    the worker was lost (NaN < x is false both ways)."""
    loop, log = HandLoop(), []
    d = deadlines(loop, log)
    d.add(running(1), 5)
    with pytest.raises(ValueError, match="finite"):
        d.add(running(2), bad)
    d.add(running(3), 1)
    loop.advance(100)
    assert log == [(1.0, "job3"), (5.0, "job1")]


def test_ended_attempts_do_not_pile_up_whatever_the_mix_of_timeouts() -> None:
    """One attempt stays; 10,000 others come and go, each with a shorter timeout than the
    last (the earliest deadline is discarded again and again): what is kept stays bounded
    by the attempts tracked, and each timer run does little."""
    loop, log = HandLoop(), []
    d = deadlines(loop, log)
    d.add(running(0), 300)
    for n in range(1, 10_001):
        r = running(n)
        d.add(r, 200 - n / 100)
        d.discard(r)
        assert len(d._heap) <= 2 * (len(d) + 1) + 64  # the bound is the point
    loop.advance(1000)
    assert log == [(300.0, "job0")]


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 7), st.floats(0.001, 50)),
    st.tuples(st.just("discard"), st.integers(0, 7), st.just(0.0)),
    st.tuples(st.just("advance"), st.just(0), st.floats(0, 20)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops, st.sampled_from([0.0, CLOCK_SLACK_S]))
def test_deadlines_match_a_timer_per_attempt(steps: list[tuple[str, int, float]],
                                             early: float) -> None:
    """Against the model of ``call_later`` per attempt: an attempt added (again: its new
    deadline replaces the old) expires exactly once, at the first timer run at or after
    its deadline less the slack, unless discarded first."""
    loop, log = HandLoop(early=early), []
    d = deadlines(loop, log)
    rs = [running(n) for n in range(8)]
    due: dict[str, float] = {}  # the model
    expired: list[tuple[str, float]] = []
    for op, n, x in steps:
        if op == "add":
            d.add(rs[n], x)
            due[rs[n].job_id] = loop.now + x
        elif op == "discard":
            d.discard(rs[n])
            due.pop(rs[n].job_id, None)
        else:
            target = loop.now + x
            before = len(log)
            loop.advance(target)
            for when, job in log[before:]:
                assert job in due, (job, due)
                assert when >= due[job] - CLOCK_SLACK_S - early - 1e-9
                expired.append((job, due.pop(job)))
            for job, when in due.items():  # nothing due is left behind
                assert when > target - 1e-9, (job, when)
    loop.advance(loop.now + 1000)
    assert sorted(job for _, job in log[len(expired):]) == sorted(due)
    assert not d.armed and loop.pending == 0


@asyncjobs.task(name="dl_stuck", timeout=0.3, max_tries=1)
async def stuck(ctx: asyncjobs.Context) -> None:
    await asyncio.sleep(30)


@asyncjobs.task(name="dl_patient", timeout=300, max_tries=1)
async def patient(ctx: asyncjobs.Context, s: float) -> str:
    await asyncio.sleep(s)
    return "done"


@pytest.mark.asyncio
async def test_a_short_timeout_among_long_ones_ends_on_time_on_a_real_loop(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """The long timeouts are tracked first; the short one still times out, the long ones
    that end in time complete, each once."""
    long = await pool.enqueue_many([asyncjobs.call(patient, 0.6) for _ in range(5)])
    short = await pool.enqueue(stuck)
    await backend.run(backend.worker([stuck, patient], burst=True, concurrency=10))
    info = await short.info()
    assert info.state is JobState.FAILED, info
    assert [e.type for e in info.errors] == ["asyncjobs.exceptions.JobTimeout"]
    # cancelled at its deadline, not found late when its 30 s body ended
    assert "and was cancelled" in info.errors[0].message, info.errors[0].message
    assert [await j.result(timeout=5) for j in long] == ["done"] * 5
    assert [(await j.info()).attempts for j in long] == [1] * 5


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 1e12])
async def test_a_spec_whose_timeout_is_no_duration_is_dead_lettered_and_others_time_out(
        backend: Backend, pool: asyncjobs.Pool, bad: float) -> None:
    """A spec written by hand may say any timeout. It is dead-lettered with the reason
    (once, a NaN one made every later timeout of the worker silently never fire); the job
    after it still ends at its own deadline."""
    [odd] = kept.new_job_ids(1)
    assert await pool.store("default").enqueue(
        [NewJob(odd, encode_spec(JobSpec(patient.name, args=[0.1], timeout_s=bad)))]) == {}
    short = await pool.enqueue(stuck)
    await backend.run(backend.worker([stuck, patient], burst=True, concurrency=10))
    info = await pool.job(odd).info()
    assert info.state is JobState.FAILED and info.attempts == 1, info
    assert [e.type for e in info.errors] == ["asyncjobs.BadTimeout"]
    assert "the job's timeout is not a duration" in info.errors[0].message
    later = await short.info()
    assert [e.type for e in later.errors] == ["asyncjobs.exceptions.JobTimeout"]
    assert "and was cancelled" in later.errors[0].message
