"""Reclaiming a dead worker's jobs on the priority levels of a queue: one reclaim.lua
call scans every level (see asyncjobs/_worker/reclaimer.py, Reclaimer)."""

from __future__ import annotations

import asyncio
import time

import pytest

import asyncjobs
from asyncjobs import Context

from .conftest import Backend, running

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]

ran: list[tuple[str, str, float]] = []


@asyncjobs.task
async def note(ctx: Context, tag: str) -> str:
    ran.append((ctx.queue, tag, time.monotonic()))
    return tag


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


async def _held_by_dead(pool: asyncjobs.Pool, level: str, tags: list[str]
                        ) -> list[asyncjobs.Job[str]]:
    jobs = [await pool.enqueue(note.options(queue=level), t) for t in tags]
    keys = pool.keys(level)
    await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
    got = await pool.client.xreadgroup("asyncjobs", "dead-worker", {keys.stream: ">"})
    assert got
    return jobs


async def test_nogroup_on_a_middle_level_while_others_are_claimed(backend: Backend) -> None:
    """Dead worker's entries on q@high and q@low; q's stream vanishes (Redis lost it): the
    claimed entries must still run."""
    async with backend.pool(queue="q") as pool:
        jobs = [*await _held_by_dead(pool, "q@high", ["h1", "h2"]),
                *await _held_by_dead(pool, "q@low", ["l1"])]
        worker = backend.worker([note], queues=["q"], claim_timeout=2, concurrency=10)
        async with running(backend, worker):
            await pool.client.delete(pool.keys("q").stream)
            for job in jobs:
                assert await job.result(timeout=20) in {"h1", "h2", "l1"}
            late = await pool.enqueue(note.options(queue="q"), "late")
            assert await late.result(timeout=20) == "late"
    assert sorted((q, t) for q, t, _ in ran) == [
        ("q", "late"), ("q@high", "h1"), ("q@high", "h2"), ("q@low", "l1")]


async def test_count_used_up_at_a_level_boundary_does_not_delay_the_next_level(
        backend: Backend) -> None:
    """A worker with 2 slots: a dead worker held exactly 2 entries on q@high and one on q.
    The reclaim that takes the two high ones leaves q unscanned with cursor 0-0; the next
    scan should come on the next turn,
    not a whole reclaim interval (C/4 = 2 s here) later."""
    async with backend.pool(queue="q") as pool:
        keys_h, keys_n = pool.keys("q@high"), pool.keys("q")
        jobs = [*await _held_by_dead(pool, "q@high", ["h1", "h2"]),
                *await _held_by_dead(pool, "q", ["n1"])]
        # already idle for long: claimable at the first scan
        for keys in (keys_h, keys_n):
            for entry_id, _ in await pool.client.xrange(keys.stream):
                await pool.client.xclaim(keys.stream, "asyncjobs", "dead-worker", 0,
                                         [entry_id], idle=600_000)
        worker = backend.worker([note], queues=["q"], claim_timeout=8, concurrency=2)
        async with running(backend, worker):
            for job in jobs:
                await job.result(timeout=30)
    at = {t: when for _, t, when in ran}
    gap = at["n1"] - max(at["h1"], at["h2"])
    print(f"\n{backend.name}: n1 ran {gap:.2f} s after the high ones")
    assert gap < 1.0, f"{backend.name}: the normal level waited {gap:.2f} s for its scan"


async def test_the_look_before_a_scan_finds_idle_entries_and_writes_nothing(
        backend: Backend) -> None:
    """idle.lua's contract: the first entry pending at least the given time, not before; a
    level Redis refuses (no group, a key of the wrong type) is reported by its index and
    the others are looked at; at most ``most`` entries are read, and the cursors say where
    to read on; the pending entries' owners, idle times and delivery counts are left as
    they were."""
    from asyncjobs._redis.store import idle_levels

    async with backend.pool(queue="q") as pool:
        await _held_by_dead(pool, "q@low", ["l1", "l2", "l3"])
        stores = [pool.store(level) for level in ("q@high", "q", "q@low")]
        await pool.client.set(pool.keys("q").stream, "not a stream")
        stream = pool.keys("q@low").stream
        before = await pool.client.xpending_range(stream, "asyncjobs", "-", "+", 10)
        entries = [p["message_id"] for p in before]
        entries = [e.decode() if isinstance(e, bytes) else e for e in entries]
        fresh = await idle_levels(stores, 60_000, 100, ["-", "-", "-"])
        assert fresh.found is None and fresh.now_ms > 1_600_000_000_000
        assert fresh.cursors == ["-", "-", "-"]  # every level read to its end
        assert [level for level, _ in fresh.errors] == [0, 1]
        assert "NOGROUP" in fresh.errors[0][1] and "WRONGTYPE" in fresh.errors[1][1]
        part = await idle_levels(stores, 60_000, 2, ["-", "-", "-"])
        assert part.found is None and part.cursors == ["-", "-", f"({entries[1]}"]
        rest = await idle_levels(stores, 60_000, 2, part.cursors)
        assert rest.found is None and rest.cursors == ["-", "-", "-"]
        await asyncio.sleep(0.05)
        idle = await idle_levels(stores, 20, 100, ["-", "-", f"({entries[0]}"])
        assert idle.found == (2, entries[1]) and [level for level, _ in idle.errors] == [0, 1]
        after = await pool.client.xpending_range(stream, "asyncjobs", "-", "+", 10)
        assert [(p["consumer"], p["times_delivered"]) for p in after] == [
            (p["consumer"], p["times_delivered"]) for p in before]
        assert after[0]["time_since_delivered"] >= 50


async def test_a_look_that_reads_up_to_the_last_entry_id_is_done_with_that_level(
        backend: Backend) -> None:
    """A pending list read to ``MAX_ID`` with the budget spent there is read to its end:
    its cursor is '-', not a range start Redis refuses."""
    from asyncjobs._redis.store import idle_levels

    last = "18446744073709551615-18446744073709551615"
    async with backend.pool(queue="q") as pool:
        stream = pool.keys("q").stream
        await pool.client.xgroup_create(stream, "asyncjobs", id="0", mkstream=True)
        await pool.client.xadd(stream, {"i": "a"}, id="1-0")
        await pool.client.xadd(stream, {"i": "b"}, id=last)
        await pool.client.xreadgroup("asyncjobs", "dead-worker", {stream: ">"})
        got = await idle_levels([pool.store("q")], 60_000, 2, ["-"])
        assert got.found is None and got.cursors == ["-"] and got.errors == []
