"""A start answered late (asyncjobs/_worker/late.py). take.lua and start.lua start a job in
Redis; the worker hears of it only when the answer comes. While the answer is held up (a
Redis stall that began right after the call ran, a lagging loop), the job's entry is idle
and unknown to the worker's keep-alive, so another worker takes it over as a dead
worker's, and runs it. The late answer must then not run it a second time: the worker
confirms a late start's entries (one touch) before running anything.

Each test holds up the answer of worker A's start (of a take, of a take sent behind a
blocking read, of a reclaim's start) longer than the reclaim threshold; worker B, started
meanwhile, takes the job over and runs it; then A's answer arrives. On the old code A ran
it too."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.store import QueueStore, taken_from
from asyncjobs._redis.values import Delivery, Started
from asyncjobs._worker import fetcher, late, limiter
from asyncjobs._worker.reader import Reader

from .conftest import Backend, running

CLAIM_S = 3.0
"""Entries idle 1.5 s are taken over; the keep-alive refreshes every 0.5 s."""

LATE_S = 4.5
"""How long A's answer is held up: B starts, hears of A, and takes the job over well
within it."""


def _row(entry: str, verdict: str = "run") -> tuple[str, Started]:
    return ("q", Started(Delivery(entry, f"job-{entry}"), verdict, b"", 1, b"", 0, 0))


def test_a_start_is_due_for_confirmation_a_quarter_interval_after_its_call() -> None:
    rows = [_row("1-0"), _row("2-0", "lost")]
    late.stamp(rows, 100.0, 0.5)
    assert late.due(rows, 100.125) == []
    assert late.due(rows, 100.126) == rows[:1]  # a lost one is left alone
    assert late.read_block_ms(2000, 0.5) == 62 and late.read_block_ms(40, 0.5) == 40
    assert late.read_block_ms(2000, 0.001) == 1


class StubStore:
    """A queue's touch whose answer takes ``delay_s`` and reports ``lost``."""

    def __init__(self, delay_s: float, lost: list[str]) -> None:
        self.delay_s, self.lost, self.calls = delay_s, lost, 0

    async def touch(self, consumer: str, held: Any, lease_ms: int) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return self.lost, []


@pytest.mark.asyncio
async def test_a_confirmation_marks_lost_entries_and_gives_up_on_late_answers() -> None:
    def rt(store: StubStore) -> Any:
        return SimpleNamespace(stores={"q": store}, consumer="c", lease_ms=1000,
                               keepalive_every_s=0.2)

    rows = [_row("1-0"), _row("2-0")]
    late.stamp(rows, time.monotonic() - 1, 0.2)
    prompt = StubStore(0.0, ["2-0"])
    await late.confirmed(rt(prompt), rows)
    assert [st.verdict for _, st in rows] == ["run", "lost"] and prompt.calls == 1
    assert late.due(rows, time.monotonic()) == []  # confirmed: stamped again

    rows = [_row("3-0")]
    late.stamp(rows, time.monotonic() - 1, 0.2)
    slow = StubStore(0.06, [])  # each answer past 0.05 s: confirmed again, then given up
    await late.confirmed(rt(slow), rows)
    assert rows[0][1].verdict == "unconfirmed" and slow.calls == late.TRIES


@pytest.mark.asyncio
async def test_a_confirmation_that_fails_raises_and_leaves_the_starts_as_they_were() -> None:
    """An outage during the confirmation: the caller (fetcher._start) gives the slots back
    and the entries stay pending, to be reclaimed; nothing is marked run or lost."""

    class Failing(StubStore):
        async def touch(self, consumer: str, held: Any, lease_ms: int) -> Any:
            raise ConnectionError("Redis went away")

    rows = [_row("4-0")]
    late.stamp(rows, time.monotonic() - 1, 0.2)
    stub: Any = SimpleNamespace(stores={"q": Failing(0.0, [])}, consumer="c", lease_ms=1000,
                           keepalive_every_s=0.2)
    with pytest.raises(ConnectionError):
        await late.confirmed(stub, rows)
    assert rows[0][1].verdict == "run" and late.due(rows, time.monotonic()) == rows


class Hold:
    """Holds up the answer of the first call, once ``armed``, that started a job; calls
    ``on_wait`` as the first read with a take behind it begins once it is set."""

    def __init__(self) -> None:
        self.armed = False
        self.on_wait: Callable[[], Awaitable[Any]] | None = None
        self.holding = asyncio.Event()
        self.answered = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.path = ""

    def wait_begins(self) -> None:
        if self.on_wait is not None:
            self.tasks.append(asyncio.create_task(self.on_wait()))
            self.on_wait = None

    async def answer(self, got: Any, started_any: bool, path: str) -> Any:
        if self.armed and started_any:
            self.armed = False
            self.path = path
            self.holding.set()
            await asyncio.sleep(LATE_S)
            self.answered.set()
        return got


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["take", "wait_then_take", "reclaim"])
async def test_a_job_taken_over_while_its_start_was_answered_late_runs_once(
        real: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        path: str) -> None:
    caplog.set_level(logging.WARNING, logger="asyncjobs.worker")
    runs: Counter[str] = Counter()
    ran_before_answer: list[bool] = []
    hold = Hold()
    enqueued: list[asyncjobs.Job[Any]] = []

    async def on_wait() -> None:
        hold.armed = True
        enqueued.append(await pool.enqueue(counted))

    @asyncjobs.task(name="counted")
    async def counted(ctx: Context) -> None:
        runs[ctx.job_id] += 1
        ran_before_answer.append(not hold.answered.is_set())

    @asyncjobs.task(name="warm")
    async def warm(ctx: Context) -> None:
        # this job's first step runs before A's fetch loop goes on to its next wait
        hold.on_wait = hold.on_wait or on_wait

    take_levels = fetcher.take_levels
    wait_then_run = Reader.wait_then_run
    start = QueueStore.start

    async def held_take(*args: Any, **kwargs: Any) -> Any:
        got = await take_levels(*args, **kwargs)
        return await hold.answer(got, bool(got.rows), "take")

    async def held_wait_then_run(self: Reader, *args: Any, **kwargs: Any) -> Any:
        hold.wait_begins()
        woke, ran = await wait_then_run(self, *args, **kwargs)
        rows = not isinstance(ran, Exception) and bool(taken_from(ran).rows)
        return await hold.answer((woke, ran), rows, "wait_then_take")

    async def held_start(self: QueueStore, *args: Any, **kwargs: Any) -> Any:
        got = await start(self, *args, **kwargs)
        return await hold.answer(got, bool(got), "reclaim")

    monkeypatch.setattr(fetcher, "take_levels", held_take)
    monkeypatch.setattr(Reader, "wait_then_run", held_wait_then_run)
    monkeypatch.setattr(QueueStore, "start", held_start)
    a = real.worker([counted, warm], claim_timeout=CLAIM_S)
    b = real.worker([counted, warm], claim_timeout=CLAIM_S)
    async with real.pool() as pool:
        if path == "take":  # waiting when A starts: its first take takes it
            job = await pool.enqueue(counted)
            hold.armed = True
        elif path == "reclaim":  # held by a consumer that died: A reclaims it
            job = await pool.enqueue(counted)
            store = pool.store("default")
            await store.ensure_group()
            [dead] = await store.take("dead", 1)
            assert dead.verdict == "run"
            hold.armed = True
        async with running(real, a):
            if path == "wait_then_take":
                # Once A has run a job, its wait has a take behind it: the job is enqueued
                # as that wait begins, and taken as it ends
                await (await pool.enqueue(warm)).result(timeout=10)
            await asyncio.wait_for(hold.holding.wait(), 15)
            began = time.monotonic()  # A's answer is held from here
            assert hold.path == path
            if path == "wait_then_take":
                # The wait can wake on the job, and its take be held, before the enqueue's
                # own reply has reached on_wait: its task has yet to record the job.
                await asyncio.wait_for(asyncio.gather(*hold.tasks), 10)
                [job] = enqueued
            assert (await job.info()).state == asyncjobs.JobState.RUNNING  # started by A
            async with running(real, b):
                await asyncio.wait_for(hold.answered.wait(), LATE_S + 2)
                await until_logged(caplog, "taken over by another worker before they "
                                   "started here", 10)  # A has had its answer, and said so
                assert await job.result(timeout=10) is None
        assert time.monotonic() - began >= LATE_S - 0.1
    assert runs == {job.id: 1}
    assert ran_before_answer == [True], "B did not take the job over in time: no test"
    warned = [r.getMessage() for r in caplog.records
              if "taken over by another worker before they started here" in r.getMessage()]
    assert len(warned) == 1 and job.id in warned[0], warned


@pytest.mark.asyncio
async def test_a_start_held_up_by_another_queues_take_is_confirmed(
        real: Backend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Worker A serves two queues: its take of the first is answered in time, then Redis
    stalls before it answers the take of the second (held up here). The first queue's job,
    taken over by B meanwhile, must not run on A when that answer comes: a start is
    confirmed if its job has not begun in time, whatever held it up."""
    caplog.set_level(logging.WARNING, logger="asyncjobs.worker")
    runs: Counter[str] = Counter()
    holding, answered = asyncio.Event(), asyncio.Event()
    armed = True

    @asyncjobs.task(name="counted")
    async def counted(ctx: Context) -> None:
        runs[ctx.job_id] += 1

    take_levels = fetcher.take_levels

    async def held_take(stores: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        got = await take_levels(stores, *args, **kwargs)
        if armed and stores[0].keys.queue.startswith("second"):
            armed = False
            holding.set()
            await asyncio.sleep(LATE_S)
            answered.set()
        return got

    monkeypatch.setattr(fetcher, "take_levels", held_take)
    a = real.worker([counted], queues=["first", "second"], claim_timeout=CLAIM_S)
    b = real.worker([counted], queues=["first", "second"], claim_timeout=CLAIM_S)
    async with real.pool() as pool:
        job = await pool.enqueue(counted.options(queue="first"))
        async with running(real, a):
            await asyncio.wait_for(holding.wait(), 15)
            assert (await job.info()).state == asyncjobs.JobState.RUNNING  # started by A
            async with running(real, b):
                assert await job.result(timeout=LATE_S + 5) is None  # run by B
                assert not answered.is_set()
                await asyncio.wait_for(answered.wait(), LATE_S + 2)
                await until_logged(caplog, "taken over by another worker before they "
                                   "started here", 10)
    assert runs == {job.id: 1}


async def until_logged(caplog: pytest.LogCaptureFixture, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not any(text in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, f"not logged: {text}"
        await asyncio.sleep(0.02)


CHECK_LATE_S = 7.0
"""How long A's limit check answer is held up. A's fetch loop is free meanwhile: its own
reclaimer may take its entry back first (up to 2.25 s in), and B only 2.25 s after that."""


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", ["rate", "concurrency"])
async def test_a_job_whose_limit_check_was_answered_late_is_confirmed(
        real: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        limit: str) -> None:
    """A limited task's job is checked against its limit after it starts, and the
    keep-alive leaves its entry alone meanwhile: a check answered late (a stall) left it
    idle long enough for B to take it over, and A ran it too when the answer came. A job
    whose checks were answered late is confirmed before it runs."""
    caplog.set_level(logging.WARNING, logger="asyncjobs.worker")
    runs: Counter[str] = Counter()
    holding, answered = asyncio.Event(), asyncio.Event()
    armed = True
    options: dict[str, Any] = ({"rate_limit": "100/s"} if limit == "rate"
                               else {"concurrency_limit": 5})

    @asyncjobs.task(name="limited", **options)
    async def limited(ctx: Context) -> None:
        runs[ctx.job_id] += 1

    checks = limiter.RateChecks if limit == "rate" else limiter.LeaseChecks
    method = "check" if limit == "rate" else "acquire"
    real_call = getattr(checks, method)

    async def held(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        got = await real_call(self, *args, **kwargs)
        if armed:
            armed = False
            holding.set()
            await asyncio.sleep(CHECK_LATE_S)
            answered.set()
        return got

    monkeypatch.setattr(checks, method, held)
    a = real.worker([limited], claim_timeout=CLAIM_S)
    b = real.worker([limited], claim_timeout=CLAIM_S)
    async with real.pool() as pool:
        job = await pool.enqueue(limited)
        async with running(real, a):
            await asyncio.wait_for(holding.wait(), 15)
            async with running(real, b):
                assert await job.result(timeout=CHECK_LATE_S + 5) is None  # run by B
                assert not answered.is_set()
                await asyncio.wait_for(answered.wait(), CHECK_LATE_S + 2)
                # A confirms the entry (taken over: not run), unless its keep-alive, which
                # touches the entry again once the check is answered, finds it lost first
                # (the attempt is cancelled before it runs): either way within moments;
                # the old code ran it as the answer came
                await asyncio.sleep(1.5)
    assert runs == {job.id: 1}
