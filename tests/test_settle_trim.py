"""How settle.lua takes settled entries out of their stream (``ack_and_trim`` in the prelude).

XDEL finds each entry by walking its listpack node from the node's first entry, deleted ones
included: on Redis's default nodes of 100 entries, some 30,000 instructions an entry, the
largest single share of what a job costs Redis (``benchmarks/redis_cost.py``). So a settle
acknowledges its entries, then takes the ones below the group's oldest pending entry (with
none pending, below its last delivered one) out with one ``XTRIM MINID``, which drops whole
nodes at once, and deletes only the rest one by one.

What must never happen: an entry still pending (a job running on another worker, or on this
one) or not delivered yet (a job waiting) leaves the stream; a settled entry stays in it.
Each test attacks one order of takes and settles; ``test_fuzz_scripts.py`` checks the same
rule against garbage in every key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

import asyncjobs
from asyncjobs._redis.keys import GROUP, Keys
from asyncjobs._redis.scripts import run_pipelined
from asyncjobs._redis.store import QueueStore
from asyncjobs._redis.values import SettleOp, Started

from .conftest import Backend

ME, OTHER = "c-me", "c-other"
QUEUE = "trim"


def _run(backend: Backend, n: int,
         body: Callable[[Redis, QueueStore, list[str]], Awaitable[None]]) -> None:
    """Enqueue ``n`` jobs on a queue of the backend; run ``body`` with a client, the
    queue's store and the jobs' entries, oldest first."""

    async def main() -> None:
        async with backend.pool(queue=QUEUE) as pool:
            ref = asyncjobs.task_ref("noop", queue=QUEUE)
            await pool.enqueue_many(asyncjobs.call(ref, i) for i in range(n))
            client = backend.factory(max_connections=4, socket_timeout=None)
            try:
                store = QueueStore(client, Keys(backend.prefix, QUEUE))
                await store.ensure_group()
                entries = [e.decode() for e, _ in await client.xrange(store.keys.stream)]
                assert len(entries) == n
                await body(client, store, entries)
            finally:
                await client.aclose()

    asyncio.run(main())


async def _take(store: QueueStore, consumer: str, count: int) -> list[Started]:
    taken = await store.take(consumer, count)
    assert all(t.verdict == "run" for t in taken), taken
    return taken


async def _settle(client: Redis, store: QueueStore, consumer: str,
                  taken: list[Started]) -> list[int]:
    call = store.settle_call(consumer, [
        SettleOp(t.delivery.entry, t.delivery.job_id, "complete", b"\xc0", 60) for t in taken])
    [replies] = await run_pipelined(client, [call])
    return list(replies)


async def _stream(client: Redis, store: QueueStore) -> list[str]:
    return [e.decode() for e, _ in await client.xrange(store.keys.stream)]


async def _pending(client: Redis, store: QueueStore) -> dict[str, str]:
    rows = await client.xpending_range(store.keys.stream, GROUP, "-", "+", 1000)
    return {r["message_id"].decode(): r["consumer"].decode() for r in rows}


def test_a_settle_leaves_the_jobs_not_delivered_yet(backend: Backend) -> None:
    async def body(client: Redis, store: QueueStore, entries: list[str]) -> None:
        first = await _take(store, ME, 4)
        assert await _settle(client, store, ME, first) == [1] * 4
        assert await _stream(client, store) == entries[4:]  # the 6 waiting stay, in order
        rest = await _take(store, ME, 100)
        assert [t.delivery.entry for t in rest] == entries[4:]  # and are handed out
        assert await _settle(client, store, ME, rest) == [1] * 6
        assert await _stream(client, store) == [] and await _pending(client, store) == {}

    _run(backend, 10, body)


def test_an_older_job_still_running_elsewhere_keeps_its_entry(backend: Backend) -> None:
    async def body(client: Redis, store: QueueStore, entries: list[str]) -> None:
        slow = await _take(store, OTHER, 1)  # the oldest job runs long on another worker
        fast = await _take(store, ME, 5)
        assert await _settle(client, store, ME, fast) == [1] * 5
        assert await _stream(client, store) == entries[:1]
        assert await _pending(client, store) == {entries[0]: OTHER}
        assert await _settle(client, store, OTHER, slow) == [1]
        assert await _stream(client, store) == []

    _run(backend, 6, body)


def test_newer_jobs_running_elsewhere_keep_theirs(backend: Backend) -> None:
    async def body(client: Redis, store: QueueStore, entries: list[str]) -> None:
        mine = await _take(store, ME, 3)
        theirs = await _take(store, OTHER, 3)
        assert await _settle(client, store, ME, mine) == [1] * 3
        assert await _stream(client, store) == entries[3:6] + entries[6:]
        assert await _pending(client, store) == dict.fromkeys(entries[3:6], OTHER)
        assert await _settle(client, store, OTHER, theirs) == [1] * 3
        assert await _stream(client, store) == entries[6:]  # the 2 not delivered yet

    _run(backend, 8, body)


def test_jobs_settled_out_of_order(backend: Backend) -> None:
    async def body(client: Redis, store: QueueStore, entries: list[str]) -> None:
        taken = await _take(store, ME, 9)
        # the middle third first, then the last, then the first: each settle leaves exactly
        # the entries still running, whichever side of them the settled ones lie
        assert await _settle(client, store, ME, taken[3:6]) == [1] * 3
        assert await _stream(client, store) == entries[:3] + entries[6:]
        assert await _settle(client, store, ME, taken[6:]) == [1] * 3
        assert await _stream(client, store) == entries[:3]
        assert await _settle(client, store, ME, [taken[1]]) == [1]
        assert await _stream(client, store) == [entries[0], entries[2]]
        assert await _settle(client, store, ME, [taken[0], taken[2]]) == [1, 1]
        assert await _stream(client, store) == [] and await _pending(client, store) == {}

    _run(backend, 9, body)


def test_a_settle_of_entries_another_worker_took_over_takes_nothing_out(
        backend: Backend) -> None:
    async def body(client: Redis, store: QueueStore, entries: list[str]) -> None:
        taken = await _take(store, ME, 4)
        await client.xclaim(store.keys.stream, GROUP, OTHER, 0, entries[:4])
        assert await _settle(client, store, ME, taken) == [0] * 4  # not mine any more
        assert await _stream(client, store) == entries
        assert await _pending(client, store) == dict.fromkeys(entries[:4], OTHER)

    _run(backend, 5, body)


@pytest.mark.asyncio
async def test_a_settle_below_the_oldest_pending_entry_sends_one_xtrim_and_no_xdel(
        real: Backend) -> None:
    """Counted on the real server (INFO commandstats): 99 jobs settled while the 100th still
    runs are one XTRIM and no XDEL; before, one XDEL walked a node for each of them."""
    async with real.pool(queue=QUEUE) as pool:
        ref = asyncjobs.task_ref("noop", queue=QUEUE)
        await pool.enqueue_many(asyncjobs.call(ref, i) for i in range(100))
    client = real.factory(max_connections=4, socket_timeout=None)
    try:
        store = QueueStore(client, Keys(real.prefix, QUEUE))
        await store.ensure_group()
        taken = await _take(store, ME, 100)
        before = await client.info("commandstats")
        assert await _settle(client, store, ME, taken[:99]) == [1] * 99
        after = await client.info("commandstats")

        def calls(name: str) -> int:
            return int(after.get(f"cmdstat_{name}", {}).get("calls", 0)) - int(
                before.get(f"cmdstat_{name}", {}).get("calls", 0))

        assert calls("xtrim") == 1 and calls("xdel") == 0, (calls("xtrim"), calls("xdel"))
        assert await _stream(client, store) == [taken[99].delivery.entry]
        assert await _settle(client, store, ME, taken[99:]) == [1]
        assert await _stream(client, store) == []
    finally:
        await client.aclose()
