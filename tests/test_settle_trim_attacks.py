"""Attacks on settle.lua's ``XTRIM MINID`` (``ack_and_trim`` in the prelude) that
``test_settle_trim.py`` and the settle fuzz test do not make: ids whose parts have other
numbers of digits (the bound is compared as text, digit counts first), an orphan's entry
taken out by another worker's trim, a group moved past the stream's end by hand (its bound
then lies beyond every waiting entry), and ids past 2^53 (which Lua numbers cannot tell
apart)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

import asyncjobs
from asyncjobs._redis.keys import GROUP, Keys
from asyncjobs._redis.store import QueueStore, reschedule_levels
from asyncjobs._redis.values import Delivery

from .conftest import Backend
from .test_settle_trim import _pending, _settle, _stream, _take

ME, OTHER, GONE = "c-me", "c-other", "c-gone"
QUEUE = "trimattack"
BIG = 2 ** 53  # 9007199254740992: BIG and BIG + 1 are one Lua number


def _run(backend: Backend, n: int,
         body: Callable[[Redis, QueueStore, list[str], list[str]], Awaitable[None]],
         after: str | None = None) -> None:
    """Enqueue ``n`` jobs on a queue of the backend, their entries right after the id
    ``after`` when given (a placeholder entry there, deleted before the jobs come); run
    ``body`` with a client, the queue's store, the jobs' entries and ids, oldest first."""

    async def main() -> None:
        client = backend.factory(max_connections=4, socket_timeout=None)
        try:
            store = QueueStore(client, Keys(backend.prefix, QUEUE))
            if after is not None:
                await client.xadd(store.keys.stream, {"x": "placeholder"}, id=after)
                await client.xdel(store.keys.stream, after)
            async with backend.pool(queue=QUEUE) as pool:
                ref = asyncjobs.task_ref("noop", queue=QUEUE)
                jobs = await pool.enqueue_many(asyncjobs.call(ref, i) for i in range(n))
            await store.ensure_group()
            entries = await _stream(client, store)
            assert len(entries) == n
            await body(client, store, entries, [j.id for j in jobs])
        finally:
            await client.aclose()

    asyncio.run(main())


def test_ids_with_more_digits_are_after_the_bound_not_before_it(backend: Backend) -> None:
    """The jobs' entries straddle a change of digit count in the ms part (and sit at the
    last sequence numbers a ms has): 9999999999999-18446744073709551614, ...615, then
    10000000000000-0, -1, -2. As text, '10000000000000-0' sorts before '9999999999999-...':
    compared that way, the settled entries after the bound would be taken for entries
    before it, left to a trim that cannot remove them, and stay in the stream."""
    async def body(client: Redis, store: QueueStore, entries: list[str],
                   ids: list[str]) -> None:
        a, b, c, d, e = entries
        assert (a, b, c, d, e) == (
            "9999999999999-18446744073709551614", "9999999999999-18446744073709551615",
            "10000000000000-0", "10000000000000-1", "10000000000000-2")
        first = await _take(store, ME, 1)
        theirs = await _take(store, OTHER, 1)
        later = await _take(store, ME, 2)
        # the bound is a (still mine, not in this batch): c and d lie after it
        assert await _settle(client, store, ME, later) == [1, 1]
        assert await _stream(client, store) == [a, b, e]
        assert await _pending(client, store) == {a: ME, b: OTHER}
        # a lies before b (theirs, still running): trimmed
        assert await _settle(client, store, ME, first) == [1]
        assert await _stream(client, store) == [b, e]
        # nothing pending once b is settled: the bound is the last delivered entry, d;
        # e, not delivered yet, stays
        assert await _settle(client, store, OTHER, theirs) == [1]
        assert await _stream(client, store) == [e]
        rest = await _take(store, ME, 10)
        assert [t.delivery.entry for t in rest] == [e]
        assert await _settle(client, store, ME, rest) == [1]
        assert await _stream(client, store) == [] and await _pending(client, store) == {}

    _run(backend, 5, body, after="9999999999999-18446744073709551613")


def test_an_orphans_entry_trimmed_by_another_settle_is_still_settled_by_its_worker(
        backend: Backend) -> None:
    """A worker's consumer deleted by hand (XGROUP DELCONSUMER) while its job runs: the
    entry is pending for nobody, so another worker's settle trims it with its own. The
    job's worker still keeps it (touch: not lost) and records its end (an orphan), and the
    entries still running elsewhere, from the bound on, stay."""
    async def body(client: Redis, store: QueueStore, entries: list[str],
                   ids: list[str]) -> None:
        orphaned = await _take(store, GONE, 1)
        mine = await _take(store, ME, 1)
        theirs = await _take(store, OTHER, 2)
        assert await client.xgroup_delconsumer(store.keys.stream, GROUP, GONE) == 1
        assert await _settle(client, store, ME, mine) == [1]
        assert await _stream(client, store) == entries[2:]  # entries[0] trimmed too
        assert await _pending(client, store) == dict.fromkeys(entries[2:4], OTHER)
        held = [Delivery(orphaned[0].delivery.entry, ids[0])]
        assert await store.touch(GONE, held) == ([], [])  # not lost: its attempt goes on
        assert await _settle(client, store, GONE, orphaned) == [1]
        assert await client.hget(store.keys.job(ids[0]), "s") == b"complete"
        assert await _stream(client, store) == entries[2:]
        assert await _settle(client, store, OTHER, theirs) == [1, 1]
        assert await _stream(client, store) == entries[4:]

    _run(backend, 5, body)


def test_jobs_behind_a_group_moved_past_the_streams_end_are_trimmed_and_put_back_once(
        backend: Backend) -> None:
    """XGROUP SETID beyond the stream's last id by hand: jobs enqueued after it lie before
    the group's last-delivered id, never handed out. With nothing pending that id is the
    bound, so the next settle trims them with its own entry; the repair (which put them
    back anyway: delivered for the group, pending for nobody) puts each back from its
    record, once, and each runs once."""
    async def body(client: Redis, store: QueueStore, entries: list[str],
                   ids: list[str]) -> None:
        held = await _take(store, ME, 1)
        await client.xgroup_setid(store.keys.stream, GROUP, "99999999999999-0")
        async with backend.pool(queue=QUEUE) as pool:
            ref = asyncjobs.task_ref("noop", queue=QUEUE)
            late = [j.id for j in await pool.enqueue_many(
                asyncjobs.call(ref, i) for i in range(3))]
        assert len(await _stream(client, store)) == 4
        assert await _settle(client, store, ME, held) == [1]
        assert await _stream(client, store) == []  # the 3 late ones went with it
        requeued, cursor = 0, "0"
        while True:
            step = await reschedule_levels([store], cursor, 1000)
            requeued += step.requeued
            cursor = step.cursor
            if cursor == "0":
                break
        assert requeued == 3
        ran = await _take(store, ME, 10)
        assert sorted(t.delivery.job_id for t in ran) == sorted(late)
        assert await _settle(client, store, ME, ran) == [1] * 3
        assert await _stream(client, store) == [] and await _pending(client, store) == {}
        assert (await reschedule_levels([store], "0", 1000)).requeued == 0

    _run(backend, 1, body)


def test_a_batch_whose_ids_differ_beyond_2_53_is_settled(backend: Backend) -> None:
    """Two jobs whose entries (written by hand) are BIG-10 and (BIG+1)-5: one Lua number
    for both ms parts. Settled in one batch, both are this consumer's. held_set found the
    batch's range with tonumber(): lo=(BIG+1)-5, hi=BIG-10, an empty XPENDING range, and
    nothing was settled (settle answered 0 for each: "not mine any more")."""
    async def body(client: Redis, store: QueueStore, entries: list[str],
                   ids: list[str]) -> None:
        stream = store.keys.stream
        await client.xdel(stream, *entries)
        moved = [f"{BIG}-10", f"{BIG + 1}-5"]
        for job_id, entry in zip(ids, moved, strict=True):
            await client.xadd(stream, {"i": job_id}, id=entry)
            await client.hset(store.keys.job(job_id), "e", entry)
        taken = await _take(store, ME, 2)
        assert [t.delivery.entry for t in taken] == moved
        assert await _settle(client, store, ME, taken) == [1, 1]
        assert await _stream(client, store) == [] and await _pending(client, store) == {}

    _run(backend, 2, body)
