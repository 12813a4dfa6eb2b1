"""Jobs by state (``pool.admin.jobs``, ``asyncjobs jobs``): every state in both orders a
page at a time, the ended index behind complete / failed, filters under a bounded scan, bad
input and garbage in Redis, progress in rows, walks while jobs are enqueued and settled,
a SIGKILLed worker, and the command line."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

import asyncjobs
from asyncjobs import Context
from asyncjobs._producer.cursor import encode_cursor
from asyncjobs._producer.listing import STATES, JobRow
from asyncjobs._redis.keys import ENDED_KEEP, GROUP

from . import records
from .apps import basic
from .conftest import Backend, running
from .procs import WorkerProcess, run_cli
from .procs import workers as procs_workers

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]

_gate: asyncio.Event | None = None


@pytest_asyncio.fixture
async def gate() -> AsyncIterator[asyncio.Event]:
    """Holds ``hold`` jobs until set (set on the way out, so a worker can drain)."""
    global _gate
    _gate = asyncio.Event()
    try:
        yield _gate
    finally:
        _gate.set()


@asyncjobs.task
async def ok(ctx: Context, n: int) -> int:
    return n


@asyncjobs.task
async def other(ctx: Context, n: int) -> int:
    return n


@asyncjobs.task(max_tries=1)
async def boom(ctx: Context, n: int) -> None:
    raise ValueError(f"boom {n}")


@asyncjobs.task(result_ttl=0)
async def forget(ctx: Context, n: int) -> int:
    return n


@asyncjobs.task
async def hold(ctx: Context, n: int) -> int:
    await ctx.progress(0.5, {"n": n})
    assert _gate is not None
    await _gate.wait()
    return n


@asyncjobs.task
async def sip(ctx: Context, n: int) -> int:
    await asyncio.sleep(0.005)
    return n


TASKS = [ok, other, boom, forget, hold, sip]


async def walk(pool: asyncjobs.Pool, state: str, *, limit: int = 3,
               **options: Any) -> tuple[list[JobRow], int]:
    """Every row of a listing, page by page; and how many pages it took."""
    rows: list[JobRow] = []
    cursor, pages = None, 0
    while True:
        page = await asyncio.wait_for(  # a hang guard, not a timing assertion
            pool.admin.jobs(state, cursor=cursor, limit=limit, **options), 30)
        assert len(page.items) <= limit
        assert page.scanned <= options.get("scan", 1000)
        rows += page.items
        pages += 1
        if page.cursor is None:
            return rows, pages
        cursor = page.cursor
        assert pages < 5000, "the cursor never ends"


async def walk_ids(pool: asyncjobs.Pool, state: str, **options: Any) -> list[str]:
    rows, _ = await walk(pool, state, **options)
    ids = [r.job_id for r in rows]
    assert len(ids) == len(set(ids)), f"{state}: a job listed twice"
    return ids


async def burst(backend: Backend, **options: Any) -> None:
    await backend.run(backend.worker(TASKS, burst=True, **options))


async def index(pool: asyncjobs.Pool, queue: str = "default") -> list[tuple[str, int]]:
    """The ended index, oldest first: (job id, ended ms) per job noted."""
    entries = await pool.client.xrange(pool.keys(queue).ended)
    return [(j.decode(), int(ms)) for _, fields in entries for j, ms in fields.items()]


async def states(pool: asyncjobs.Pool, ids: list[str]) -> dict[str, str]:
    """Each job's state as its record says ('missing' without one), in one round trip."""
    return await records.states(pool, ids)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- every state, both orders, page by page ------------------------------------------------


async def test_queued_walks_in_stream_order_both_ways(pool: asyncjobs.Pool) -> None:
    ids = [(await pool.enqueue(ok, i)).id for i in range(20)]
    rows, pages = await walk(pool, "queued")
    assert [r.job_id for r in rows] == ids and pages >= 7
    assert {(r.state, r.task, r.attempts) for r in rows} == {("queued", "ok", 0)}
    assert all(r.entry and r.at for r in rows)
    assert await walk_ids(pool, "queued", order="newest") == ids[::-1]
    assert await walk_ids(pool, "queued", order="oldest", limit=1) == ids


async def test_scheduled_walks_by_due_time_with_ties(pool: asyncjobs.Pool) -> None:
    jobs = [await pool.enqueue(ok.options(delay=600 + i), i) for i in range(20)]
    delayed = pool.keys("default").delayed
    # Ties: many jobs due at the same ms are ordered by id, and must still page exactly.
    await pool.client.zadd(delayed, {j.id: 5_000 for j in jobs[3:12]}, xx=True)
    members = await pool.client.zrange(delayed, 0, -1)
    expected = [m.decode() for m in members]
    assert sorted(expected) == sorted(j.id for j in jobs)
    rows, pages = await walk(pool, "scheduled")
    assert [r.job_id for r in rows] == expected and pages >= 7
    assert {r.state for r in rows} == {"scheduled"} and all(r.at for r in rows)
    assert await walk_ids(pool, "scheduled", order="newest") == expected[::-1]
    assert await walk_ids(pool, "scheduled", order="newest", limit=2) == expected[::-1]


async def test_scheduled_cursors_hold_the_longest_job_ids(pool: asyncjobs.Pool) -> None:
    ids = [(await pool.enqueue(ok.options(job_id=c + "é" * 1023, delay=600 + n), n)).id
           for n, c in enumerate("abc")]  # 1,024 characters, 2 KiB of UTF-8 each
    assert await walk_ids(pool, "scheduled", limit=1) == ids
    assert await walk_ids(pool, "scheduled", order="newest", limit=1) == ids[::-1]


async def test_running_walks_in_delivery_order_both_ways(
        backend: Backend, gate: asyncio.Event) -> None:
    async with backend.pool() as pool:
        ids = [(await pool.enqueue(hold, i)).id for i in range(20)]
        async with running(backend, backend.worker(TASKS, concurrency=50)):
            async def all_running() -> bool:
                return set((await states(pool, ids)).values()) == {"running"}

            await until(all_running, "20 jobs to run")
            rows, pages = await walk(pool, "running")
            assert [r.job_id for r in rows] == ids and pages >= 7
            assert {(r.state, r.deliveries) for r in rows} == {("running", 1)}
            assert all(r.worker and r.idle_s is not None and r.started_at for r in rows)
            assert await walk_ids(pool, "running", order="newest") == ids[::-1]
            assert await walk_ids(pool, "queued") == []
            gate.set()
            assert [await pool.job(i).result(timeout=20) for i in ids] == list(range(20))
        assert await walk_ids(pool, "running") == []
        assert await walk_ids(pool, "running", order="newest") == []


async def test_running_lists_only_entries_still_held(pool: asyncjobs.Pool) -> None:
    stream = pool.keys("default").stream
    jobs = [await pool.enqueue(ok, i) for i in range(4)]
    await pool.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await pool.client.xreadgroup(GROUP, "w1", {stream: ">"}, count=4)
    entries = [await pool.client.hget(pool.keys("default").job(j.id), "e") for j in jobs]
    # As a settle between a page's two reads leaves it (or an abort of a job read but not
    # started): one entry still pending but deleted, one acknowledged but still there.
    await pool.client.xdel(stream, entries[1])
    await pool.client.xack(stream, GROUP, entries[2])
    for limit in (1, 3):
        assert await walk_ids(pool, "running", limit=limit) == [jobs[0].id, jobs[3].id]
        assert await walk_ids(pool, "running", order="newest", limit=limit) == [
            jobs[3].id, jobs[0].id]


async def test_dead_walks_the_dead_letters_both_ways(backend: Backend) -> None:
    async with backend.pool() as pool:
        ids = {(await pool.enqueue(boom, i)).id for i in range(20)}
        await burst(backend)
        letters = await pool.client.xrange(pool.keys("default").dead)
        expected = [fields[b"i"].decode() for _, fields in letters]
        assert set(expected) == ids
        rows, pages = await walk(pool, "dead")  # newest first by default
        assert [r.job_id for r in rows] == expected[::-1] and pages >= 7
        assert {(r.task, r.state, r.error_type) for r in rows} == {
            ("boom", "failed", "builtins.ValueError")}
        assert all(r.reason == "raised ValueError on try 1 of 1" for r in rows)
        assert await walk_ids(pool, "dead", order="oldest") == expected


@pytest.mark.parametrize(("task", "state"), [(ok, "complete"), (boom, "failed")])
async def test_ended_jobs_walk_the_index_both_ways(backend: Backend, task: Any,
                                                   state: str) -> None:
    async with backend.pool() as pool:
        ids = {(await pool.enqueue(task, i)).id for i in range(20)}
        await burst(backend, concurrency=4)  # settles in batches: entries of several jobs
        noted = await index(pool)
        expected = [job_id for job_id, _ in noted]
        assert sorted(expected) == sorted(ids)
        for limit in (1, 2, 3, 7, 50):  # 1 read a used-up entry for ever: the walk hung
            rows, _ = await walk(pool, state, limit=limit)  # newest first by default
            assert [r.job_id for r in rows] == expected[::-1], limit
            assert await walk_ids(pool, state, order="oldest", limit=limit) == expected
        assert {r.state for r in rows} == {state}
        assert all(r.ended_at and r.started_at and r.attempts == 1 for r in rows)
        other_state = "failed" if state == "complete" else "complete"
        assert await walk_ids(pool, other_state) == []


async def test_pages_resume_inside_an_index_entry_of_many_jobs(backend: Backend) -> None:
    async with backend.pool() as pool:
        ids = [(await pool.enqueue(ok, i)).id for i in range(11)]
        await burst(backend)
        ended = pool.keys("default").ended
        times = dict(await index(pool))
        await pool.client.delete(ended)  # as one settle of ten jobs, then one of one
        await pool.client.xadd(ended, {i: times[i] for i in ids[:10]})
        await pool.client.xadd(ended, {ids[10]: times[ids[10]]})
        for limit in (1, 3, 4, 10, 11):
            assert await walk_ids(pool, "complete", limit=limit) == ids[::-1], limit
            assert await walk_ids(pool, "complete", order="oldest", limit=limit) == ids
            assert await walk_ids(pool, "complete", limit=limit, task="ok", scan=3) == ids[::-1]


# -- the ended index -------------------------------------------------------------------


async def test_a_requeued_dead_job_leaves_failed_and_shows_once_when_it_fails_again(
        backend: Backend) -> None:
    async with backend.pool() as pool:
        job = await pool.enqueue(boom, 1)
        keep = await pool.enqueue(boom, 2)
        await burst(backend)
        assert sorted(await walk_ids(pool, "failed")) == sorted([job.id, keep.id])
        assert await pool.admin.requeue([job.id]) == {job.id: "queued"}
        assert await walk_ids(pool, "failed") == [keep.id]
        assert await walk_ids(pool, "failed", order="oldest") == [keep.id]
        assert await walk_ids(pool, "queued") == [job.id]
        await burst(backend)  # it fails again: the index notes it twice, the listing once
        assert [i for i, _ in await index(pool)].count(job.id) == 2
        assert await walk_ids(pool, "failed") == [job.id, keep.id]
        assert await walk_ids(pool, "failed", order="oldest", limit=1) == [keep.id, job.id]
        [row] = (await pool.admin.jobs("failed", limit=1)).items
        assert (row.job_id, row.state, row.error_type) == (job.id, "failed", "builtins.ValueError")


async def test_expired_and_aborted_jobs_are_failed_with_their_state(
        backend: Backend, gate: asyncio.Event) -> None:
    async with backend.pool() as pool:
        keys = pool.keys("default")
        queued = await pool.enqueue(ok, 1)
        scheduled = await pool.enqueue(ok.options(delay=600), 2)
        late = await pool.enqueue(ok.options(expires=600), 3)  # expires at start
        late_due = await pool.enqueue(ok.options(delay=600, expires=900), 4)  # at promotion
        done = await pool.enqueue(ok, 5)
        assert await queued.abort() and await scheduled.abort()
        for job in (late, late_due):
            await pool.client.hset(keys.job(job.id), "x", 1)  # long past
        assert await pool.admin.make_due([late_due.id]) == [late_due.id]
        await burst(backend)
        held = await pool.enqueue(hold, 6)
        async with running(backend, backend.worker(TASKS)):
            await until(lambda: _is(pool, held.id, "running"), "the held job to run")
            assert await held.abort()  # running: its worker cancels it and settles it
            await until(lambda: _is(pool, held.id, "aborted"), "the abort")
        rows, _ = await walk(pool, "failed", limit=2)
        shown = {r.job_id: r.state for r in rows}
        assert shown == {queued.id: "aborted", scheduled.id: "aborted", late.id: "expired",
                         late_due.id: "expired", held.id: "aborted"}
        assert rows[0].job_id == held.id  # newest first
        assert await walk_ids(pool, "complete") == [done.id]


async def _is(pool: asyncjobs.Pool, job_id: str, state: str) -> bool:
    return (await pool.job(job_id).status()).value == state


async def test_jobs_without_a_record_are_not_listed(backend: Backend) -> None:
    async with backend.pool() as pool:
        gone = [(await pool.enqueue(forget, i)).id for i in range(3)]
        kept = (await pool.enqueue(ok, 9)).id
        await burst(backend)
        noted = {i for i, _ in await index(pool)}
        assert noted == {*gone, kept}  # noted in the index, but result_ttl=0 left no record
        assert await walk_ids(pool, "complete") == [kept]
        assert await walk_ids(pool, "complete", order="oldest", limit=1) == [kept]
        await records.forget(pool, kept)  # expired, or purged
        assert await walk_ids(pool, "complete") == []


async def test_a_record_that_no_longer_ends_as_noted_is_not_listed(backend: Backend) -> None:
    async with backend.pool() as pool:
        job = await pool.enqueue(ok, 1)
        await burst(backend)
        assert await walk_ids(pool, "complete") == [job.id]
        # The record now says failed at another time: the old index entry no longer shows it.
        await pool.client.hset(pool.keys("default").job(job.id), mapping={
            "s": "failed", "et": 1})
        assert await walk_ids(pool, "complete") == []
        assert await walk_ids(pool, "failed") == []  # no index entry says it failed at 1


async def test_the_ended_index_is_capped(real: Backend) -> None:
    total, chunk = ENDED_KEEP + 300, 40
    async with real.pool() as pool:
        jobs = await pool.enqueue_many(asyncjobs.call(ok, i) for i in range(total))
        for start in range(0, total, chunk):  # one abort script each: one index entry each
            assert all(await asyncio.gather(*(j.abort() for j in jobs[start:start + chunk])))
        length = await pool.client.xlen(pool.keys("default").ended)
        assert ENDED_KEEP <= length <= ENDED_KEEP + 150  # MAXLEN ~ trims whole nodes
        rows, _ = await walk(pool, "failed", limit=500)
        assert {r.state for r in rows} == {"aborted"}
        listed = [r.job_id for r in rows]
        assert listed == [i for i, _ in await index(pool)][::-1]  # every one noted, newest first
        assert set(listed) <= {j.id for j in jobs[-(length + chunk):]}  # the oldest went


# -- filters under a bounded scan ----------------------------------------------------------


@pytest.mark.parametrize("state", ["complete", "queued"])
async def test_a_task_filter_reads_at_most_scan_entries_and_goes_on(
        backend: Backend, state: str) -> None:
    async with backend.pool() as pool:
        wanted = []
        for i in range(25):
            job = await pool.enqueue(other if i % 6 == 0 else ok, i)
            if i % 6 == 0:
                wanted.append(job.id)
        if state == "complete":
            await burst(backend, concurrency=1)
            wanted = [i for i, _ in await index(pool) if i in wanted][::-1]
        page = await pool.admin.jobs(state, task="nothing", scan=4, limit=10)
        assert (page.items, page.scanned) == ([], 4) and page.cursor
        empty, calls = [], 0
        cursor: str | None = page.cursor
        while cursor:
            page = await pool.admin.jobs(state, task="nothing", scan=4, cursor=cursor)
            assert page.items == [] and page.scanned <= 4
            empty.append(page.scanned)
            cursor, calls = page.cursor, calls + 1
            assert calls < 20
        assert 4 + sum(empty) == 25  # every job read once, across the calls
        rows, calls = await walk(pool, state, task="other", scan=5, limit=2)
        assert [r.job_id for r in rows] == wanted and len(wanted) == 5
        assert {r.task for r in rows} == {"other"} and calls >= 5
        assert await walk_ids(pool, state, task="other", limit=1) == wanted


# -- bad input, garbage in Redis -------------------------------------------------------------


def flip(cursor: str, at: int) -> str:
    """``cursor`` with one character changed."""
    spot = at % len(cursor)
    changed = "B" if cursor[spot] == "A" else "A"
    return cursor[:spot] + changed + cursor[spot + 1:]


async def snapshot(pool: asyncjobs.Pool) -> dict[bytes, Any]:
    keys = await pool.client.keys(f"{pool.prefix}:*")
    return {k: await pool.client.dump(k) for k in keys}


async def test_bad_input_is_one_line_and_writes_nothing(backend: Backend) -> None:
    async with backend.pool() as pool:
        await pool.enqueue(ok, 1)
        for i in range(4):
            await pool.enqueue(boom, i)
        await burst(backend)
        for i in range(4):
            await pool.enqueue(ok, i)
        failed = (await pool.admin.jobs("failed", limit=1)).cursor
        queued = (await pool.admin.jobs("queued", limit=1)).cursor
        assert failed and queued
        before = await snapshot(pool)
        bad: list[tuple[dict[str, Any], str]] = [
            ({"state": "finished"}, "unknown state 'finished'"),
            ({"state": "QUEUED"}, "unknown state"),
            ({"state": "queued", "order": "sideways"}, "unknown order 'sideways'"),
            ({"state": "queued", "limit": 0},
             "limit must be a whole number between 1 and 500, not 0"),
            ({"state": "queued", "limit": 501},
             "limit must be a whole number between 1 and 500, not 501"),
            ({"state": "queued", "scan": 0},
             "scan must be a whole number between 1 and 1,000,000, not 0"),
            *(({"state": "queued", "cursor": flip(queued, i)}, "invalid cursor")
              for i in (0, 5, 9, -3, -1)),
            ({"state": "queued", "cursor": queued + "A"}, "invalid cursor"),
            ({"state": "queued", "cursor": queued[:-1]}, "invalid cursor"),
            ({"state": "running", "cursor": queued}, "invalid cursor"),
            ({"state": "queued", "order": "newest", "cursor": queued}, "invalid cursor"),
            ({"state": "complete", "cursor": failed}, "invalid cursor"),
            ({"state": "failed", "order": "oldest", "cursor": failed}, "invalid cursor"),
            ({"state": "queued", "cursor": "!!!not base64!!!"}, "invalid cursor"),
            ({"state": "queued", "cursor": base64.urlsafe_b64encode(b"\xff" * 40).decode()},
             "invalid cursor"),
            ({"state": "queued", "cursor": "A" * 10_000}, "invalid cursor"),
            ({"state": "queued", "cursor": encode_cursor("queued.oldest", "1-0; DROP")},
             "invalid cursor"),
            ({"state": "scheduled", "cursor": encode_cursor("scheduled.oldest", "soon", "x")},
             "invalid cursor"),
            ({"state": "complete", "cursor": encode_cursor("complete.newest", "1-0", "²")},
             "invalid cursor"),
            ({"state": "queued", "cursor": encode_cursor("queued.oldest", "\u0661-\u0660")},
             "invalid cursor"),
            # 0-0 is no entry's id (XADD refuses it): Redis refused a range ending before it
            *[({"state": state, "cursor": encode_cursor(f"{state}.newest", "0-0")},
               "invalid cursor") for state in ("queued", "running", "dead")],
            ({"state": "complete", "cursor": encode_cursor("complete.newest", "0-0", "0")},
             "invalid cursor"),
        ]
        for args, message in bad:
            state = args.pop("state")
            with pytest.raises(ValueError) as caught:
                await pool.admin.jobs(state, **args)
            assert message in str(caught.value), (args, caught.value)
            assert "\n" not in str(caught.value) and len(str(caught.value)) < 200
        with pytest.raises(ValueError, match="invalid cursor"):
            await pool.admin.dead_letter_page(cursor=encode_cursor("x", "0-0"))
        assert await snapshot(pool) == before
        assert STATES == ("queued", "running", "scheduled", "dead", "complete", "failed")


async def test_garbage_in_redis_never_breaks_a_listing(backend: Backend) -> None:
    async with backend.pool() as pool:
        keys = pool.keys("default")
        c = pool.client
        fine = await pool.enqueue(ok, 1)
        await burst(backend)
        queued = await pool.enqueue(ok, 2)
        await c.set(keys.job("not-a-hash"), "x")
        await c.xadd(keys.stream, {"i": "not-a-hash"})
        await c.hset(keys.job(queued.id), mapping={  # fields no record holds
            "st": "999999999999999", "et": "²", "a": "9" * 5000, "w": b"\xff", "p": b"\xc1"})
        await c.xadd(keys.ended, {"not-a-hash": "123", "x1": "²", "x2": "9" * 5000,
                                  "x3": "abc", fine.id: "nope"})
        await c.hset(keys.job("x3"), mapping={"s": "complete", "et": "abc"})
        await c.zadd(keys.delayed, {"inf": float("inf"), "big": 1e20, "neg": -1e20, "z": 7})
        await c.xadd(keys.dead, {"i": "d1", "t": "²"})
        await c.xadd(keys.dead, {"i": "d2", "t": "9" * 30})
        await c.xadd(keys.dead, {"no": "id"})
        for state in STATES:
            for order in ("oldest", "newest"):
                for limit in (1, 2, 50):
                    await walk(pool, state, order=order, limit=limit)
        rows = {r.job_id: r for r in (await walk(pool, "queued"))[0]}
        assert (rows["not-a-hash"].task, rows["not-a-hash"].state) == ("?", "unreadable")
        odd = rows[queued.id]
        assert (odd.task, odd.state, odd.attempts, odd.started_at, odd.ended_at,
                odd.progress) == ("ok", "queued", 0, None, None, None)
        assert await walk_ids(pool, "complete") == [fine.id]  # its good entry still counts
        due = await walk_ids(pool, "scheduled", limit=1)
        assert due == ["neg", "z", "big", "inf"]
        assert await walk_ids(pool, "scheduled", order="newest", limit=1) == due[::-1]
        dead = (await walk(pool, "dead"))[0]
        assert [(r.job_id, r.at) for r in dead] == [("", None), ("d2", None), ("d1", None)]
        # The index key of the wrong type: nothing listed, nothing raised, nothing written.
        await c.delete(keys.ended)
        await c.set(keys.ended, "x")
        assert await walk_ids(pool, "complete") == await walk_ids(pool, "failed") == []
        assert await c.get(keys.ended) == b"x"


async def test_settling_with_a_broken_index_still_ends_the_job(backend: Backend) -> None:
    async with backend.pool() as pool:
        await pool.client.set(pool.keys("default").ended, "x")
        job = await pool.enqueue(ok, 7)
        await burst(backend)
        assert await job.result(timeout=5) == 7  # the note is best effort, the end is not
        assert await walk_ids(pool, "complete") == []


# -- progress ----------------------------------------------------------------------------


async def test_rows_carry_progress_while_running_and_after(
        backend: Backend, gate: asyncio.Event) -> None:
    async with backend.pool() as pool:
        job = await pool.enqueue(hold, 1)
        async with running(backend, backend.worker(TASKS)):
            async def reported() -> bool:
                rows = (await pool.admin.jobs("running")).items
                return bool(rows) and rows[0].progress is not None

            await until(reported, "the progress report")
            [row] = (await pool.admin.jobs("running")).items
            assert row.progress is not None
            assert (row.job_id, row.progress.value, row.progress.data) == (job.id, 0.5, {"n": 1})
            gate.set()
            assert await job.result(timeout=10) == 1
        [done] = (await pool.admin.jobs("complete")).items
        assert done.progress is not None
        assert (done.job_id, done.state, done.progress.value, done.progress.data) == (
            job.id, "complete", 0.5, {"n": 1})


# -- while jobs are enqueued and settled -----------------------------------------------------


async def test_walks_under_enqueues_and_settles_list_each_job_once(real: Backend) -> None:
    """The promise of a walk (one listing followed page by page) while jobs move: no job
    twice; every job in the state both before the walk began and after it ended is listed
    (it stayed there throughout: complete is final, and these jobs never retry); every
    complete job listed is complete. The index is not trimmed here (far fewer than 2,000
    settles)."""
    async with real.pool() as pool:
        ids: list[str] = []
        stop = asyncio.Event()

        async def produce() -> None:
            while not stop.is_set() and len(ids) < 1500:
                ids.extend(j.id for j in await pool.enqueue_many(
                    asyncjobs.call(sip, len(ids) + k) for k in range(4)))
                await asyncio.sleep(0.003)

        producer = asyncio.create_task(produce())
        async with running(real, real.worker(TASKS, concurrency=2)):
            await until(lambda: _count(pool, ids, "complete", 30), "30 complete jobs")
            before = await states(pool, list(ids))
            walks = await asyncio.gather(
                walk_ids(pool, "complete"), walk_ids(pool, "complete", order="oldest"),
                walk_ids(pool, "queued"), walk_ids(pool, "queued", order="newest"),
                walk_ids(pool, "complete", limit=1))
            after = await states(pool, list(ids))
            stop.set()
            await producer
        assert len(after) > len(before)  # jobs were enqueued during the walks
        for name, walked in zip(["complete"] * 2 + ["queued"] * 2 + ["complete"], walks,
                                strict=True):
            stayed = {i for i, s in before.items() if s == name and after[i] == name}
            assert stayed <= set(walked), (name, len(stayed - set(walked)))
            assert set(walked) <= set(ids)
            if name == "complete":
                assert all(after[i] == "complete" for i in walked)
        assert sum(1 for s in before.values() if s == "complete") >= 30
        assert any(s == "queued" for s in before.values())


async def _count(pool: asyncjobs.Pool, ids: list[str], state: str, at_least: int) -> bool:
    return sum(1 for s in (await states(pool, list(ids))).values() if s == state) >= at_least


# -- a SIGKILLed worker ----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_killed_worker_leaves_each_job_listed_once(real: Backend) -> None:
    env = {"TEST_CLAIM_TIMEOUT": "2", "TEST_CONCURRENCY": "5", "TEST_SHORT_S": "0.1"}
    url = real.url or ""
    target = "tests.apps.basic:worker"
    async with real.pool() as pool:
        long = [(await pool.enqueue(basic.slow, 2.0)).id for _ in range(3)]
        jobs = await pool.enqueue_many(asyncjobs.call(basic.short, i) for i in range(20))
        ids = long + [j.id for j in jobs]
        with procs_workers(target, url, real.prefix, 1, **env) as procs:
            async def long_running() -> bool:
                rows = (await pool.admin.jobs("running")).items
                return {r.job_id for r in rows if r.state == "running"} >= set(long)

            await until(long_running, "the long jobs to run")
            procs[0].signal(signal.SIGKILL)  # mid-run: they take 2 s
            procs[0].wait(10)
            rows = (await walk(pool, "running"))[0]  # still held by the dead worker
            held = [r.job_id for r in rows if r.state == "running"]
            assert set(long) <= set(held) and len({r.worker for r in rows}) == 1
            procs.append(WorkerProcess(target, url, real.prefix, env=env))
            procs[-1].wait_for("ready:")
            await until(lambda: _count(pool, ids, "complete", len(ids)), "every job", 60)
            listed = await walk_ids(pool, "complete", limit=7)
            assert sorted(listed) == sorted(ids)
            assert await walk_ids(pool, "complete", order="oldest") == listed[::-1]
            for state in ("queued", "running", "scheduled", "failed", "dead"):
                for order in ("oldest", "newest"):
                    assert await walk_ids(pool, state, order=order) == [], (state, order)
            rows = {r.job_id: r for r in (await walk(pool, "complete", limit=50))[0]}
            assert {rows[i].attempts for i in held} == {2}  # reclaimed, run again


# -- the command line --------------------------------------------------------------------------

EVIL = "evil\n\x1b[31mred\x1b[0m [bold]x[/]"
SHOWN = r"evil\n\x1b[31mred\x1b[0m [bold]x[/]"


def cli(backend: Backend, *args: str) -> tuple[int, str, str]:
    done = run_cli("jobs", *args, "--redis-url", backend.url or "", "--prefix", backend.prefix,
                   env={"COLUMNS": "3000"})  # no folding: a row on one line
    return done.returncode, done.stdout, done.stderr


def one_line_error(done: tuple[int, str, str], *words: str) -> None:
    code, out, err = done
    assert code == 2 and out == "", done
    assert err.count("\n") == 1 and err.startswith("asyncjobs: error: "), err
    assert "Traceback" not in err and all(w in err for w in words), err


@pytest.mark.slow
async def test_the_jobs_command(real: Backend) -> None:
    long_id = "L" * 1000 + "end"
    async with real.pool() as pool:
        ids = [(await pool.enqueue(ok.options(job_id=i, queue="later"), 1)).id
               for i in ("plain", EVIL, long_id)]
        ids += [(await pool.enqueue(ok.options(queue="later"), i)).id for i in range(3)]
        await pool.enqueue(ok.options(job_id=EVIL), 1)  # the same id on another queue
        failed = (await pool.enqueue(boom, 1)).id
        await burst(real)
    code, out, err = cli(real, "--state", "queued", "--queue", "later", "--limit", "3")
    assert code == 0 and err == "", err
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    assert "queued jobs on queue 'later'" in lines[0]
    [evil] = [line for line in lines if SHOWN in line]
    assert "ok" in evil and "queued" in evil
    assert any(long_id in line for line in lines)  # whole, on one line
    assert lines[-1].startswith("more: add --cursor ")
    cursor = lines[-1].split()[-1]
    code, out, _ = cli(real, "-s", "queued", "-q", "later", "--cursor", cursor, "--json")
    listing = json.loads(out)
    assert code == 0 and listing["cursor"] is None
    assert [r["job_id"] for r in listing["jobs"]] == ids[3:]
    assert {r["state"] for r in listing["jobs"]} == {"queued"}
    assert set(listing["jobs"][0]) >= {"job_id", "task", "state", "attempts", "at", "worker",
                                       "progress", "ended_at", "error_type"}
    code, out, _ = cli(real, "-s", "complete", "--json")
    [row] = json.loads(out)["jobs"]
    assert (row["job_id"], row["state"]) == (EVIL, "complete")  # the raw id
    code, out, _ = cli(real, "-s", "failed")
    assert code == 0 and "more:" not in out
    [line] = [line for line in out.splitlines() if failed in line]
    assert "failed" in line and "raised ValueError on try 1 of 1" in line
    one_line_error(cli(real, "--state", "finished"), "--state", "finished", *STATES)
    one_line_error(cli(real, "-s", "queued", "-q", "later", "--cursor", flip(cursor, -1)),
                   "invalid cursor")


@pytest.mark.parametrize("value", ["18446744073709551616-0", "0-18446744073709551616",
                                   "99999999999999999999-99999999999999999999"])
async def test_a_cursor_entry_past_what_redis_takes_is_an_invalid_cursor(value: str) -> None:
    """Cursors are checksummed, not signed: one naming an id of 2**64 or more reached Redis,
    which refused the range (a 500 on the dashboard's pages)."""
    from asyncjobs._producer.cursor import entry_id

    assert entry_id("18446744073709551615-18446744073709551615")  # the largest Redis takes
    with pytest.raises(ValueError, match="invalid cursor"):
        entry_id(value)
