"""The dashboard's listings (``pool.admin.waiting_jobs`` and friends): pages, cursors,
filters, bounded scans, and cursors that were tampered with."""

from __future__ import annotations

import base64
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._codec import encode_errors
from asyncjobs._model import ErrorInfo
from asyncjobs._producer.cursor import MAX_LIMIT, decode_cursor, encode_cursor
from asyncjobs._redis.keys import GROUP

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]


@asyncjobs.task(max_tries=1)
async def boom(ctx: Context, n: int) -> None:
    raise ValueError(f"boom {n}")


@asyncjobs.task(max_tries=1)
async def crash(ctx: Context, n: int) -> None:
    raise KeyError(n)


async def test_waiting_pages_follow_the_stream(pool: asyncjobs.Pool) -> None:
    jobs = [await pool.enqueue("t", i) for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        page = await pool.admin.waiting_jobs(cursor=cursor, limit=3)
        seen += page.items
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert [r.job_id for r in seen] == [j.id for j in jobs]
    assert pages == 3
    assert {r.task for r in seen} == {"t"} and {r.state for r in seen} == {"queued"}
    assert all(r.at is not None and r.entry for r in seen)


async def test_in_flight_and_waiting_split_at_the_group(pool: asyncjobs.Pool) -> None:
    jobs = [await pool.enqueue("t", i) for i in range(5)]
    stream = pool.keys("default").stream
    await pool.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await pool.client.xreadgroup(GROUP, "w1", {stream: ">"}, count=2)
    flying = await pool.admin.in_flight_jobs(limit=1)
    assert [r.job_id for r in flying.items] == [jobs[0].id]
    assert flying.items[0].worker == "w1" and flying.items[0].deliveries == 1
    rest = await pool.admin.in_flight_jobs(cursor=flying.cursor, limit=1)
    assert [r.job_id for r in rest.items] == [jobs[1].id]
    waiting = await pool.admin.waiting_jobs(limit=10)
    assert [r.job_id for r in waiting.items] == [j.id for j in jobs[2:]]
    assert waiting.cursor is None
    stats = await pool.admin.queue_stats()
    assert (stats.waiting, stats.in_flight) == (3, 2)


async def test_delayed_pages_survive_ties_and_departures(pool: asyncjobs.Pool) -> None:
    jobs = [await pool.enqueue(asyncjobs.task_ref("t").options(delay=60), i) for i in range(6)]
    await pool.client.zadd(pool.keys("default").delayed, {j.id: 5 for j in jobs[:4]}, xx=True)
    first = await pool.admin.delayed_jobs(limit=2)
    assert len(first.items) == 2 and first.cursor
    second = await pool.admin.delayed_jobs(cursor=first.cursor, limit=2)
    third = await pool.admin.delayed_jobs(cursor=second.cursor, limit=2)
    listed = [r.job_id for p in (first, second, third) for r in p.items]
    assert sorted(listed) == sorted(j.id for j in jobs)
    assert len(set(listed)) == 6
    # The member the cursor names leaves the set: the next page resumes after its due time.
    await pool.client.zrem(pool.keys("default").delayed, second.items[-1].job_id)
    after = await pool.admin.delayed_jobs(cursor=second.cursor, limit=10)
    assert [r.job_id for r in after.items] == [r.job_id for r in third.items]


async def fail(pool: asyncjobs.Pool, job: asyncjobs.Job[Any], error: str = "builtins.ValueError",
               message: str = "boom") -> None:
    """Dead-letter a queued job the way settle.lua does after its last attempt failed:
    a letter, and the record failed with its error history (no worker needed)."""
    keys = pool.keys(job.queue)
    seconds, micros = await pool.client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    reason = f"raised {error.rpartition('.')[2]} on try 1 of 1"
    letter = await pool.client.xadd(keys.dead, {"i": job.id, "r": reason, "t": now})
    entry = await pool.client.hget(keys.job(job.id), "e")
    if entry:
        await pool.client.xdel(keys.stream, entry)
    history = encode_errors([ErrorInfo(error, message, f"Traceback ...\n{error}: {message}\n",
                                       1, now)])
    await pool.client.hset(keys.job(job.id), mapping={
        "s": "failed", "a": 1, "st": now, "et": now, "w": "test:1:x", "h": history,
        "dl": reason, "de": letter})
    await pool.client.hdel(keys.job(job.id), "e")
    await pool.client.hincrby(keys.minute(now // 60_000), "failed", 1)


async def dead_letters(pool: asyncjobs.Pool, booms: int, crashes: int) -> None:
    for i in range(booms):
        await fail(pool, await pool.enqueue(boom, i), message=f"boom {i}")
    for i in range(crashes):
        await fail(pool, await pool.enqueue(crash, i), "builtins.KeyError", str(i))


async def test_dead_letters_newest_first_with_filters(pool: asyncjobs.Pool) -> None:
    await dead_letters(pool, 5, 3)
    page = await pool.admin.dead_letter_page(limit=4)
    assert len(page.items) == 4 and page.cursor
    rest = await pool.admin.dead_letter_page(cursor=page.cursor, limit=4)
    assert len(rest.items) == 4
    entries = [r.letter.entry for r in page.items + rest.items]
    assert entries == sorted(entries, key=lambda e: tuple(map(int, e.split("-"))),
                             reverse=True)
    crashed = await pool.admin.dead_letter_page(task="crash", limit=10)
    assert len(crashed.items) == 3 and crashed.cursor is None
    assert {r.job.error_type for r in crashed.items} == {"builtins.KeyError"}
    by_error = await pool.admin.dead_letter_page(error="ValueError", limit=10)
    assert len(by_error.items) == 5 and {r.job.task for r in by_error.items} == {"boom"}
    assert len((await pool.admin.dead_letter_page(error="builtins.KeyError")).items) == 3
    assert (await pool.admin.dead_letter_page(task="nothing")).items == []


async def test_a_filtered_scan_is_bounded_and_resumes(pool: asyncjobs.Pool) -> None:
    await dead_letters(pool, 6, 1)
    # newest first: the crash is the newest letter; the booms come after it.
    page = await pool.admin.dead_letter_page(error="ValueError", limit=10, scan=4)
    assert page.scanned == 4 and len(page.items) == 3 and page.cursor
    rest = await pool.admin.dead_letter_page(error="ValueError", limit=10, scan=4,
                                             cursor=page.cursor)
    assert rest.scanned == 3 and len(rest.items) == 3 and rest.cursor is None


async def test_tampered_cursors_are_a_value_error(pool: asyncjobs.Pool) -> None:
    await pool.enqueue("t", 1)
    good = encode_cursor("w", "1-0")
    bad = [
        "!!!", "AAAA", good[:-1] + ("A" if good[-1] != "A" else "B"),
        base64.urlsafe_b64encode(b"w|1-0; DROP").decode(), encode_cursor("w", "1-0; DROP"),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        encode_cursor("x", "1-0"),  # a dead-letter cursor on the waiting list
        "A" * 5000,
    ]
    for cursor in bad:
        with pytest.raises(ValueError, match="invalid cursor"):
            await pool.admin.waiting_jobs(cursor=cursor)
    with pytest.raises(ValueError, match="invalid cursor"):
        await pool.admin.delayed_jobs(cursor=encode_cursor("d", "soon", "x"))
    with pytest.raises(ValueError, match="invalid cursor"):
        await pool.admin.dead_letter_page(cursor=encode_cursor("x", "+"))
    with pytest.raises(ValueError, match="limit"):
        await pool.admin.waiting_jobs(limit=MAX_LIMIT + 1)
    assert decode_cursor(encode_cursor("d", "5", "a|b"), "d", 2) == ["5", "a|b"]


async def test_find_job_and_make_due(pool: asyncjobs.Pool) -> None:
    later = await pool.enqueue(asyncjobs.task_ref("t", queue="mail").options(delay=600), 1)
    assert await pool.admin.find_job(later.id) == ["mail"]
    assert await pool.admin.find_job("nope") == []
    assert await pool.admin.make_due([later.id, "nope"], "mail") == [later.id]
    [(_, score)] = await pool.client.zrange(pool.keys("mail").delayed, 0, -1, withscores=True)
    assert score == 0


async def test_garbage_records_are_listed_as_such(pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue("t", 1)
    key = pool.keys("default").job(job.id)
    await pool.client.hset(key, mapping={"j": b"\xc1garbage", "a": "many", "h": b"\x00"})
    stream = pool.keys("default").stream
    await pool.client.xadd(stream, {"i": "no-record"})
    await pool.client.set(pool.keys("default").job("wrong-type"), "x")
    await pool.client.xadd(stream, {"i": "wrong-type"})
    await pool.client.xadd(stream, {"x": "no id"})
    rows = (await pool.admin.waiting_jobs()).items
    assert [(r.task, r.state, r.attempts) for r in rows] == [
        ("<undecodable>", "queued", 0), ("?", "missing", 0), ("?", "unreadable", 0),
        ("?", "missing", 0)]
