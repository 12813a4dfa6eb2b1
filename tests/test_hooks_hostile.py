"""Hostile hooks: the code users plug into a worker besides their tasks (middleware,
observers, the log-context hook, the lifespan, retry policies, the producer's header
providers) gets the attacks ``test_hostile.py`` makes on task bodies. Whatever a hook does,
a job ends visibly (result, dead letter with its reason, expired, aborted, timeout), runs no
more often than its tries allow, the worker keeps serving other jobs, and ``stop()`` returns
within the grace period plus ``AFTER_GRACE_S``; what can be refused up front is refused with
a ``ConfigurationError`` before any job is taken, and a hook that fails on every job logs
one traceback, not one per job.

In-process workers on both backends; ``KeyboardInterrupt`` and ``SystemExit`` raised by a
hook (which would stop a test's own event loop if they escaped) in worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobInfo, JobState
from asyncjobs._middleware import Call, Middleware
from asyncjobs._redis.fake import fake_factory
from asyncjobs._retry import Action, RetryPolicy, decide
from asyncjobs._worker.shutdown import AFTER_GRACE_S

from .conftest import Backend
from .procs import ROOT, WorkerProcess

pytestmark = pytest.mark.asyncio

GRACE_S = 0.5
STOP_BOUND_S = GRACE_S + AFTER_GRACE_S + 5.0  # generous: a loaded two-core machine
RUN_BOUND_S = 30.0
"""A burst run that takes longer than this is wedged (each takes about a second)."""


# -- hostile values ----------------------------------------------------------------------------


class Boom(BaseException):
    """A custom BaseException, as a hook might raise."""


class Unprintable(Exception):
    """An exception whose ``__str__`` and ``__repr__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Recursive(Exception):
    """An exception whose ``__str__`` recurses until Python gives up."""

    def __str__(self) -> str:
        return str(self)


RAISED: dict[str, Callable[[], BaseException]] = {
    "boom": lambda: Boom("hostile boom"),
    "generator-exit": lambda: GeneratorExit("hostile generator exit"),
    "cancelled": lambda: asyncio.CancelledError("raised, not a cancellation"),
    "unprintable": Unprintable,
    "recursive": Recursive,
}
"""What hooks raise in process (KeyboardInterrupt and SystemExit: in worker processes)."""

RAISED_TYPES = {"boom": "tests.test_hooks_hostile.Boom", "generator-exit": "builtins.GeneratorExit",
                "cancelled": "asyncio.exceptions.CancelledError",
                "unprintable": "tests.test_hooks_hostile.Unprintable",
                "recursive": "tests.test_hooks_hostile.Recursive"}


# -- tasks: each counts the attempts that entered its body ----------------------------------------

RUNS: dict[str, int] = {}


def ran(ctx: Context) -> None:
    RUNS[ctx.job_id] = RUNS.get(ctx.job_id, 0) + 1


@asyncjobs.task(name="hh_ok", max_tries=1)
async def ok(ctx: Context, n: int = 1) -> int:
    ran(ctx)
    return n


@asyncjobs.task(name="hh_fine", max_tries=1)
async def fine(ctx: Context) -> str:
    ran(ctx)
    return "fine"


@asyncjobs.task(name="hh_flaky", max_tries=2, backoff=0)
async def flaky(ctx: Context) -> str:
    ran(ctx)
    if ctx.attempt == 1:
        raise ValueError("once")
    return "second time"


@asyncjobs.task(name="hh_doomed", max_tries=1)
async def doomed(ctx: Context) -> None:
    ran(ctx)
    raise ValueError("always")


@asyncjobs.task(name="hh_slow", max_tries=1, timeout=0.3)
async def slow(ctx: Context) -> str:
    ran(ctx)
    await asyncio.sleep(30)
    return "never"


@asyncjobs.task(name="hh_sleeper", max_tries=1)
async def sleeper(ctx: Context) -> str:
    ran(ctx)
    await asyncio.sleep(30)
    return "never"


TASKS = [ok, fine, flaky, doomed, slow, sleeper]


# -- helpers ---------------------------------------------------------------------------------------


async def burst(backend: Backend, tasks: list[Any] | None = None, **options: Any) -> None:
    """Run a burst worker to its end; a run that does not end is a wedged queue."""
    options.setdefault("concurrency", 1)
    worker = backend.worker(TASKS if tasks is None else tasks, burst=True, **options)
    await asyncio.wait_for(backend.run(worker), RUN_BOUND_S)


async def final(job: asyncjobs.Job[Any], within_s: float = RUN_BOUND_S) -> JobInfo:
    """The job's record once it has ended (an assertion error if it does not)."""
    deadline = time.monotonic() + within_s
    while not (info := await job.info()).state.is_final:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job.id} still {info.state} after {within_s:g} s")
        await asyncio.sleep(0.02)
    return info


@contextlib.asynccontextmanager
async def serving(backend: Backend, worker: asyncjobs.Worker) -> AsyncIterator[asyncjobs.Worker]:
    """Run ``worker`` in the background; on the way out ``stop()`` it and assert it returned
    within the grace period plus ``AFTER_GRACE_S`` (and without an error)."""
    ready = asyncio.Event()

    async def main() -> None:
        import anyio

        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: worker.run(
                redis_url=backend.url, client_factory=None if backend.url else backend.factory,
                task_status=task_status))
            ready.set()

    task = asyncio.create_task(main())
    done, _ = await asyncio.wait([task, asyncio.create_task(ready.wait())],
                                 return_when=asyncio.FIRST_COMPLETED, timeout=RUN_BOUND_S)
    if task in done:
        task.result()
    assert ready.is_set(), "the worker did not start"
    try:
        yield worker
    finally:
        began = time.monotonic()
        worker.stop()
        finished, _ = await asyncio.wait([task], timeout=STOP_BOUND_S)
        took = time.monotonic() - began
        if not finished:
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
        assert finished, f"the worker did not stop within {STOP_BOUND_S:g} s"
        assert took <= STOP_BOUND_S
        task.result()


def formatted(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every record's message: formatting one must never raise."""
    return [r.getMessage() for r in caplog.records]


# =================================================================================================
# Middleware
# =================================================================================================


class Counting(Middleware):
    """Counts the calls of each of its hooks."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1


async def test_an_around_that_never_calls_the_task_answers_for_it(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """A gate: the task never runs, the attempt completes with the gate's answer (the
    middleware's documented power), and the next job runs as usual."""

    class Gate(Middleware):
        async def around(self, ctx: Context, call_next: Call) -> Any:
            return -1 if ctx.args == (0,) else await call_next()

    gated = await pool.enqueue(ok, 0)
    normal = await pool.enqueue(ok, 5)
    await burst(backend, middleware=[Gate()])
    assert await gated.result(timeout=5) == -1 and gated.id not in RUNS
    assert await normal.result(timeout=5) == 5 and RUNS[normal.id] == 1


async def test_call_next_called_twice_runs_the_task_once_per_attempt(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """A second ``call_next()`` in one attempt would run the task twice outside any
    documented at-least-once case: it raises instead, and the attempt fails with that."""

    class Twice(Middleware):
        async def around(self, ctx: Context, call_next: Call) -> Any:
            await call_next()
            return await call_next()

    job = await pool.enqueue(ok, 3)
    await burst(backend, middleware=[Twice()])
    info = await final(job)
    assert RUNS[job.id] == 1
    assert info.state is JobState.FAILED and info.attempts == 1
    assert info.errors[0].type == "builtins.RuntimeError"
    assert "call_next" in info.errors[0].message and "Twice" in info.errors[0].message


async def test_a_retry_inside_around_gets_a_clear_error_not_a_second_run(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """The same with a hand-made retry around a failing task: the retry policy, not the
    middleware, runs the task again (one run per attempt, two attempts)."""

    class RetriesItself(Middleware):
        async def around(self, ctx: Context, call_next: Call) -> Any:
            try:
                return await call_next()
            except ValueError:
                return await call_next()

    job = await pool.enqueue(flaky)
    await burst(backend, middleware=[RetriesItself()])
    info = await final(job)
    assert RUNS[job.id] == 2 and info.attempts == 2
    assert info.state is JobState.COMPLETE and info.result == "second time"
    assert [e.type for e in info.errors] == ["builtins.RuntimeError"]


class SwallowsCancel(Middleware):
    """Catches the attempt's cancellation and returns a value instead."""

    async def around(self, ctx: Context, call_next: Call) -> Any:
        try:
            return await call_next()
        except asyncio.CancelledError:
            return "pretending all went well"


async def test_an_around_that_swallows_the_timeout_is_a_timeout(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(slow)
    normal = await pool.enqueue(ok, 2)
    await burst(backend, middleware=[SwallowsCancel()])
    info = await final(job)
    assert info.state is JobState.FAILED and info.result is None
    assert info.errors[0].type == "asyncjobs.exceptions.JobTimeout"
    assert "ignored its cancellation" in info.errors[0].message
    assert RUNS[job.id] == 1 and await normal.result(timeout=5) == 2


async def test_an_around_that_swallows_the_timeout_for_ever_is_abandoned(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """It keeps going after each cancel (it gives up after three, so the test's loop can
    end): the attempt is recorded a timeout at its escalation, the slot is freed for the
    next job meanwhile (concurrency 1)."""

    class Stubborn(Middleware):
        async def around(self, ctx: Context, call_next: Call) -> Any:
            for _ in range(3):
                with contextlib.suppress(asyncio.CancelledError):
                    return await call_next()
            return "finished anyway"

    job = await pool.enqueue(slow)
    normal = await pool.enqueue(ok, 4)
    await burst(backend, middleware=[Stubborn()])
    info = await final(job)
    assert info.state is JobState.FAILED and info.errors[0].type.endswith("JobTimeout")
    assert info.attempts == 1 and await normal.result(timeout=5) == 4


async def test_an_around_that_blocks_the_loop_is_a_timeout(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    class Blocks(Middleware):
        async def around(self, ctx: Context, call_next: Call) -> Any:
            time.sleep(0.8)  # noqa: ASYNC251 - the point of the test
            return await call_next()

    job = await pool.enqueue(ok.options(timeout=0.3), 1)
    await burst(backend, middleware=[Blocks()])
    info = await final(job)
    assert info.state is JobState.FAILED
    assert "while the event loop was blocked" in info.errors[0].message


async def test_an_around_that_swallows_an_abort_still_ends_aborted(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """``job.abort()`` while it runs: the middleware catches the cancellation and returns a
    value; the job was aborted, not completed with that value."""

    job = await pool.enqueue(sleeper)
    async with serving(backend, backend.worker(TASKS, middleware=[SwallowsCancel()],
                                               shutdown_grace=GRACE_S)):
        while RUNS.get(job.id) != 1:
            await asyncio.sleep(0.02)
        await job.abort()
        info = await final(job, 10)
    assert info.state is JobState.ABORTED and info.result is None


async def test_an_around_that_swallows_the_shutdown_does_not_hold_the_stop(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """A stop with a short grace cancels the attempt; the middleware swallows the cancel
    twice and goes on: ``stop()`` still returns within its bound."""

    class Stubborn(Middleware):
        async def around(self, ctx: Context, call_next: Call) -> Any:
            for _ in range(2):
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(30)
            return await call_next()

    job = await pool.enqueue(ok, 1)
    async with serving(backend, backend.worker(TASKS, middleware=[Stubborn()],
                                               shutdown_grace=GRACE_S)):
        await asyncio.sleep(0.3)
    info = await job.info()
    assert info.state is not JobState.COMPLETE or info.result == 1


WHERE = ["before", "around", "after-ok", "after-error"]


class RaisesIn(Middleware):
    """Raises ``exc()`` in one of its hooks."""

    def __init__(self, where: str, exc: Callable[[], BaseException]) -> None:
        self.where, self.exc = where, exc

    async def before(self, ctx: Context) -> None:
        if self.where == "before" and ctx.task != "hh_ok":
            raise self.exc()

    async def around(self, ctx: Context, call_next: Call) -> Any:
        if self.where == "around" and ctx.task != "hh_ok":
            raise self.exc()
        return await call_next()

    async def after(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        if ctx.task == "hh_ok":
            return
        if (self.where == "after-ok" and error is None) or (
                self.where == "after-error" and error is not None):
            raise self.exc()


@pytest.mark.parametrize("what", list(RAISED))
@pytest.mark.parametrize("where", WHERE)
async def test_a_middleware_raising_anything_fails_the_attempt_visibly(
        backend: Backend, pool: asyncjobs.Pool, where: str, what: str) -> None:
    """Whatever a middleware hook raises (BaseException subclasses, GeneratorExit, a
    CancelledError nobody asked for, unprintable errors) is the attempt's error: the job
    fails with its type after one run, and the next job is served (concurrency 1)."""
    task = doomed if where == "after-error" else fine
    job = await pool.enqueue(task)
    normal = await pool.enqueue(ok, 7)
    await burst(backend, middleware=[RaisesIn(where, RAISED[what])])
    info = await final(job)
    assert info.state is JobState.FAILED and info.attempts == 1
    assert [e.type for e in info.errors] == [RAISED_TYPES[what]]
    assert RUNS.get(job.id, 0) == (0 if where in ("before", "around") else 1)
    assert await normal.result(timeout=5) == 7 and RUNS[normal.id] == 1


async def test_an_around_returning_call_next_unawaited_fails_naming_the_mistake(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """``return call_next()`` (no await): the task never ran, so the attempt must not
    complete; it fails saying why, and the coroutine is closed (no 'never awaited'
    warning at a later garbage collection)."""

    class Forgets(Middleware):
        async def around(self, ctx: Context, call_next: Call) -> Any:
            return call_next()

    job = await pool.enqueue(ok, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await burst(backend, middleware=[Forgets()])
        import gc
        gc.collect()
    info = await final(job)
    assert info.state is JobState.FAILED and job.id not in RUNS
    assert "without awaiting" in info.errors[0].message
    assert not [w for w in caught if "never awaited" in str(w.message)]


class SyncBefore(Middleware):
    def before(self, ctx: Context) -> None:  # type: ignore[override]
        pass


class SyncAround(Middleware):
    def around(self, ctx: Context, call_next: Call) -> Any:  # type: ignore[override]
        return call_next


class WrongAfter(Middleware):
    async def after(self, ctx: Context) -> None:  # type: ignore[override]
        pass


class DuckTyped:
    async def around(self, ctx: Context, call_next: Call) -> Any:
        return await call_next()


@pytest.mark.parametrize("middleware", [SyncBefore(), SyncAround(), WrongAfter(), DuckTyped(),
                                        Middleware, object()],
                         ids=["sync-before", "sync-around", "wrong-after", "duck-typed",
                              "the-class", "object"])
async def test_a_middleware_that_cannot_work_is_refused_before_any_job(
        backend: Backend, pool: asyncjobs.Pool, middleware: Any) -> None:
    """Not an instance with async ``before`` / ``around`` / ``after`` of the right
    arguments: every job would fail the same way. Refused as the worker starts, no job
    taken (Worker() itself cannot refuse it without a change to worker.py: see the report)."""
    job = await pool.enqueue(ok, 1)
    with pytest.raises(asyncjobs.ConfigurationError, match="middleware"):
        await burst(backend, middleware=[middleware])
    assert (await job.info()).state is JobState.QUEUED and job.id not in RUNS


# =================================================================================================
# Observers
# =================================================================================================


class RaisingObserver:
    """Raises ``exc()`` on every event (of ``kinds``, when given), after noting it."""

    def __init__(self, exc: Callable[[], BaseException], kinds: set[str] | None = None) -> None:
        self.exc, self.kinds = exc, kinds
        self.heard: list[tuple[str, str]] = []

    def job_event(self, event: asyncjobs.JobEvent) -> None:
        self.heard.append((event.kind, event.job_id))
        if self.kinds is None or event.kind in self.kinds:
            raise self.exc()


async def enqueue_every_ending(pool: asyncjobs.Pool) -> dict[str, asyncjobs.Job[Any]]:
    """One job for each way a job ends (and one that retries first)."""
    jobs = {
        "complete": await pool.enqueue(ok, 1),
        "retried": await pool.enqueue(flaky),
        "failed": await pool.enqueue(doomed),
        "unknown": await pool.enqueue("hh_nobody_knows_me"),
        "expired": await pool.enqueue(ok.options(expires=0.001), 2),
        "aborted": await pool.enqueue(ok, 3),
    }
    await jobs["aborted"].abort()
    await asyncio.sleep(0.01)
    return jobs


async def assert_every_ending(jobs: dict[str, asyncjobs.Job[Any]]) -> None:
    states = {name: (await final(job)).state for name, job in jobs.items()}
    assert states == {"complete": JobState.COMPLETE, "retried": JobState.COMPLETE,
                      "failed": JobState.FAILED, "unknown": JobState.FAILED,
                      "expired": JobState.EXPIRED, "aborted": JobState.ABORTED}
    assert RUNS[jobs["complete"].id] == 1 and RUNS[jobs["retried"].id] == 2
    assert RUNS[jobs["failed"].id] == 1
    assert jobs["expired"].id not in RUNS and jobs["aborted"].id not in RUNS


@pytest.mark.parametrize("what", list(RAISED))
async def test_an_observer_raising_anything_breaks_no_job(
        backend: Backend, pool: asyncjobs.Pool, what: str) -> None:
    """An observer that raises on every event, whatever it raises: every job ends as it
    would without it (no extra run, nothing left pending) and the other observers still
    hear every event."""
    jobs = await enqueue_every_ending(pool)
    hostile = RaisingObserver(RAISED[what])
    quiet = RaisingObserver(lambda: Boom(), kinds=set())
    await burst(backend, observers=[hostile, quiet])
    await assert_every_ending(jobs)
    assert hostile.heard == quiet.heard
    assert {k for k, _ in quiet.heard} == {"started", "complete", "retry", "failed",
                                           "expired"}


@pytest.mark.parametrize("kind", ["started", "complete", "retry", "failed", "interrupted"])
async def test_an_observer_raising_a_base_exception_on_one_kind_breaks_no_job(
        backend: Backend, pool: asyncjobs.Pool, kind: str) -> None:
    """The same on each kind alone (where the worker calls observers differs by kind),
    with a stop in the middle of a job for 'interrupted': the stop keeps its bound, the
    interrupted job runs again on the next worker."""
    hostile = RaisingObserver(Boom, kinds={kind})
    if kind == "interrupted":
        job = await pool.enqueue(sleeper.options(timeout=2))
        async with serving(backend, backend.worker(TASKS, observers=[hostile],
                                                   shutdown_grace=0.1)):
            while RUNS.get(job.id) != 1:
                await asyncio.sleep(0.02)
        assert ("interrupted", job.id) in hostile.heard
        await burst(backend)  # handed back: it runs (and times out) at once
        info = await final(job)
        assert info.state is JobState.FAILED and RUNS[job.id] == 2
        return
    jobs = await enqueue_every_ending(pool)
    await burst(backend, observers=[hostile])
    await assert_every_ending(jobs)


async def test_an_async_observer_is_refused_at_construction() -> None:
    """``async def job_event`` is never awaited (the worker calls observers on its loop
    and moves on): it would never run, and warn at each garbage collection."""

    class Async:
        async def job_event(self, event: asyncjobs.JobEvent) -> None:
            pass

    with pytest.raises(asyncjobs.ConfigurationError, match=r"async def"):
        asyncjobs.Worker([ok], observers=[Async()])  # type: ignore[list-item]


async def test_an_observer_returning_a_coroutine_is_told_once(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """A callable that is not an ``async def`` but returns a coroutine (a lambda around
    one, say): the coroutine is closed (no 'never awaited' warnings) and one line says so."""

    async def page(event: asyncjobs.JobEvent) -> None:
        pass

    class Sneaky:
        def __init__(self) -> None:
            self.job_event = lambda event: page(event)

    first = await pool.enqueue(ok, 1)
    second = await pool.enqueue(ok, 2)
    with warnings.catch_warnings(record=True) as caught, \
            caplog.at_level(logging.WARNING, logger="asyncjobs"):
        warnings.simplefilter("always")
        await burst(backend, observers=[Sneaky()])
        import gc
        gc.collect()
    assert await first.result(timeout=5) == 1 and await second.result(timeout=5) == 2
    assert not [w for w in caught if "never awaited" in str(w.message)]
    told = [m for m in formatted(caplog) if "returned a coroutine" in m]
    assert len(told) == 1


async def test_a_failing_observer_logs_one_traceback(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """An observer failing on every event (4 events here) whose repr raises too: one
    traceback, then one line per failure; every line can be formatted."""

    class Broken:
        def job_event(self, event: asyncjobs.JobEvent) -> None:
            raise Unprintable()

        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    first = await pool.enqueue(ok, 1)
    second = await pool.enqueue(ok, 2)
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        await burst(backend, observers=[Broken()])
    assert await first.result(timeout=5) == 1 and await second.result(timeout=5) == 2
    lines = [r for r in caplog.records if "observer" in r.getMessage()
             and "failed" in r.getMessage()]
    assert len(lines) == 4
    assert [r.exc_info is not None for r in lines] == [True, False, False, False]
    assert all("Unprintable" in r.getMessage() for r in lines[1:])


# =================================================================================================
# log_context
# =================================================================================================


@pytest.mark.parametrize("what", list(RAISED))
async def test_a_log_context_hook_raising_anything_lets_the_job_run(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture,
        what: str) -> None:
    def hook(ctx: Context) -> Mapping[str, object]:
        raise RAISED[what]()

    job = await pool.enqueue(ok, 1)
    retried = await pool.enqueue(flaky)
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        await burst(backend, log_context=hook)
    assert await job.result(timeout=5) == 1 and RUNS[job.id] == 1
    assert await retried.result(timeout=5) == "second time" and RUNS[retried.id] == 2
    failures = [m for m in formatted(caplog) if "log_context hook failed" in m]
    assert len(failures) == 3 and job.id in failures[0]


async def test_a_log_context_hook_failing_on_every_job_logs_one_traceback(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    jobs = [await pool.enqueue(ok, n) for n in range(3)]
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        await burst(backend, log_context=lambda ctx: 42)  # type: ignore[arg-type, return-value]
    for n, job in enumerate(jobs):
        assert await job.result(timeout=5) == n
    failures = [r for r in caplog.records if "log_context hook failed" in r.getMessage()]
    assert [r.exc_info is not None for r in failures] == [True, False, False]
    assert all(job.id in r.getMessage() for job, r in zip(jobs, failures, strict=True))
    assert "TypeError" in failures[1].getMessage()


async def test_an_async_log_context_hook_is_refused_before_any_job(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """``async def`` hooks return a coroutine, never awaited: every job's fields would be
    missing and each would log a failure. Refused as the worker starts, no job taken."""

    async def hook(ctx: Context) -> Mapping[str, object]:
        return {}

    job = await pool.enqueue(ok, 1)
    with pytest.raises(asyncjobs.ConfigurationError, match="log_context"):
        await burst(backend, log_context=hook)  # type: ignore[arg-type]
    assert (await job.info()).state is JobState.QUEUED and job.id not in RUNS


async def test_a_log_context_hook_returning_hostile_mappings_lets_the_jobs_run(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """Keys that are not text, values whose str raises, huge strings, a mapping whose
    iteration raises half-way: every job runs and every line can be formatted."""

    class HalfWay(Mapping[str, object]):
        def __getitem__(self, key: str) -> object:
            return "v"

        def __iter__(self) -> Iterator[str]:
            yield "first"
            raise Boom("half-way")

        def __len__(self) -> int:
            return 2

        def keys(self) -> Any:
            return iter(self)

    answers: list[Any] = [{(1, 2): Unprintable(), None: "x" * 1_000_000}, HalfWay(),
                          [("pairs", "ok")], {"k": Recursive()}]
    jobs = [await pool.enqueue(ok, n) for n in range(len(answers))]
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        await burst(backend, log_context=lambda ctx: answers[ctx.args[0]])
    for n, job in enumerate(jobs):
        assert await job.result(timeout=5) == n
    lines = formatted(caplog)
    assert max(len(line) for line in lines) < 10_000
    assert any(" pairs=ok" in line for line in lines)


# =================================================================================================
# lifespan (worker.py)
# =================================================================================================


def fake_backend() -> Backend:
    """A fake Redis of the test's own (the lifespan's faults do not depend on Redis)."""
    return Backend("fake", None, fake_factory(), f"t{secrets.token_hex(4)}")


def lifespan_of(start: str = "", stop: str = "") -> Callable[[asyncjobs.Worker], Any]:
    """A lifespan that misbehaves at ``start`` or at ``stop``: 'raise', 'hang', 'twice'
    (yields a second time)."""

    @contextlib.asynccontextmanager
    async def lifespan(worker: asyncjobs.Worker) -> AsyncIterator[str]:
        if start == "raise":
            raise Boom("lifespan start")
        if start == "hang":
            await asyncio.sleep(3600)
        yield "state"
        if stop == "raise":
            raise Boom("lifespan stop")
        if stop == "hang":
            await asyncio.sleep(3600)
        if stop == "twice":
            yield "again"

    return lifespan


async def test_a_lifespan_that_raises_at_start_up_takes_no_job(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(ok, 1)
    with pytest.raises(Boom, match="lifespan start"):
        await burst(backend, lifespan=lifespan_of(start="raise"))
    assert (await job.info()).state is JobState.QUEUED and job.id not in RUNS
    await burst(backend)
    assert await job.result(timeout=5) == 1


@pytest.mark.parametrize("stop", ["raise", "twice"])
async def test_a_lifespan_that_fails_at_shutdown_keeps_every_outcome(
        backend: Backend, pool: asyncjobs.Pool, stop: str) -> None:
    jobs = await enqueue_every_ending(pool)
    with pytest.raises((Boom, RuntimeError)):
        await burst(backend, lifespan=lifespan_of(stop=stop))
    await assert_every_ending(jobs)


async def test_a_lifespan_that_never_yields_does_not_hold_the_stop() -> None:
    backend = fake_backend()
    worker = backend.worker(TASKS, lifespan=lifespan_of(start="hang"), shutdown_grace=GRACE_S)
    run = asyncio.create_task(backend.run(worker))
    await asyncio.sleep(1.0)  # connected, in the lifespan
    worker.stop()
    done, _ = await asyncio.wait([run], timeout=STOP_BOUND_S)
    if not done:
        run.cancel()
        with contextlib.suppress(BaseException):
            await run
    assert done, f"run() still going {STOP_BOUND_S:g} s after stop()"


async def test_a_lifespan_that_hangs_at_shutdown_does_not_hold_the_stop() -> None:
    backend = fake_backend()
    async with backend.pool() as pool:
        job = await pool.enqueue(ok, 1)
        worker = backend.worker(TASKS, lifespan=lifespan_of(stop="hang"),
                                shutdown_grace=GRACE_S)
        run = asyncio.create_task(backend.run(worker))
        assert await job.result(timeout=RUN_BOUND_S) == 1
        worker.stop()
        done, _ = await asyncio.wait([run], timeout=STOP_BOUND_S)
        if not done:
            run.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(run, 5)
        assert done, f"run() still going {STOP_BOUND_S:g} s after stop()"


# =================================================================================================
# Retry policies
# =================================================================================================


async def test_retry_on_given_as_a_list_or_one_type_is_taken(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """``retry_on=[ValueError]`` and ``retry_on=ValueError`` mean what they say (a list
    raised TypeError inside the retry decision: the job ran again after each claim
    timeout, with an internal-error traceback each time)."""
    policy = RetryPolicy(max_tries=2, retry_on=[ValueError], backoff_s=0)  # type: ignore[arg-type]
    assert policy.retry_on == (ValueError,)
    assert RetryPolicy(retry_on=KeyError).retry_on == (KeyError,)  # type: ignore[arg-type]
    job = await pool.enqueue(doomed.options(max_tries=2))
    await burst(backend, retry=policy)
    info = await final(job)
    assert info.state is JobState.FAILED and RUNS[job.id] == 2 and info.attempts == 2


@pytest.mark.parametrize("given", [("ValueError",), (ValueError, 3), (int,), None, [None]])
async def test_retry_on_that_is_not_exception_types_is_refused(given: Any) -> None:
    with pytest.raises(asyncjobs.ConfigurationError, match="retry_on"):
        RetryPolicy(retry_on=given)
    with pytest.raises(asyncjobs.ConfigurationError, match="dont_retry_on"):
        RetryPolicy(dont_retry_on=given)


async def test_a_tasks_retry_on_that_is_not_exception_types_dead_letters_its_jobs(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """A task's own ``retry_on`` that is not exception types is a ``ConfigurationError``
    where the task is declared; one that got past that (changed afterwards) has its jobs
    dead-lettered with the reason before they run, and the others are served."""
    with pytest.raises(asyncjobs.ConfigurationError,
                       match=r"task 'hh_refused': retry_on must be"):
        asyncjobs.task(name="hh_refused",
                       retry_on=("ValueError",))(ok.fn)  # type: ignore[arg-type, call-overload]

    @asyncjobs.task(name="hh_bad_retry_on")
    async def bad(ctx: Context) -> None:
        ran(ctx)

    bad._retry["retry_on"] = ("ValueError",)  # past the declaration's check
    job = await pool.enqueue(bad)
    normal = await pool.enqueue(ok, 1)
    await burst(backend, [bad, ok])
    info = await final(job)
    assert info.state is JobState.FAILED and job.id not in RUNS
    assert "retry_on" in (info.dead_letter_reason or "")
    assert await normal.result(timeout=5) == 1


class Shifty(type):
    """A metaclass whose instance checks raise."""

    def __instancecheck__(cls, obj: object) -> bool:
        raise Boom("no isinstance for you")

    def __subclasscheck__(cls, sub: type) -> bool:
        raise Boom("no issubclass for you")


class ShiftyError(Exception, metaclass=Shifty):
    pass


async def test_a_retry_decision_that_raises_fails_the_job_once(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """``retry_on`` with a type whose checks raise: the job is dead-lettered once with
    the reason, not run again after each claim timeout."""
    job = await pool.enqueue(doomed.options(max_tries=3))
    await burst(backend, retry=RetryPolicy(dont_retry_on=(ShiftyError,)))
    info = await final(job)
    assert info.state is JobState.FAILED and RUNS[job.id] == 1
    assert "retry" in (info.dead_letter_reason or "")


class HostileRetry(asyncjobs.Retry):
    """A ``Retry`` whose delay was changed after its checks."""

    def __init__(self, delay: Any) -> None:
        super().__init__()
        self.delay_s = delay


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), -5.0, "soon", 1e300, 10**400])
async def test_a_retry_whose_delay_is_not_a_duration_still_retries(
        backend: Backend, pool: asyncjobs.Pool, delay: Any) -> None:
    @asyncjobs.task(name="hh_hostile_retry", max_tries=2, backoff=0)
    async def hostile_retry(ctx: Context) -> str:
        ran(ctx)
        if ctx.attempt == 1:
            raise HostileRetry(delay)
        return "done"

    job = await pool.enqueue(hostile_retry)
    await burst(backend, [hostile_retry])
    info = await final(job)  # the policy's backoff (0 s) instead of the hostile delay
    assert info.state is JobState.COMPLETE and info.result == "done"
    assert info.attempts == 2 and RUNS[job.id] == 2


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), -5.0, "soon", 1e300, 10**400,
                                   None, 2.5])
async def test_decide_keeps_a_retry_delay_within_what_a_settle_takes(delay: Any) -> None:
    error = HostileRetry(delay)
    decision = decide("error", error, 1, RetryPolicy(backoff_s=1.0), 0.5)
    assert decision.action is Action.RETRY
    assert isinstance(decision.delay_s, float)
    assert 0 <= decision.delay_s <= 10 * 365.25 * 24 * 3600
    assert round(decision.delay_s * 1000) >= 0  # what after_attempt does with it
    if delay == 2.5:
        assert decision.delay_s == 2.5


# =================================================================================================
# The producer's header providers (_producer/pool.py)
# =================================================================================================


async def test_a_header_provider_that_raises_fails_the_enqueue_and_writes_nothing(
        pool: asyncjobs.Pool) -> None:
    def provider() -> Mapping[str, str]:
        raise Boom("no headers")

    pool.header_providers.append(provider)
    with pytest.raises(Boom):
        await pool.enqueue(ok, 1)
    pool.header_providers.remove(provider)
    assert (await pool.admin.queue_stats()).waiting == 0


@pytest.mark.parametrize("headers", [{"n": 1}, {1: "x"}, {"k": None}, None, "text"])
async def test_a_header_provider_returning_non_text_is_refused_at_enqueue(
        backend: Backend, pool: asyncjobs.Pool, headers: Any) -> None:
    pool.header_providers.append(lambda: headers)
    with pytest.raises((TypeError, ValueError)):
        await pool.enqueue(ok, 1)
    assert (await pool.admin.queue_stats()).waiting == 0


# =================================================================================================
# KeyboardInterrupt and SystemExit from hooks: worker processes
# =================================================================================================

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")
HOOK = os.environ.get("HH_HOOK", "observer:keyboard")
_WHERE, _, _WHAT = HOOK.partition(":")
_EXC: Callable[[], BaseException] = (
    (lambda: KeyboardInterrupt("hostile")) if _WHAT == "keyboard" else (lambda: SystemExit(3)))


def _raising_hook(ctx: Context) -> Mapping[str, object]:
    raise _EXC()


process_worker = asyncjobs.Worker(
    [ok, flaky], prefix=PREFIX,
    observers=[RaisingObserver(_EXC)] if _WHERE == "observer" else [],
    log_context=_raising_hook if _WHERE == "log_context" else None,
    middleware=[RaisesIn("before", _EXC)] if _WHERE == "before" else [],
)


@pytest.mark.slow
@pytest.mark.real_redis
@pytest.mark.parametrize("what", ["keyboard", "exit"])
@pytest.mark.parametrize("where", ["observer", "log_context", "before"])
async def test_a_hook_raising_keyboardinterrupt_or_systemexit_does_not_kill_the_worker(
        real: Backend, where: str, what: str) -> None:
    """Raised by a hook (not by a signal: the worker handles SIGINT itself), they are the
    hook's failure like any other: the jobs end visibly, the worker serves on and exits
    cleanly on SIGTERM within its bound."""
    proc = WorkerProcess("tests.test_hooks_hostile:process_worker", real.url or "",
                         real.prefix, "--concurrency", "1", "--grace", f"{GRACE_S:g}",
                         env={"HH_HOOK": f"{where}:{what}"})
    try:
        proc.wait_for("ready:")
        async with real.pool() as pool:
            a = await pool.enqueue(flaky)
            b = await pool.enqueue(ok, 2)
            states = [(await final(a, 20)).state, (await final(b, 20)).state]
            if where == "before":  # the attempt's error: not retryable (a BaseException)
                assert states == [JobState.FAILED, JobState.COMPLETE]
                assert (await a.info()).attempts == 1
            else:
                assert states == [JobState.COMPLETE, JobState.COMPLETE]
                assert (await a.info()).attempts == 2
        began = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, STOP_BOUND_S + 10)
        assert code == 0, proc.output[-6000:]
        assert time.monotonic() - began <= STOP_BOUND_S
        assert "internal error" not in proc.output, proc.output[-6000:]
    finally:
        proc.close()


async def test_a_lifespan_s_exit_gets_what_is_left_of_the_grace() -> None:
    """``lifespan.exit_bound``: the rest of the grace period from the drain's start, at
    least ``EXIT_S``; ``EXIT_S`` in a hurry or when the run did not drain. And the README
    says so."""
    from types import SimpleNamespace

    from asyncjobs._worker.lifespan import EXIT_S, exit_bound

    def rt(stopped_at: float, hurry: bool = False) -> Any:
        event = asyncio.Event()
        if hurry:
            event.set()
        return SimpleNamespace(stopped_at=stopped_at, hurry=event,
                               config=SimpleNamespace(shutdown_grace_s=30.0))

    assert exit_bound(rt(100.0), 110.0) == 20.0
    assert exit_bound(rt(100.0), 129.5) == EXIT_S
    assert exit_bound(rt(100.0), 200.0) == EXIT_S
    assert exit_bound(rt(0.0), 5.0) == EXIT_S
    assert exit_bound(rt(100.0, hurry=True), 101.0) == EXIT_S
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"its exit gets what is left of the grace period, at least {EXIT_S:g} s" in readme
