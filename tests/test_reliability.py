"""Bad input, retries, abort, expiry, dead letters and ownership, on both backends."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._worker import serving as worker_module

from .conftest import Backend, running

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]


@asyncjobs.task
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


async def burst(backend: Backend, tasks: list[Any], **options: Any) -> None:
    await backend.run(backend.worker(tasks, burst=True, **options))


async def dead(pool: asyncjobs.Pool) -> list[asyncjobs._producer.deadletters.DeadLetter]:
    return await pool.admin.dead_letters(newest_first=False)


async def test_unknown_task_is_dead_lettered_and_the_worker_goes_on(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    lost = await pool.enqueue("no_such_task", 1)
    fine = await pool.enqueue(add, 1, 2)
    await burst(backend, [add])
    assert await fine.result(timeout=5) == 3
    with pytest.raises(asyncjobs.JobFailed) as caught:
        await lost.result(timeout=5)
    assert caught.value.type == "asyncjobs.UnknownTask"
    assert "unknown task 'no_such_task' (this worker knows: add)" in caught.value.remote_message
    [letter] = await dead(pool)
    assert letter.job_id == lost.id and "unknown task" in letter.reason


async def test_garbage_written_into_the_stream_is_dead_lettered(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    stream = pool.keys("default").stream
    await pool.client.xadd(stream, {"junk": "\x00\xff not a job"})
    await pool.client.xadd(stream, {"i": "ghost-job"})
    fine = await pool.enqueue(add, 2, 2)
    await burst(backend, [add])
    assert await fine.result(timeout=5) == 4
    letters = await dead(pool)
    assert [(d.job_id, d.reason) for d in letters] == [
        ("", "entry has no job id"),
        ("ghost-job", "no job record for job id 'ghost-job'"),
    ]
    assert letters[0].fields["junk"] == "\x00\xff not a job"  # the raw entry is kept
    assert await pool.client.xlen(stream) == 0


async def test_undecodable_payload_and_bad_arguments_are_dead_lettered(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    corrupt = await pool.enqueue(add, 1, 1)
    await pool.client.hset(pool.keys("default").job(corrupt.id), "j", b"\xc1garbage")
    wrong = await pool.enqueue("add", "one", 1)  # by name: the worker checks the types
    fine = await pool.enqueue(add, 5, 5)
    await burst(backend, [add])
    assert await fine.result(timeout=5) == 10
    with pytest.raises(asyncjobs.JobFailed) as bad_payload:
        await corrupt.result(timeout=5)
    assert bad_payload.value.type == "asyncjobs.UndecodablePayload"
    with pytest.raises(asyncjobs.JobFailed) as bad_args:
        await wrong.result(timeout=5)
    assert bad_args.value.type == "asyncjobs.BadArguments"
    assert "argument 'a'" in bad_args.value.remote_message
    assert {d.job_id for d in await dead(pool)} == {corrupt.id, wrong.id}


class Flaky(Exception):
    pass


@asyncjobs.task(max_tries=4, backoff=0.01, retry_on=(Flaky,))
async def flaky(ctx: Context) -> dict[str, Any]:
    if ctx.attempt < 3:
        raise Flaky(f"attempt {ctx.attempt} failed")
    return {"attempt": ctx.attempt, "seen": [e.message for e in ctx.errors]}


async def test_retries_carry_attempt_number_and_error_history(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    job = await pool.enqueue(flaky)
    await burst(backend, [flaky])
    result = await job.result(timeout=5)
    assert result == {"attempt": 3, "seen": ["attempt 1 failed", "attempt 2 failed"]}
    info = await job.info()
    assert info.attempts == 3 and [e.attempt for e in info.errors] == [1, 2]
    assert all(e.type.endswith("Flaky") and "raise Flaky" in e.traceback for e in info.errors)
    stats = await pool.client.hgetall(pool.keys("default").stats)
    assert int(stats[b"retry"]) == 2 and int(stats[b"complete"]) == 1


@asyncjobs.task(max_tries=5, retry_on=(Flaky,))
async def picky(ctx: Context, kind: str) -> int:
    if kind == "value":
        raise ValueError("not retryable for this task")
    if ctx.attempt == 1:
        raise asyncjobs.Retry(delay=0.3, reason="rate limited")
    return ctx.attempt


async def test_explicit_retry_waits_its_delay_and_other_errors_do_not_retry(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    later = await pool.enqueue(picky, "retry")
    never = await pool.enqueue(picky, "value")
    await burst(backend, [picky])
    assert await later.result(timeout=5) == 2
    info = await later.info()
    assert info.errors[0].type == "asyncjobs.exceptions.Retry"
    assert info.started_at and info.errors[0].at
    assert (info.started_at - info.errors[0].at).total_seconds() >= 0.29
    with pytest.raises(asyncjobs.JobFailed):
        await never.result(timeout=5)
    never_info = await never.info()
    assert never_info.attempts == 1
    assert never_info.dead_letter_reason == "raised ValueError (not retryable)"


async def test_a_retry_waits_in_the_delayed_set(backend: Backend, pool: asyncjobs.Pool) -> None:
    @asyncjobs.task(name="later", backoff=30, max_tries=2)
    async def later(ctx: Context) -> None:
        raise ConnectionError("down")

    job = await pool.enqueue(later)
    async with running(backend, backend.worker([later])):
        for _ in range(100):
            if await job.status() is JobState.SCHEDULED:
                break
            await asyncio.sleep(0.02)
        info = await job.info()
    assert info.state is JobState.SCHEDULED and info.attempts == 1
    assert info.scheduled_for and info.errors and info.scheduled_for >= info.errors[0].at
    assert await pool.client.zscore(pool.keys("default").delayed, job.id) is not None


async def test_abort_a_queued_and_a_scheduled_job_before_they_start(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    queued = await pool.enqueue(add, 1, 1)
    scheduled = await pool.enqueue(add.options(delay=60), 1, 1)
    assert await queued.abort() is True and await scheduled.abort() is True
    assert await queued.abort() is False  # already ended
    await burst(backend, [add])
    for job in (queued, scheduled):
        assert await job.status() is JobState.ABORTED
        with pytest.raises(asyncjobs.JobAborted):
            await job.result(timeout=1)
        assert (await job.info()).started_at is None
    assert await pool.client.zcard(pool.keys("default").delayed) == 0


def sleeper(began: asyncio.Event, cancelled: asyncio.Event) -> asyncjobs.Task[[], None]:
    """A task ("long") that sets ``began``, sleeps 30 s, and sets ``cancelled`` if it is."""
    @asyncjobs.task(name="long")
    async def long(ctx: Context) -> None:
        began.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return long


async def test_abort_a_running_job_cancels_it(backend: Backend, pool: asyncjobs.Pool) -> None:
    began, cancelled = asyncio.Event(), asyncio.Event()
    long = sleeper(began, cancelled)

    job = await pool.enqueue(long)
    async with running(backend, backend.worker([long])):
        # The body runs (its record says `running` a little before).
        await asyncio.wait_for(began.wait(), 10)
        assert await job.abort() is True
        await asyncio.wait_for(cancelled.wait(), 2)
        with pytest.raises(asyncjobs.JobAborted):
            await job.result(timeout=3)
    assert (await job.info()).state is JobState.ABORTED


async def test_an_abort_no_worker_heard_is_found_as_soon_as_the_worker_listens(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker runs jobs before its pub/sub is subscribed (held back here until `gate`):
    # an abort published meanwhile reaches nobody. Once it listens, it checks at once.
    gate = asyncio.Event()
    subscribe_for_real = worker_module.events_loop

    async def late_events(*args: Any) -> None:
        await gate.wait()
        await subscribe_for_real(*args)

    monkeypatch.setattr(worker_module, "events_loop", late_events)
    began, cancelled = asyncio.Event(), asyncio.Event()
    long = sleeper(began, cancelled)

    job = await pool.enqueue(long)
    # A 60 s claim timeout: the keep-alive's own rounds (which also find aborts) are 10 s apart.
    async with running(backend, backend.worker([long], claim_timeout=60)):
        await asyncio.wait_for(began.wait(), 10)
        assert await job.abort() is True
        await asyncio.sleep(0.3)
        assert not cancelled.is_set()  # the notice went to nobody
        gate.set()
        await asyncio.wait_for(cancelled.wait(), 3)
        with pytest.raises(asyncjobs.JobAborted):
            await job.result(timeout=3)


async def test_expired_jobs_never_run(backend: Backend, pool: asyncjobs.Pool) -> None:
    ran: list[str] = []

    @asyncjobs.task(name="note")
    async def note(ctx: Context, label: str) -> None:
        ran.append(label)

    soon = await pool.enqueue(note.options(expires=0.05), "queued")
    late = await pool.enqueue(note.options(delay=0.3, expires=0.1), "delayed")
    ok = await pool.enqueue(note.options(expires=60), "fresh")
    await asyncio.sleep(0.1)
    await burst(backend, [note])
    assert ran == ["fresh"]
    for job in (soon, late):
        with pytest.raises(asyncjobs.JobExpired):
            await job.result(timeout=1)
    assert await ok.status() is JobState.COMPLETE
    stats = await pool.client.hgetall(pool.keys("default").stats)
    assert int(stats[b"expired"]) == 2


async def test_dead_letters_can_be_listed_requeued_with_history_and_purged(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    fail_first = {"on": True}

    @asyncjobs.task(name="payment", max_tries=1)
    async def payment(ctx: Context, cents: int) -> int:
        if fail_first["on"]:
            raise RuntimeError("gateway down")
        return cents

    jobs = [await pool.enqueue(payment, c) for c in (100, 200, 300)]
    await burst(backend, [payment])
    assert [d.job_id for d in await dead(pool)] == [j.id for j in jobs]
    fail_first["on"] = False
    outcome = await pool.admin.requeue([jobs[0].id, "nope"])
    assert outcome == {jobs[0].id: "queued", "nope": "missing"}
    assert await pool.admin.requeue([jobs[1].id, jobs[1].id]) == {jobs[1].id: "queued"}
    await burst(backend, [payment])
    assert await jobs[0].result(timeout=5) == 100 and await jobs[1].result(timeout=5) == 200
    info = await jobs[0].info()
    assert info.id == jobs[0].id and [e.message for e in info.errors] == ["gateway down"]
    assert [d.job_id for d in await dead(pool)] == [jobs[2].id]
    assert await pool.admin.purge_dead() == 1
    assert await dead(pool) == []
    with pytest.raises(asyncjobs.JobNotFound):
        await jobs[2].status()


async def test_a_slow_job_on_a_live_worker_is_never_taken(backend: Backend,
                                                          pool: asyncjobs.Pool) -> None:
    starts: list[str] = []

    @asyncjobs.task(name="slowpoke", timeout=30)
    async def slowpoke(ctx: Context) -> str:
        starts.append(ctx.worker)
        await asyncio.sleep(3.5)  # more than twice the claim timeout
        return "done"

    job = await pool.enqueue(slowpoke)
    first = backend.worker([slowpoke], claim_timeout=1.5)
    second = backend.worker([slowpoke], claim_timeout=1.5)
    async with running(backend, first), running(backend, second):
        assert await job.result(timeout=10) == "done"
    assert len(starts) == 1
    assert (await job.info()).attempts == 1


async def test_a_shorter_claim_timeout_never_takes_a_live_worker_s_job(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """A deploy that lowers ``claim_timeout``: the worker that runs the job refreshes its
    entry every 2 s (a sixth of its 12 s), the new one would take over an entry idle for
    0.5 s (half of its 1 s). Each heartbeat tells every worker the largest claim timeout a
    live one declares, and nobody takes over an entry idle for less than half of that."""
    starts: list[str] = []
    began = asyncio.Event()

    @asyncjobs.task(name="steady", timeout=30, concurrency_limit=1)
    async def steady(ctx: Context) -> str:
        starts.append(ctx.worker)
        began.set()
        await asyncio.sleep(4)
        return "done"

    job = await pool.enqueue(steady)
    old = backend.worker([steady], claim_timeout=12)
    new = backend.worker([steady], claim_timeout=1)
    async with running(backend, old):
        await asyncio.wait_for(began.wait(), 10)
        async with running(backend, new):
            assert await job.result(timeout=15) == "done"
    assert starts == [old.name]
    info = await job.info()
    assert info.attempts == 1 and info.errors == ()


async def test_a_longer_claim_timeout_joining_refreshes_at_the_fleet_s_pace(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """The other way round: a worker with 2 s runs first, so until its next heartbeat (5 s
    away) it takes over entries idle for 1 s; then one with 60 s joins and takes a job. The
    newcomer's first heartbeat tells it a shorter claim timeout is live: it refreshes its
    entries every sixth of that, not every 10 s, and nothing is taken from it. The first
    worker's one slot stays taken until the newcomer has started the job (a fixed second
    let the first worker start it itself when the newcomer was slow to start)."""
    starts: list[str] = []
    busy, began = asyncio.Event(), asyncio.Event()

    @asyncjobs.task(name="blocker", timeout=30)
    async def blocker(ctx: Context) -> None:
        busy.set()
        await asyncio.wait_for(began.wait(), 20)

    @asyncjobs.task(name="long_one", timeout=30)
    async def long_one(ctx: Context) -> str:
        starts.append(ctx.worker)
        began.set()
        await asyncio.sleep(4)
        return "done"

    await pool.enqueue(blocker)
    short = backend.worker([blocker, long_one], claim_timeout=2, concurrency=1)
    joining = backend.worker([blocker, long_one], claim_timeout=60)
    async with running(backend, short):
        await asyncio.wait_for(busy.wait(), 10)  # its one slot is taken for a second
        job = await pool.enqueue(long_one)
        async with running(backend, joining):
            await asyncio.wait_for(began.wait(), 10)
            assert await job.result(timeout=15) == "done"
    assert starts == [joining.name]
    info = await job.info()
    assert info.attempts == 1 and info.errors == ()


async def test_the_fleet_s_claim_timeouts_lapse_with_their_workers(pool: asyncjobs.Pool) -> None:
    """beat.lua: the answer is the largest claim timeout declared by a worker whose
    declaration has not lapsed (its record's TTL), this one's included; garbage in the key
    is replaced, members that are not claim timeouts are ignored."""
    from asyncjobs._redis import scripts

    keys = pool.global_keys
    beat = scripts.load(scripts.BEAT)

    async def declare(name: str, claim_ms: int, ttl_s: int = 1) -> int:
        _, most, _ = await beat(pool.client,
                                [keys.workers, keys.worker(name), keys.claim_timeouts],
                                [name, 86_400_000, "{}", ttl_s, claim_ms])
        return int(most)

    await pool.client.set(keys.claim_timeouts, "garbage")
    assert await declare("old", 60_000) == 60_000
    assert await declare("new", 2_000, ttl_s=5) == 60_000  # the old worker still declares
    seconds, _ = await pool.client.time()
    soon = seconds * 1000 + 60_000
    await pool.client.zadd(keys.claim_timeouts, {"abc": soon, "3600001": soon, "1e300": soon,
                                                 "0x36EE80": soon, " 3000000": soon})
    assert await declare("new", 2_000, ttl_s=5) == 60_000
    # a declaration lapsing more than 10 minutes ahead (written by hand, or a clock that
    # stepped back) is not one: a dead worker's jobs never wait on it
    await pool.client.zadd(keys.claim_timeouts, {"3600000": float("inf")})
    assert await declare("new", 2_000, ttl_s=5) == 60_000
    await asyncio.sleep(1.1)  # the old worker's declaration lapses: it beats no more
    assert await declare("new", 2_000, ttl_s=5) == 2_000
    left = await pool.client.zrange(keys.claim_timeouts, 0, -1)
    assert b"60000" not in left and b"2000" in left


async def test_a_worker_whose_heartbeat_fails_still_reclaims(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an answer from the registry (here an ACL refusing its keys) a worker waits
    three heartbeats, then takes over entries by its own claim timeout: a dead worker's job
    is never left stuck."""
    from redis.exceptions import NoPermissionError

    import asyncjobs._worker.upkeep as upkeep

    async def refused(*_: Any) -> None:
        raise NoPermissionError("NOPERM this user has no permissions to access one of the "
                                "keys used as arguments")

    monkeypatch.setattr(upkeep, "_beat", refused)
    job = await pool.enqueue(add, 20, 22)
    keys = pool.keys("default")
    await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
    await pool.client.xreadgroup("asyncjobs", "ghost", {keys.stream: ">"}, count=10)
    worker = backend.worker([add], claim_timeout=1.5).configure(heartbeat_every_s=0.3)
    async with running(backend, worker):
        assert await job.result(timeout=6) == 42
    assert (await job.info()).errors[0].type == "asyncjobs.WorkerLost"


async def test_a_worker_that_lost_its_entry_cancels_and_does_not_settle(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    began, cancelled = asyncio.Event(), asyncio.Event()

    @asyncjobs.task(name="held", timeout=30)
    async def held(ctx: Context) -> str:
        began.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "should not finish"

    job = await pool.enqueue(held)
    keys = pool.keys("default")
    async with running(backend, backend.worker([held], claim_timeout=1.5)):
        await asyncio.wait_for(began.wait(), 10)  # the body runs
        entry = (await pool.client.hget(keys.job(job.id), "e")).decode()
        # Another consumer takes the entry (as a reclaim after a stall would).
        await pool.client.xclaim(keys.stream, "asyncjobs", "thief", 0, [entry], justid=True)
        await asyncio.wait_for(cancelled.wait(), 3)
    pending = await pool.client.xpending_range(keys.stream, "asyncjobs", "-", "+", 10)
    assert [(p["message_id"].decode(), p["consumer"].decode()) for p in pending] == [
        (entry, "thief")
    ]
    assert await job.status() is JobState.RUNNING  # the thief owns the outcome now


async def test_entries_of_a_dead_consumer_are_reclaimed_and_run(backend: Backend,
                                                                pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(add, 20, 22)
    keys = pool.keys("default")
    await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
    # A consumer reads the job and dies before starting it.
    await pool.client.xreadgroup("asyncjobs", "ghost", {keys.stream: ">"}, count=10)
    started = asyncio.get_running_loop().time()
    async with running(backend, backend.worker([add], claim_timeout=1.5)):
        assert await job.result(timeout=5) == 42
    assert asyncio.get_running_loop().time() - started < 1.5 + 1.0
    info = await job.info()
    assert info.errors[0].type == "asyncjobs.WorkerLost"
    pending = await pool.client.xpending(keys.stream, "asyncjobs")
    assert pending["pending"] == 0


async def test_idle_consumers_that_hold_nothing_are_pruned(backend: Backend,
                                                           pool: asyncjobs.Pool) -> None:
    store = pool.store("default")
    await store.ensure_group()
    stream = store.keys.stream
    for consumer in ("holder", "finished"):
        await pool.client.xadd(stream, {"i": consumer})
        got = await pool.client.xreadgroup("asyncjobs", consumer, {stream: ">"}, count=1)
    await pool.client.xack(stream, "asyncjobs", got[0][1][0][0])  # "finished" holds nothing
    await asyncio.sleep(0.05)
    assert await store.prune_consumers(10_000, keep="me") == 0  # not idle long enough
    assert await store.prune_consumers(10, keep="finished") == 0  # kept by name
    assert await store.prune_consumers(10, keep="me") == 1
    left = await pool.client.xinfo_consumers(stream, "asyncjobs")
    assert [(c["name"], c["pending"]) for c in left] == [(b"holder", 1)]


async def test_a_draining_worker_keeps_its_heartbeat(backend: Backend,
                                                     pool: asyncjobs.Pool) -> None:
    @asyncjobs.task(name="long_job", timeout=30)
    async def long_job(ctx: Context) -> str:
        await asyncio.sleep(3.5)
        return "finished during shutdown"

    job = await pool.enqueue(long_job)
    worker = backend.worker([long_job], shutdown_grace=20).configure(heartbeat_every_s=0.2)
    async with running(backend, worker):
        while await job.status() is not JobState.RUNNING:
            await asyncio.sleep(0.02)
        worker.stop()
        await asyncio.sleep(3.0)  # longer than the fetch-stall threshold (2 s + 3 beats)
        [seen] = await pool.admin.workers()
        assert seen.stopping and seen.running == 1
        assert (datetime.now(UTC) - seen.last_beat).total_seconds() < 1.0
    assert await job.result(timeout=5) == "finished during shutdown"


async def test_a_draining_worker_keeps_its_entries_so_nobody_steals_them(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    starts: list[str] = []

    @asyncjobs.task(name="long_drain", timeout=30)
    async def long_drain(ctx: Context) -> str:
        starts.append(ctx.worker)
        await asyncio.sleep(3.0)  # twice the claim timeout, all of it during the drain
        return "finished once"

    job = await pool.enqueue(long_drain)
    leaving = backend.worker([long_drain], claim_timeout=1.5, shutdown_grace=20)
    staying = running(backend, backend.worker([long_drain], claim_timeout=1.5))
    async with running(backend, leaving):
        # The body runs (its record says `running` a little before).
        deadline = time.monotonic() + 10
        while not starts and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert starts == [leaving.name]
        await staying.__aenter__()  # another worker with free slots, scanning to reclaim
    # `leaving` has drained (~3 s, twice the claim timeout) while `staying` scanned.
    try:
        assert await job.result(timeout=10) == "finished once"
    finally:
        await staying.__aexit__()
    assert starts == [leaving.name]


async def test_a_second_stop_cancels_at_once_and_hands_the_job_back(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    @asyncjobs.task(name="stubborn", timeout=60)
    async def stubborn(ctx: Context) -> None:
        await asyncio.sleep(30)

    job = await pool.enqueue(stubborn)
    worker = backend.worker([stubborn], shutdown_grace=30)
    loop = asyncio.get_running_loop()
    async with running(backend, worker):
        while await job.status() is not JobState.RUNNING:
            await asyncio.sleep(0.02)
        worker.stop()
        await asyncio.sleep(0.3)
        began = loop.time()
        worker.stop(now=True)  # a second Ctrl-C
    assert loop.time() - began < 5.0  # not the 30 s grace
    info = await job.info()
    assert info.state is JobState.QUEUED and info.attempts == 0


async def test_an_entry_with_a_non_utf8_job_id_is_dead_lettered(backend: Backend,
                                                                 pool: asyncjobs.Pool) -> None:
    stream = pool.keys("default").stream
    await pool.client.xadd(stream, {b"i": b"\xff\xfe-not-utf8"})
    fine = await pool.enqueue(add, 3, 4)
    await burst(backend, [add])
    assert await fine.result(timeout=5) == 7
    [letter] = await dead(pool)
    assert letter.reason == "the job id is not valid UTF-8"
    assert await pool.client.xlen(stream) == 0


async def test_a_cancelled_error_raised_by_task_code_is_an_error(backend: Backend,
                                                                 pool: asyncjobs.Pool) -> None:
    @asyncjobs.task(name="awaits_a_cancelled_future", max_tries=1)
    async def awaits_a_cancelled_future(ctx: Context) -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError although nobody cancelled this task

    job = await pool.enqueue(awaits_a_cancelled_future)
    await burst(backend, [awaits_a_cancelled_future])
    with pytest.raises(asyncjobs.JobFailed) as caught:
        await job.result(timeout=5)
    assert caught.value.type == "asyncio.exceptions.CancelledError"


async def test_a_job_cancelled_before_its_first_step_gives_its_slot_back(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    from asyncjobs._worker import executor as _executor

    @asyncjobs.task(name="quick")
    async def quick(ctx: Context) -> int:
        return 1

    original = _executor.Executor.start

    def start_then_abort(self: Any, queue: str, started: Any) -> None:
        original(self, queue, started)
        self.cancel(self.running[(queue, started.delivery.entry)], "abort")  # same step

    jobs = [await pool.enqueue(quick) for _ in range(3)]
    _executor.Executor.start = start_then_abort  # type: ignore[method-assign]
    try:
        await burst(backend, [quick], concurrency=1)  # one slot: a leak would hang here
    finally:
        _executor.Executor.start = original  # type: ignore[method-assign]
    for job in jobs:
        assert await job.status() is JobState.ABORTED


async def test_cancelling_the_worker_task_still_hands_its_jobs_back(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    @asyncjobs.task(name="held_on_cancel", timeout=60)
    async def held_on_cancel(ctx: Context) -> None:
        await asyncio.sleep(30)

    job = await pool.enqueue(held_on_cancel)
    worker = backend.worker([held_on_cancel], shutdown_grace=30)
    runner = asyncio.create_task(backend.run(worker))  # an app running a worker in a task
    while await job.status() is not JobState.RUNNING:
        await asyncio.sleep(0.02)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 10)
    info = await job.info()
    assert info.state is JobState.QUEUED and info.attempts == 0
    pending = await pool.client.xpending(pool.keys("default").stream, "asyncjobs")
    assert pending["pending"] == 0


async def test_progress_from_a_worker_that_lost_the_job_is_ignored(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    store = pool.store("default")
    job = await pool.enqueue(add, 1, 1)
    key = pool.keys("default").job(job.id)
    await pool.client.hset(key, mapping={"s": "running", "w": "worker-a"})
    report = b"\x93\xcb?\xe0\x00\x00\x00\x00\x00\x00\xa0\x00"  # Progress(0.5, "", 0)
    assert await store.progress(job.id, report, "worker-a")
    assert not await store.progress(job.id, b"late", "worker-b")  # not running there
    await pool.client.delete(key)
    assert not await store.progress(job.id, b"late", "worker-a")
    assert await pool.client.exists(key) == 0  # no record recreated


async def test_purge_keeps_the_record_of_a_job_requeued_meanwhile(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    @asyncjobs.task(name="always_fails", max_tries=1)
    async def always_fails(ctx: Context) -> None:
        raise RuntimeError("no")

    gone, back = await pool.enqueue(always_fails), await pool.enqueue(always_fails)
    await burst(backend, [always_fails])
    letters = await dead(pool)
    assert await pool.admin.requeue([back.id]) == {back.id: "queued"}
    # A purge that listed the letters before the requeue must not delete `back`'s record.
    store = pool.store("default")
    pairs = [(d.entry, d.job_id) for d in letters]
    assert await store.purge_dead(pairs) == 1  # `back`'s letter went with the requeue
    assert await back.status() is JobState.QUEUED
    with pytest.raises(asyncjobs.JobNotFound):
        await gone.status()
