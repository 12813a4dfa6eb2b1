"""Hostile cases for the running-job half of the waiting jobs' repair (reschedule.lua,
``Scheduler._revive``): a record that says ``running`` but whose stream entry no reclaim
will ever take over (an "orphan") is put back in the stream once two passes found it
unchanged and its record untouched for the claim timeout (a live worker keeping it stamps
its ``kt`` at each keep-alive, touch.lua). The review found five defects in the first
version, which took a worker's heartbeat key for its liveness; their tests follow, and all
pass since (the history one, a strict xfail at first, once start_entry said `resumed`).

The guarantees attacked: a job a live worker still runs is never revived (it would run
twice at once); a revived job runs and ends visibly, as a reclaimed one does; garbage in a
record never makes the repair raise, spin, or leave a job running for ever."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest

import asyncjobs
from asyncjobs._redis.keys import GROUP, GlobalKeys
from asyncjobs._redis.store import QueueStore, reschedule_levels, revive_levels
from asyncjobs._redis.values import Orphan
from asyncjobs._routing import members
from asyncjobs._worker.runtime import Runtime

from .conftest import Backend, running
from .passes import count_passes, frequent_passes


@asyncjobs.task(name="revive_hostile_echo")
async def echo(ctx: asyncjobs.Context, n: int) -> int:
    return n


RUNS: list[tuple[str, int, str]] = []
"""(job id, attempt, 'start' | 'end') of every attempt of ``slow``, in order."""


@asyncjobs.task(name="revive_hostile_slow", max_tries=1, timeout=60)
async def slow(ctx: asyncjobs.Context, seconds: float) -> str:
    RUNS.append((ctx.job_id, ctx.attempt, "start"))
    try:
        await asyncio.sleep(seconds)
    finally:
        RUNS.append((ctx.job_id, ctx.attempt, "end"))
    return "done"


def most_at_once(job_id: str) -> int:
    """The most attempts of ``job_id`` that ran at the same time (from ``RUNS``)."""
    now = most = 0
    for jid, _, what in RUNS:
        if jid == job_id:
            now += 1 if what == "start" else -1
            most = max(most, now)
    return most


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def _run_on(pool: asyncjobs.Pool, job: asyncjobs.Job[Any], worker: str,
                  queue: str = "default", attempts: int = 1) -> bytes:
    """Make ``job`` look taken and started by ``worker``: its entry pending for that
    consumer, its record running there; the entry id."""
    client, stream = pool.client, pool.keys(queue).stream
    if not await client.xinfo_groups(stream):
        await client.xgroup_create(stream, GROUP, id="0")
    taken = await client.xreadgroup(GROUP, worker, {stream: ">"}, count=1)
    entry: bytes = taken[0][1][0][0]
    assert await client.hget(pool.keys(queue).job(job.id), "e") == entry
    await client.hset(pool.keys(queue).job(job.id),
                      mapping={"s": "running", "w": worker, "a": attempts, "st": 1})
    return entry


async def _pass(stores: list[QueueStore]) -> list[Orphan]:
    """One whole repair pass over ``stores``; the orphans it reported."""
    found: list[Orphan] = []
    step = await reschedule_levels(stores, "0", 1000)
    found += step.orphans
    while step.cursor != "0":
        step = await reschedule_levels(stores, step.cursor, 1000)
        found += step.orphans
    return found


# -- (1) a live worker's orphaned job ---------------------------------------------------------


@pytest.mark.asyncio
async def test_a_live_worker_whose_fetch_loop_stalls_keeps_its_orphaned_job(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker runs a long job whose pending entry was acknowledged by hand: the worker
    keeps it (touch.lua's ``orphans``: its attempt goes on and settle.lua records it). Its
    fetch loop then stalls for a few seconds (simulated: ``Runtime.fetching`` says so, as
    a stuck read or start would make it), so heartbeat_loop withholds the beat and the
    heartbeat key lapses (TTL 3 x heartbeat_every_s), while the keep-alive, the job, and
    the worker go on: its other jobs stay safe from reclaim (touched every claim_timeout/6).

    The scheduler takes the missing heartbeat key for a dead worker (scheduler.py
    ``_revive``: EXISTS of ``worker:<name>`` is the only liveness test) and puts the job
    back in the stream while its first attempt still runs: a second attempt starts beside
    it (the worker's own fetch loop takes the new entry, whose id differs from the running
    one, so ``fetcher._start``'s "already runs here" check lets it through). The job runs
    twice at once."""
    frequent_passes(monkeypatch)
    passes = count_passes(monkeypatch)
    stalled = asyncio.Event()
    fetching = Runtime.fetching
    monkeypatch.setattr(Runtime, "fetching",
                        lambda self, within_s: not stalled.is_set() and fetching(self, within_s))
    RUNS.clear()
    async with real.pool() as pool:
        client, stream = pool.client, pool.keys("default").stream
        worker = real.worker([slow], lease_ttl=1).configure(heartbeat_every_s=0.3)
        job = await pool.enqueue(slow, 6.0)
        async with running(real, worker):
            async def started() -> bool:
                return any(r[0] == job.id for r in RUNS)
            await wait_for(started, 10, "the job never started")
            entry = await client.hget(pool.keys("default").job(job.id), "e")
            assert await client.xack(stream, GROUP, entry) == 1  # dropped by hand
            stalled.set()  # the fetch loop stalls; the worker is alive, its job runs
            seen = len(passes)

            async def three_passes() -> bool:
                return len(passes) >= seen + 3
            await wait_for(three_passes, 15, "no more passes")
            stalled.clear()
            assert await job.result(timeout=20) == "done"
        assert most_at_once(job.id) == 1, RUNS
        assert (await job.info()).attempts == 1



RELEASE = threading.Event()
"""Set by a test to end ``held`` (not an asyncio one: the tests run on several loops)."""


@asyncjobs.task(name="revive_hostile_held", max_tries=1, timeout=60)
async def held(ctx: asyncjobs.Context) -> str:
    """Runs until the test lets it end (``RELEASE``)."""
    RUNS.append((ctx.job_id, ctx.attempt, "start"))
    try:
        while not RELEASE.is_set():
            await asyncio.sleep(0.02)
    finally:
        RUNS.append((ctx.job_id, ctx.attempt, "end"))
    return "done"


@pytest.mark.asyncio
async def test_a_live_worker_keeps_its_orphaned_job_past_the_claim_timeout(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job running past three claim timeouts and three repair passes on a live worker,
    its pending entry acknowledged by hand at its start: only the worker's keep-alive
    stamps (touch.lua's ``kt``) tell the repair that it is kept (its start is old by then).
    It runs once, and is not put back."""
    frequent_passes(monkeypatch)
    passes = count_passes(monkeypatch)
    RUNS.clear()
    RELEASE.clear()
    async with real.pool() as pool:
        client, stream = pool.client, pool.keys("default").stream
        job = await pool.enqueue(held)
        async with running(real, real.worker([held], lease_ttl=1, claim_timeout=2)):
            async def started() -> bool:
                return any(r[0] == job.id for r in RUNS)
            await wait_for(started, 10, "the job never started")
            entry = await client.hget(pool.keys("default").job(job.id), "e")
            assert await client.xack(stream, GROUP, entry) == 1  # dropped by hand
            dropped, seen = time.monotonic(), len(passes)

            async def long_enough() -> bool:
                return len(passes) >= seen + 3 and time.monotonic() - dropped >= 6

            await wait_for(long_enough, 50, "three passes and three claim timeouts")
            RELEASE.set()
            assert await job.result(timeout=20) == "done"
        assert most_at_once(job.id) == 1, RUNS
        assert (await job.info()).attempts == 1


@asyncjobs.task(name="revive_hostile_first_slow", timeout=60)
async def first_slow(ctx: asyncjobs.Context) -> int:
    """Long on its first attempt (which the test leaves behind), quick afterwards."""
    RUNS.append((ctx.job_id, ctx.attempt, "start"))
    if ctx.attempt == 1:
        await asyncio.sleep(60)
    return ctx.attempt


@pytest.mark.asyncio
async def test_an_orphan_left_by_a_worker_that_runs_again_under_its_name_is_revived(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker runs a long job whose pending entry was then acknowledged by hand (the
    worker keeps it as an orphan). The worker stops; its grace period ends, the attempt is
    cancelled, and as the entry is no longer held nothing is handed back: the record stays
    ``running`` on that worker, which unregisters (its heartbeat key deleted). So far the
    revive's case. But the same ``Worker`` object then runs again (an app restarting its
    worker, a supervisor's rerun): same ``name``, hence the same consumer and heartbeat key.

    The job is never revived: ``Scheduler._revive`` (scheduler.py) treats the name's
    heartbeat key as proof that the worker that started the attempt still runs it, though
    this run of the worker knows nothing of it. A normal reclaim would recover the same job
    (an entry pending for that consumer name goes idle and is claimed), so only the orphan
    stays ``running`` for ever."""
    frequent_passes(monkeypatch)
    passes = count_passes(monkeypatch)
    RUNS.clear()
    async with real.pool() as pool:
        client, stream = pool.client, pool.keys("default").stream
        worker = real.worker([first_slow], lease_ttl=1, shutdown_grace=0.2,
                             claim_timeout=2).configure(heartbeat_every_s=0.3)
        job = await pool.enqueue(first_slow)
        async with running(real, worker):
            async def started() -> bool:
                return any(r[0] == job.id for r in RUNS)
            await wait_for(started, 10, "the job never started")
            entry = await client.hget(pool.keys("default").job(job.id), "e")
            assert await client.xack(stream, GROUP, entry) == 1  # dropped by hand
        record = await client.hmget(pool.keys("default").job(job.id), ["s", "w"])
        assert record == [b"running", worker.name.encode()]
        assert not await client.exists(GlobalKeys(pool.prefix).worker(worker.name))
        async with running(real, worker):  # the same worker, run again
            # two passes, the record untouched for the claim timeout: put back, and run
            assert await job.result(timeout=20) == 2, "the job is still running"
        assert passes



@asyncjobs.task(name="revive_hostile_stubborn", timeout=60)
async def stubborn(ctx: asyncjobs.Context, seconds: float) -> str:
    """Ignores the first cancellation: its body runs ``seconds`` whatever happens."""
    RUNS.append((ctx.job_id, ctx.attempt, "start"))
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(end - time.monotonic())
    finally:
        RUNS.append((ctx.job_id, ctx.attempt, "end"))
    return "done"


@pytest.mark.asyncio
async def test_an_orphan_left_behind_at_shutdown_is_not_revived_while_its_body_runs(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A, embedded in an app (``worker.run``: the process goes on after it), runs a
    job whose entry was acknowledged by hand (A keeps it as an orphan), and whose body
    ignores cancellation. A stops: the grace period ends, the cancel is ignored, the body is
    left behind and goes on in the process. For a *held* entry in this state shutdown.py
    ``handback`` keeps the entry and touches it, so that nobody takes it before the claim
    timeout. For the orphan nothing holds it off: ``unregister`` deletes A's heartbeat key
    at once, and worker B's scheduler revives the job at the end of its next pass (it had
    seen the orphan in the pass before), while A's body still runs: twice at once."""
    frequent_passes(monkeypatch)
    RUNS.clear()
    async with real.pool() as pool:
        client, stream = pool.client, pool.keys("default").stream
        a = real.worker([stubborn], shutdown_grace=0.2, claim_timeout=15).configure(
            heartbeat_every_s=0.3)
        b = real.worker([stubborn], lease_ttl=1)
        job = await pool.enqueue(stubborn, 8.0)
        run_a, run_b = running(real, a), running(real, b)
        await run_a.__aenter__()
        try:
            async def started() -> bool:
                return any(r[0] == job.id for r in RUNS)
            await wait_for(started, 10, "the job never started")
            entry = await client.hget(pool.keys("default").job(job.id), "e")
            assert await client.xack(stream, GROUP, entry) == 1  # dropped by hand
            await run_b.__aenter__()  # B only now: A runs the job
        finally:
            await run_a.__aexit__(None, None, None)  # A stops; the body goes on
        try:
            async def body_ended() -> bool:  # A's left-behind body, 8 s from its start
                return (job.id, 1, "end") in RUNS
            await wait_for(body_ended, 15, "the left-behind body never ended")
        finally:
            await run_b.__aexit__(None, None, None)
        assert most_at_once(job.id) == 1, RUNS


# -- (2) a revived job runs as a reclaimed one does ------------------------------------------


@pytest.mark.asyncio
async def test_a_revived_job_records_its_lost_attempt_as_a_reclaimed_job_does(
    real: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs whose workers died mid-attempt: one's entry still pending for its dead
    consumer (a reclaim takes it over), the other's dropped by hand (the repair revives
    it). Both run a second attempt and both say why: a ``WorkerLost`` entry for the lost
    attempt, once each. The reclaimed entry says so by its delivery count; the revived
    job's new entry (reschedule.lua ``put_in_stream``, XADD) is delivered once, so only its
    record, still ``running`` when the next attempt starts (start_entry's ``resumed``), can.
    This test failed before that (a strict xfail): ``info.errors`` was empty though
    attempts said 2."""
    frequent_passes(monkeypatch)
    async with real.pool() as pool:
        client, stream = pool.client, pool.keys("default").stream
        reclaimed = await pool.enqueue(echo, 1)
        await _run_on(pool, reclaimed, "dead-a")
        revived = await pool.enqueue(echo, 2)
        entry = await _run_on(pool, revived, "dead-b")
        assert await client.xack(stream, GROUP, entry) == 1
        async with running(real, real.worker([echo], lease_ttl=1, claim_timeout=1)):
            assert await reclaimed.result(timeout=15) == 1
            assert await revived.result(timeout=15) == 2
        a, b = await reclaimed.info(), await revived.info()
        assert a.attempts == b.attempts == 2
        assert [(e.type, e.attempt) for e in a.errors] == [("asyncjobs.WorkerLost", 1)]
        assert [(e.type, e.attempt) for e in b.errors] == [("asyncjobs.WorkerLost", 1)]


@pytest.mark.asyncio
async def test_an_attempt_lost_when_the_group_is_made_again_is_recorded_once(
    real: Backend,
) -> None:
    """A worker died mid-attempt and the consumer group was then destroyed and made again
    from id 0 (by hand): its entry comes back to the next worker as a new delivery (one
    delivery, no reclaim). The job runs its second attempt and its history says the first
    was lost, once; a job that was only queued when the group went gets no such entry."""
    async with real.pool() as pool:
        client, stream = pool.client, pool.keys("default").stream
        lost = await pool.enqueue(echo, 1)
        await _run_on(pool, lost, "dead")
        waiting = await pool.enqueue(echo, 2)
        assert await client.xgroup_destroy(stream, GROUP) == 1
        await client.xgroup_create(stream, GROUP, id="0")
        async with running(real, real.worker([echo], lease_ttl=1)):
            assert await lost.result(timeout=15) == 1
            assert await waiting.result(timeout=15) == 2
        a, b = await lost.info(), await waiting.info()
        assert (a.attempts, b.attempts) == (2, 1)
        assert [(e.type, e.attempt) for e in a.errors] == [("asyncjobs.WorkerLost", 1)]
        assert b.errors == ()


def _stores(pool: asyncjobs.Pool, queue: str = "default") -> list[QueueStore]:
    """The queue's three levels (high, normal, low), as the scheduler passes them."""
    return [QueueStore(pool.client, pool.keys(q)) for q in members(queue)]


async def _confirm_and_revive(stores: list[QueueStore]) -> tuple[list[Orphan], int]:
    """Two passes (the orphans found by both), then the revive of those: the scheduler's
    steps with every worker taken for gone."""
    first, second = await _pass(stores), await _pass(stores)
    confirmed = sorted(set(first) & set(second), key=lambda o: (o.level, o.job_id))
    return confirmed, await revive_levels(stores, confirmed, 1000)


@pytest.mark.asyncio
async def test_revived_jobs_start_and_end_as_reclaimed_ones_do(real: Backend) -> None:
    """Orphans of a gone worker, each with what its record may carry (an abort request,
    an expiry past, attempts at the task's max tries, attempts that are not a number), on
    every level: each is put back once, and the next worker's start ends it visibly or runs
    it as start_entry does after a reclaim (attempts + 1). Nothing that changed since the
    pass (attempts, entry) is put back."""
    async with real.pool() as pool:
        client = pool.client
        stores = _stores(pool)
        high, normal, low = stores
        for store in stores:
            await store.ensure_group()
        jobs: dict[str, tuple[QueueStore, str]] = {}

        async def orphan(name: str, store: QueueStore, **fields: Any) -> str:
            job = await pool.enqueue(echo.options(queue=store.keys.queue), 1)
            taken = await client.xreadgroup(GROUP, "gone", {store.keys.stream: ">"}, count=1)
            entry = taken[0][1][0][0]
            await client.hset(store.keys.job(job.id), mapping={
                "s": "running", "w": "gone", "a": 1, "st": 1, **fields})
            assert await client.xack(store.keys.stream, GROUP, entry) == 1
            jobs[name] = (store, job.id)
            return job.id

        await orphan("plain", high)
        await orphan("aborted", normal, ab=1)
        await orphan("expired", normal, x=1)
        await orphan("last try", low, a=3)
        await orphan("junk attempts", low, a="many")
        await orphan("junk entry", normal)
        await client.hset(normal.keys.job(jobs["junk entry"][1]), "e", "not-an-entry")
        moved = await orphan("attempts moved", normal)
        first = await _pass(stores)
        await client.hincrby(normal.keys.job(moved), "a", 1)  # another attempt began
        second = await _pass(stores)
        confirmed = set(first) & set(second)
        assert {bytes(o.job_id) for o in confirmed} == {i.encode() for n, (_, i) in jobs.items()
                                                if n != "attempts moved"}
        ordered = sorted(confirmed, key=lambda o: bytes(o.job_id))
        assert await revive_levels(stores, ordered, 1000) == 6
        assert await revive_levels(stores, ordered, 1000) == 0
        verdicts = {}
        for store in stores:
            for st in await store.take("next", 100):
                verdicts[st.delivery.job_id] = (st.verdict, st.attempts)
        by_id = {i: n for n, (_, i) in jobs.items()}
        assert {by_id[i]: v for i, v in verdicts.items()} == {
            "plain": ("run", 2), "aborted": ("aborted", 1), "expired": ("expired", 1),
            "last try": ("run", 4), "junk attempts": ("corrupt", 0), "junk entry": ("run", 2)}


@pytest.mark.asyncio
async def test_a_huge_list_of_junk_orphans_revives_only_the_real_one_quickly(
    real: Backend
) -> None:
    """The revive is handed back what the scan reported, and nothing else is trusted: 30,000
    made-up orphans (levels out of range or not numbers, ids of no record, worker, attempts
    or entry not matching) beside one real one revive just that one, in one call, without
    an error."""
    async with real.pool() as pool:
        client = pool.client
        stores = _stores(pool)
        job = await pool.enqueue(echo, 1)
        entry = await _run_on(pool, job, "gone")
        assert await client.xack(stores[1].keys.stream, GROUP, entry) == 1
        real_one = (await _pass(stores))[0]
        junk = [Orphan(level, f"id{n}", "gone", "1", entry.decode())
                for n, level in zip(range(30000), [-1, 0, 1, 2, 3, 7] * 5000, strict=True)]
        junk += [Orphan(1, job.id, "other", "1", entry.decode()),
                 Orphan(1, job.id, "gone", "2", entry.decode()),
                 Orphan(1, job.id, "gone", "1", "1-0")]
        started = time.monotonic()
        assert await revive_levels(stores, [*junk, real_one, real_one], 1000) == 1
        assert time.monotonic() - started < 5
        assert await _pass(stores) == []


# -- (3) text that is not UTF-8 ----------------------------------------------------------------


@pytest.mark.parametrize("field", ["id", "w", "e"])
@pytest.mark.asyncio
async def test_an_orphan_whose_id_worker_or_entry_is_not_utf8_is_revived(
    real: Backend, field: str
) -> None:
    """An orphan of a gone worker whose job id, worker name or entry field holds bytes that
    are not UTF-8 (written by hand or by another program). The scan reports it, but
    ``_reschedule`` (store.py) decodes each value with ``reply_text`` (errors="replace")
    and ``revive_levels`` sends the decoded text back: the job key it names ('\\ufffd' for
    the byte) does not exist, or the record's raw `w` / `e` no longer equal what is sent.
    The job is never put back: it stays ``running`` for ever, reported again by every
    pass (and re-checked at every pass's end). Put back, a worker would end it visibly:
    dead-lettered as unreadable (a non-UTF-8 id, start_entry) or run (the others)."""
    async with real.pool() as pool:
        client = pool.client
        stores = _stores(pool)
        normal = stores[1]
        await normal.ensure_group()
        job_id = b"odd\xffid" if field == "id" else b"plain-id"
        entry = await client.xadd(normal.keys.stream, {"i": job_id})
        await client.xreadgroup(GROUP, "gone", {normal.keys.stream: ">"})
        key = normal.keys.job_prefix.encode() + job_id
        await client.hset(key, mapping={
            "s": "running", "a": 1, "st": 1, "q": 1, "j": b"",
            "w": b"gone\xfe" if field == "w" else b"gone",
            "e": b"\xff" if field == "e" else entry})
        assert await client.xack(normal.keys.stream, GROUP, entry) == 1
        confirmed, revived = await _confirm_and_revive(stores)
        assert len(confirmed) == 1
        assert revived == 1, "never put back: it stays running for ever"
        assert await client.hget(key, "e") != (b"\xff" if field == "e" else entry)
