"""Hostile cases for the queued-job half of the waiting jobs' repair (reschedule.lua): a
record that says ``queued`` but whose stream entry no worker will be handed gets a new
entry. Each test builds one queue (three priority levels) by hand, runs a whole repair pass
(``reschedule_levels`` step by step, as ``Scheduler._repair`` does) and then asks the
group, as a worker does (take.lua), what it hands out."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.exceptions import ResponseError

import asyncjobs
from asyncjobs._redis.keys import GROUP
from asyncjobs._redis.store import QueueStore, reschedule_levels
from asyncjobs._redis.values import Delivery
from asyncjobs._routing import members

from .conftest import Backend

BIG = 2**53  # doubles (Lua 5.1's only numbers) are exact up to here, not beyond


@asyncjobs.task(name="requeue_hostile_echo")
async def echo(ctx: asyncjobs.Context, n: int) -> int:
    return n


class Queue:
    """One queue's three levels (high, normal, low) on a pool of the test's backend."""

    def __init__(self, pool: asyncjobs.Pool, name: str) -> None:
        self.pool, self.name = pool, name
        self.client: Any = pool.client
        self.stores = [QueueStore(pool.client, pool.keys(q)) for q in members(name)]
        self.high, self.normal, self.low = self.stores

    @property
    def stream(self) -> str:
        return self.normal.keys.stream

    def key(self, job_id: str, store: QueueStore | None = None) -> str:
        return (store or self.normal).keys.job(job_id)

    async def enqueue(self, n: int, **options: Any) -> asyncjobs.Job[Any]:
        return await self.pool.enqueue(echo.options(queue=self.name, **options), n)

    async def entry(self, job_id: str, store: QueueStore | None = None) -> bytes | None:
        found: bytes | None = await self.client.hget(self.key(job_id, store), "e")
        return found

    async def repair(self) -> int:
        """One whole pass; the queued jobs it put back."""
        count = max(1000, await self.client.dbsize() // 200 + 1)
        step = await reschedule_levels(self.stores, "0", count)
        requeued = step.requeued
        while step.cursor != "0":
            step = await reschedule_levels(self.stores, step.cursor, count)
            requeued += step.requeued
        return requeued

    async def take(self, store: QueueStore | None = None) -> list[tuple[str, str]]:
        """What a worker is handed now on a level: (job id, start verdict) per entry."""
        started = await (store or self.normal).take(f"w{secrets.token_hex(3)}", 100)
        return [(s.delivery.job_id, s.verdict) for s in started]


@pytest_asyncio.fixture
async def queue(backend: Backend) -> AsyncIterator[Queue]:
    async with backend.pool() as pool:
        q = Queue(pool, f"rq{secrets.token_hex(4)}")
        for store in q.stores:
            await store.ensure_group()
        try:
            yield q
        finally:
            with contextlib.suppress(Exception):
                names = [n async for n in pool.client.scan_iter(
                    match=f"*{q.name}*", count=1000)]
                if names:
                    await pool.client.delete(*names)


async def _deliver_and_ack(q: Queue, stream: str) -> list[bytes]:
    """A consumer that runs nothing takes every new entry and acknowledges it."""
    got = await q.client.xreadgroup(GROUP, "ghost", {stream: ">"})
    entries = [e for _, rows in got for e, _ in rows]
    if entries:
        await q.client.xack(stream, GROUP, *entries)
    return entries


# -- defects the review found (both failed before reschedule.lua handled them) ------------


@pytest.mark.on_cluster
@pytest.mark.asyncio
async def test_a_group_moved_past_the_streams_end_is_moved_back_and_its_job_runs(
        queue: Queue) -> None:
    """XGROUP SETID to an id beyond the stream's last one (a typo, a group copied from
    another server): an entry added with ``XADD *`` (the clock now) is still before the
    group's last-delivered-id, so the group never hands it out. The repair used to put the
    job back on every pass, and it stayed queued for ever (and every job enqueued later).
    Now the repair moves the group back to the stream's last generated id (no entry lies
    beyond it, so nothing is delivered twice): the job is handed out, once."""
    job = await queue.enqueue(1)
    await queue.client.xgroup_setid(queue.stream, GROUP, "99999999999999-0")  # year 5138
    assert await queue.repair() == 1
    assert await queue.take() == [(job.id, "run")], "the job put back is never handed out"
    assert await queue.repair() == 0, "each pass puts the same job back again"


@pytest.mark.on_cluster
@pytest.mark.asyncio
async def test_an_exhausted_stream_is_skipped_and_the_other_levels_are_repaired(
        queue: Queue) -> None:
    """A level's stream whose last id is the largest possible (XADD
    18446744073709551615-18446744073709551615 by hand) holding a lost queued job: the
    repair's ``XADD *`` is refused ("The stream has exhausted the last possible ID"). It
    used to fail the whole script, so each pass gave up at that key and the jobs of every
    other level SCAN met after it were never put back. Now that level is skipped, like a
    stream of the wrong type, and the others are repaired."""
    low_job = await queue.enqueue(2, priority="low")
    await queue.client.xadd(queue.low.keys.stream, {"i": "x"},
                            id="18446744073709551615-18446744073709551615")
    await queue.client.xgroup_setid(queue.low.keys.stream, GROUP, "$")  # low_job lost
    normal_job = await queue.enqueue(1)
    await _deliver_and_ack(queue, queue.stream)  # normal_job lost too
    try:
        await queue.repair()
    except ResponseError as exc:
        pytest.fail(f"the repair raised on one level's garbage: {exc}")
    assert (normal_job.id, "run") in await queue.take()
    assert await queue.client.hget(queue.key(low_job.id, queue.low), "s") == b"queued"


# -- attacks that hold ----------------------------------------------------------------------


def _runs(taken: list[tuple[str, str]], job_id: str) -> int:
    return sum(1 for j, verdict in taken if j == job_id and verdict == "run")


@pytest.mark.on_cluster
@pytest.mark.asyncio
async def test_ids_beyond_2_53_a_delivered_entry_is_seen_as_delivered(
        queue: Queue) -> None:
    """Ids whose ms parts differ only beyond 2^53 (equal as Lua numbers): the job's entry
    9007199254740992-10 was delivered and acknowledged, the group is at 9007199254740993-5.
    Compared as numbers, 10 > 5 would call it undelivered and keep the job queued for ever;
    the ids must be compared as text."""
    job = await queue.enqueue(1)
    old = await queue.entry(job.id)
    assert old is not None
    await queue.client.xdel(queue.stream, old)
    early, late = f"{BIG}-10", f"{BIG + 1}-5"
    await queue.client.xadd(queue.stream, {"i": job.id}, id=early)
    await queue.client.xadd(queue.stream, {"i": "other"}, id=late)
    await queue.client.hset(queue.key(job.id), "e", early)
    assert await _deliver_and_ack(queue, queue.stream) == [early.encode(), late.encode()]
    assert await queue.repair() == 1, "the delivered, acknowledged entry was taken as reachable"
    assert await queue.take() == [(job.id, "run")]


@pytest.mark.on_cluster
@pytest.mark.asyncio
async def test_ids_beyond_2_53_an_undelivered_entry_keeps_its_place(queue: Queue) -> None:
    """The reverse: the group at 9007199254740992-5, the job's entry 9007199254740993-0 not
    delivered yet. Compared as numbers it would look delivered and be moved to the back of
    the queue; it must be left alone."""
    await queue.client.xadd(queue.stream, {"i": "other"}, id=f"{BIG}-5")
    await _deliver_and_ack(queue, queue.stream)
    job = await queue.enqueue(1)
    old = await queue.entry(job.id)
    assert old is not None
    await queue.client.xdel(queue.stream, old)
    await queue.client.xadd(queue.stream, {"i": job.id}, id=f"{BIG + 1}-0")
    await queue.client.hset(queue.key(job.id), "e", f"{BIG + 1}-0")
    assert await queue.repair() == 0, "a reachable entry was put back"
    assert await queue.entry(job.id) == f"{BIG + 1}-0".encode()


@pytest.mark.on_cluster
@pytest.mark.parametrize("how", ["padded", "another job's"])
@pytest.mark.asyncio
async def test_an_entry_start_calls_stale_is_put_back_at_once(queue: Queue, how: str
                                                                ) -> None:
    """start.lua compares the record's ``e`` with the delivered id as text and runs the
    job the entry names: a record whose ``e`` is its own entry's id with a leading zero
    (XRANGE reads ``0…`` as the same id) or another waiting job's entry must count as lost
    (put back now, not after a stale delivery and another pass), and the job runs once."""
    other = await queue.enqueue(0)
    job = await queue.enqueue(1)
    entry = await queue.entry(job.id)
    other_entry = await queue.entry(other.id)
    assert entry and other_entry
    if how == "padded":
        await queue.client.hset(queue.key(job.id), "e", b"0" + entry)
    else:
        await queue.client.xdel(queue.stream, entry)
        await queue.client.hset(queue.key(job.id), "e", other_entry)
    assert await queue.repair() == 1
    taken = await queue.take()
    assert (job.id, "run") in taken, taken


@pytest.mark.on_cluster
@pytest.mark.parametrize("entry", ["18446744073709551616-0", "1-18446744073709551616",
                                   "99999999999999999999999-0", "0-0", " 1-0", "1-0\n"])
@pytest.mark.asyncio
async def test_a_junk_entry_id_is_put_back_without_raising(queue: Queue, entry: str) -> None:
    """``e`` shaped like an id but out of 64 bits (XRANGE and XDEL refuse it), or not quite
    an id: put back once, no error, and the job runs once (its original entry, still in the
    stream, is stale)."""
    job = await queue.enqueue(1)
    await queue.client.hset(queue.key(job.id), "e", entry)
    assert await queue.repair() == 1
    assert await queue.repair() == 0
    assert _runs(await queue.take(), job.id) == 1


@pytest.mark.on_cluster
@pytest.mark.asyncio
async def test_an_entry_read_but_not_started_yet_is_left_alone(queue: Queue) -> None:
    """The race with a live worker: XREADGROUP (the blocking path, or a reclaim) delivered
    the entry, start.lua has not run yet, so the record still says queued. Pending for that
    consumer: not put back, and the start runs the job, once."""
    job = await queue.enqueue(1)
    got = await queue.client.xreadgroup(GROUP, "live", {queue.stream: ">"})
    delivered = [(e.decode(), f[b"i"].decode()) for _, rows in got for e, f in rows]
    assert await queue.repair() == 0
    started = await queue.normal.start("live", [Delivery(e, j) for e, j in delivered])
    assert [(s.delivery.job_id, s.verdict) for s in started] == [(job.id, "run")]
    assert await queue.repair() == 0
    assert await queue.take() == []


@pytest.mark.on_cluster
@pytest.mark.asyncio
async def test_two_records_naming_one_entry_each_run_once(queue: Queue) -> None:
    """Two queued records name the same entry (it carries the first job's id), once new and
    once acknowledged: the other job is put back (the first only when its entry was passed),
    and each job runs exactly once."""
    first, second = await queue.enqueue(1), await queue.enqueue(2)
    shared = await queue.entry(first.id)
    own = await queue.entry(second.id)
    assert shared and own
    await queue.client.xdel(queue.stream, own)
    await queue.client.hset(queue.key(second.id), "e", shared)
    assert await queue.repair() == 1
    taken = await queue.take()
    assert _runs(taken, first.id) == 1 and _runs(taken, second.id) == 1
    third, fourth = await queue.enqueue(3), await queue.enqueue(4)
    shared = await queue.entry(third.id)
    await queue.client.hset(queue.key(fourth.id), "e", shared)  # its own entry stays
    await _deliver_and_ack(queue, queue.stream)
    assert await queue.repair() == 2
    taken = await queue.take()
    assert _runs(taken, third.id) == 1 and _runs(taken, fourth.id) == 1


@pytest.mark.on_cluster
@pytest.mark.asyncio
async def test_a_stream_without_its_group_keeps_its_entries(queue: Queue) -> None:
    """The group destroyed (or never made), another group present, entries-read set to
    junk-free oddities: entries stay reachable (the worker makes the group at 0), nothing
    is put back, and the job runs once."""
    job = await queue.enqueue(1)
    await queue.client.xgroup_destroy(queue.stream, GROUP)
    await queue.client.xgroup_create(queue.stream, "other", id="$")
    assert await queue.repair() == 0
    await queue.normal.ensure_group()
    assert await queue.take() == [(job.id, "run")]
