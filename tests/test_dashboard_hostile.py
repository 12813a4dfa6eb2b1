"""An adversarial sweep of the dashboard on a real Redis: garbage in every field of every key
asyncjobs uses, stream entry ids at the edges of the id space, forged cursors, query
parameters and action bodies of any value, raw bytes in the query string, cross-site
actions, and the Redis commands a page costs on a huge queue. Nothing may answer 500, hang
or draw markup that came from Redis; a page on a huge queue costs what it costs on a small
one."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest
import redis

import asyncjobs
from asyncjobs import Pool
from asyncjobs._codec import encode_errors
from asyncjobs._model import ErrorInfo
from asyncjobs._producer.cursor import encode_cursor
from asyncjobs._redis.embedded import RedisServer
from asyncjobs.dashboard import create_app

from .conftest import Backend
from .test_dashboard import XSS, assert_no_markup_from_redis, client, post, token_of

pytestmark = pytest.mark.asyncio

MAX_ID = "18446744073709551615-18446744073709551615"
"""The largest stream entry id Redis accepts: no range can go on past it."""
BAD = b"\xff\xfe" + XSS.encode() + b"\x1b[31m\x00"
"""Not UTF-8, markup, an ANSI escape and a NUL at once."""
enc = msgspec.msgpack.encode

PAGES = ["/", "/queue", "/queue?list=in_flight", "/queue?list=delayed", "/queue?part=charts",
         "/dead", "/dead?task=t", "/dead?error=ValueError", "/workers", "/crons", "/search?id=j"]


async def now_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def assert_safe(page: httpx.Response, where: object) -> None:
    """No 500, and nothing from Redis drawn as markup."""
    assert page.status_code < 500, (where, page.status_code, page.text[-400:])
    assert XSS not in page.text, where
    if page.headers.get("content-type", "").startswith("text/html") and "<html" in page.text:
        assert_no_markup_from_redis(page.text)


async def raw_get(app: Any, path: str, query: bytes, cookie: bytes = b"") -> tuple[int, bytes]:
    """A GET straight through ASGI, with a query string of any bytes (what an ASGI server
    built on httptools passes on as it came; httpx would refuse to send it)."""
    headers = [(b"host", b"dash")] + ([(b"cookie", cookie)] if cookie else [])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query, "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 4321), "server": ("dash", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    return start["status"], b"".join(m.get("body", b"") for m in sent
                                     if m["type"] == "http.response.body")


# -- stream entry ids Redis cannot range past ---------------------------------------------------

async def test_a_delivered_entry_at_the_end_of_the_id_space_is_shown_as_it_is(
        real: Backend) -> None:
    """A stream whose group delivered the entry ``MAX_ID`` (XADD with an explicit id: odd,
    but a stream Redis holds): Redis refuses a range from past it, and nothing can wait
    after it. The overview and the queue's pages show it in flight and nothing waiting
    (they showed a damaged row and answered 409 while they read past it)."""
    async with real.pool() as pool:
        await pool.enqueue("t", 1)  # the healthy default queue
        odd = pool.keys("odd")
        await pool.client.sadd(pool.global_keys.queues, "odd")
        await pool.client.xgroup_create(odd.stream, "asyncjobs", id="0", mkstream=True)
        await pool.client.xadd(odd.stream, {"i": "j"}, id=MAX_ID)
        await pool.client.xreadgroup("asyncjobs", "w", {odd.stream: ">"}, count=1)
        async with client(create_app(pool)) as http:
            overview = await http.get("/")
            pages = [await http.get(path, params={"queue": "odd"})
                     for path in ("/queue", "/dead", "/queue?part=stats")]
    assert overview.status_code == 200, overview.text[-400:]
    row = overview.text.split('<tr data-queue="odd"', 1)[1].split("</tr>", 1)[0]
    assert 'data-testid="damaged"' not in row
    assert '<td class="num" data-stat="waiting">0</td>' in row
    assert '<td class="num" data-stat="in_flight">1</td>' in row, row
    healthy = overview.text.split('<tr data-queue="default">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="num" data-stat="waiting">1</td>' in healthy
    for page in pages:
        assert page.status_code == 200, (page.url, page.status_code, page.text[-300:])
        assert "Traceback" not in page.text


async def test_load_more_after_an_entry_at_the_end_of_the_id_space_is_an_empty_page(
        real: Backend) -> None:
    """A waiting entry ``MAX_ID`` ends a page: nothing can follow it (Redis refuses a range
    from past it), so its own "load more" link gives no rows and no further link (it was a
    400 saying the cursor was invalid)."""
    async with real.pool() as pool:
        keys = pool.keys("default")
        await pool.client.sadd(pool.global_keys.queues, "default")
        await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
        await pool.client.xadd(keys.stream, {"i": "j"}, id=MAX_ID)
        async with client(create_app(pool, page_size=1)) as http:
            first = await http.get("/queue")
            more = re.search(r'<a data-more href="([^"]+)"', first.text)
            assert first.status_code == 200 and more, first.text[-400:]
            rows = await http.get(more.group(1).replace("&amp;", "&") + "&part=rows")
    assert rows.status_code == 200, (rows.status_code, rows.text[-400:])
    assert "<tr" not in rows.text and "data-more" not in rows.text, rows.text[-400:]


async def test_bulk_actions_on_a_letter_at_the_end_of_the_id_space_handle_every_letter(
        real: Backend) -> None:
    """Requeue all and purge walk the dead letters oldest first, resuming after the last one
    read; nothing follows ``MAX_ID`` (Redis refuses a range from past it): the walk ends
    there, and both actions handle every letter (they answered 409 before)."""
    async with real.pool() as pool:
        dead = pool.keys("default").dead
        await pool.client.xadd(dead, {"i": "a", "r": "r"})
        await pool.client.xadd(dead, {"i": "b", "r": "r"}, id=MAX_ID)
        async with client(create_app(pool)) as http:
            token = await token_of(http)
            requeued = await post(http, "requeue-all", token, queue="default")
            assert requeued.status_code == 200, (requeued.status_code, requeued.text[:300])
            assert requeued.json()["ok"] is True
            assert await pool.client.xlen(dead) == 2  # no record: each letter is left
            purged = await post(http, "purge", token, queue="default")
            assert purged.status_code == 200, (purged.status_code, purged.text[:300])
        assert await pool.client.xlen(dead) == 0


async def test_queue_stats_after_the_group_read_the_last_entry_id(real: Backend) -> None:
    """The oldest waiting job is read just past the group's last delivered id; past
    ``MAX_ID`` nothing can wait, and the stats say so instead of raising."""
    async with real.pool() as pool:
        stream = pool.keys("default").stream
        await pool.client.xgroup_create(stream, "asyncjobs", id="0", mkstream=True)
        await pool.client.xadd(stream, {"i": "x"}, id=MAX_ID)
        await pool.client.xreadgroup("asyncjobs", "c", {stream: ">"}, count=10)
        stats = await pool.admin.queue_stats()
    assert (stats.waiting, stats.in_flight, stats.oldest_waiting_s) == (0, 1, None)


@pytest.mark.parametrize(("path", "kind", "entry"), [
    ("/queue?list=waiting", "queued.oldest", "99999999999999999999-0"),
    ("/dead", "x", "99999999999999999999-0"),
    ("/dead", "x", "0-0"),
])
async def test_a_forged_cursor_redis_cannot_range_from_is_a_400(
        real: Backend, path: str, kind: str, entry: str) -> None:
    """Cursors are checksummed, not signed ("a forged cursor can only start a listing
    somewhere else"): one naming an entry id Redis refuses is a 400, not a 500."""
    async with real.pool() as pool:
        await pool.enqueue("t", 1)
        stream = pool.keys("default").stream
        await pool.client.xgroup_create(stream, "asyncjobs", id="0")
        await pool.client.xadd(pool.keys("default").dead, {"i": "x"})
        cursor = encode_cursor(kind, entry)
        async with client(create_app(pool)) as http:
            replies = [await http.get(f"{path}&cursor={cursor}" if "?" in path
                                      else f"{path}?cursor={cursor}"),
                       await http.get(f"{path}{'&' if '?' in path else '?'}part=rows"
                                      f"&cursor={cursor}")]
    for reply in replies:
        assert reply.status_code == 400, (reply.status_code, reply.text[-400:])
        assert "invalid cursor" in reply.text


async def test_load_more_after_a_delayed_job_with_a_long_id_is_no_400(real: Backend) -> None:
    """A job id may have 1,024 characters (4 KiB of UTF-8): the delayed list's cursor holds
    it, so its "load more" link is longer than other parameters may be. It must work."""
    async with real.pool() as pool:
        ids = ["é" * 1024, "a" * 1024, "b"]
        for n, job_id in enumerate(ids):
            await pool.enqueue(asyncjobs.task_ref("t").options(job_id=job_id, delay=60 + n))
        async with client(create_app(pool, page_size=1)) as http:
            first = await http.get("/queue", params={"list": "delayed"})
            shown = re.findall(r'<tr data-job="([^"]+)"', first.text)
            for _ in range(2):
                more = re.search(r'<a data-more href="([^"]+)"', first.text)
                assert more, first.text[-300:]
                first = await http.get(more.group(1).replace("&amp;", "&") + "&part=rows")
                assert first.status_code == 200, first.text[-300:]
                shown += re.findall(r'<tr data-job="([^"]+)"', first.text)
            too_long = await http.get("/queue", params={"list": "delayed",
                                                        "cursor": "x" * 8193})
    assert shown == ids
    assert too_long.status_code == 400 and "too long" in too_long.text


# -- job records ----------------------------------------------------------------------------------

@pytest.mark.parametrize("at_ms", [2**63 - 1, -(2**63), 253402300800000, -62135596800001])
async def test_an_error_time_out_of_range_shows_the_rest_of_the_record(
        real: Backend, at_ms: int) -> None:
    """An error history entry whose time no datetime can hold: the job page shows the
    record (state, the error's type and message, its traceback), the time as unknown; not
    an error page for the whole job."""
    async with real.pool() as pool:
        job = await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"), 1)
        await pool.client.hset(pool.keys("default").job(job.id), mapping={
            "s": "failed", "h": encode_errors([
                ErrorInfo("builtins.KeyError", f"bad {XSS}", "Traceback: tb-text", 1, at_ms),
                ErrorInfo("builtins.ValueError", "fine", "tb", 2, 1_700_000_000_000)])})
        async with client(create_app(pool)) as http:
            page = await http.get("/job", params={"id": job.id})
    assert page.status_code == 200, page.text[-400:]
    assert_safe(page, at_ms)
    assert 'data-field="state">failed<' in page.text
    assert "builtins.KeyError" in page.text and "Traceback: tb-text" in page.text
    assert f"bad {XSS}".replace("<", "&lt;").replace(">", "&gt;") in page.text
    assert "attempt 1 failed" in page.text and "attempt 2 failed" in page.text


GARBAGE: dict[str, list[bytes]] = {
    "s": [BAD, b"", b"queued\x00"],
    "j": [BAD, enc([1, 2]), enc([XSS, [XSS], {XSS: XSS}]), enc(["t", ["A" * 300_000]]),
          enc(["t", [msgspec.msgpack.Ext(5, b"xx")], {}]), enc(["t", [], {}, float("nan"), -5]),
          enc(["t", [], {}, float("inf"), 2**64 - 1]), b"\x91" * 50_000],
    "a": [BAD, b"-5", b"9" * 5000, b"1" * 4300],
    "q": [BAD, b"-99999999999999999999", b"9" * 30], "st": [b"-9999999999999"],
    "et": [b"1" * 19], "d": [b"253402300800000"], "x": [b"-62135596800001"],
    "w": [BAD], "dl": [BAD], "cw": [BAD], "rs": [b"9" * 20], "e": [BAD],
    "h": [BAD, encode_errors([ErrorInfo(XSS, XSS + "\x1b[2J", XSS * 10_000, 2**63, 0)]),
          enc([["T", "m", "t", 1, 0], ["bad"]])],
    "p": [BAD, enc([float("nan"), XSS, 0]), enc([float("inf"), "m"]),
          enc([-1e308, XSS, 2**63, {XSS: [1]}])],
    "r": [BAD, enc({XSS: [XSS]}), enc({b"k": 1}), enc([msgspec.msgpack.Ext(-1, b"\0" * 12)]),
          enc([[[[[]]]]] * 1000), b"\xc1"],
}


@pytest.mark.parametrize(("field", "value"), [
    (f, v) for f, values in GARBAGE.items() for v in values])
async def test_garbage_in_any_field_of_a_record_is_shown_escaped_never_a_500(
        real: Backend, field: str, value: bytes) -> None:
    """Each field of the job records of every state holds garbage in turn: every page, and
    each job's own page, answers (a corrupt state: 200 with a panel saying so), escaped."""
    async with real.pool() as pool:
        keys = pool.keys("default")
        states = ["queued", "scheduled", "failed", "complete", "running"]
        for state in states:
            ref = asyncjobs.task_ref("t").options(job_id=f"j{state}",
                                                  delay=60 if state == "scheduled" else None)
            job = await pool.enqueue(ref, 1)
            await pool.client.hset(keys.job(job.id), mapping={"s": state, field: value})
            if state == "failed":
                await pool.client.xadd(keys.dead, {"i": job.id, "r": "reason", "t": "1"})
        async with client(create_app(pool, page_size=3)) as http:
            pages = [await http.get(p) for p in PAGES]
            pages += [await http.get("/job", params={"id": f"j{s}"}) for s in states]
    for page in pages:
        assert page.status_code in (200, 404), (page.url, page.status_code, page.text[-300:])
        assert_safe(page, page.url)


# -- the other keys ----------------------------------------------------------------------------

Setup = Callable[[Pool], Awaitable[None]]


async def _registry(pool: Pool) -> None:
    c, keys, g = pool.client, pool.keys("default"), pool.global_keys
    t = await now_ms(c)
    await c.zadd(g.workers, {BAD: t, "w1": t, "w2": t, "w3": t, "w4": t, XSS: t,
                             "future": t + 10**12})
    await c.set(g.worker("w1"), b"\xff")
    await c.set(g.worker("w2"), json.dumps({
        "host": XSS, "pid": 1e300, "queues": [XSS, 5, "a b"], "concurrency": "x",
        "running": -1, "started": -1e300, "beat": 1e300, "version": XSS, "tasks": {},
        "stopping": "yes", "crons": [
            {"queue": "default", "name": XSS, "task": XSS, "schedule": XSS,
             "cron": "* * * *", "timezone": "Nowhere/X"},
            {"queue": "default", "name": "e", "every_us": -5, "anchor": "x"},
            {"queue": "default", "name": "e2", "every_us": 10**30,
             "anchor": "2020-01-01T00:00:00Z"},
            {"queue": "default", "name": "e4", "every_us": 1,
             "anchor": "9999-12-31T23:59:59.999999+00:00"},
            {"queue": "default", "name": "c2", "cron": "0 0 31 2 *"},
            {"queue": "default", "name": 5}, "junk"]}))
    await c.set(g.worker(XSS), "[1,2]")
    await c.set(g.worker("w3"), "[" * 100_000)
    await c.set(g.worker("w4"), json.dumps({"crons": "x", "queues": "default"}))
    await c.hset(keys.cron, mapping={XSS: "1", "e": "-5", "e2": "9" * 15, "e4": BAD,
                                     "c2": "253402300799999", f"{XSS}:job": XSS})


async def _minutes(pool: Pool) -> None:
    c, keys = pool.client, pool.keys("default")
    current = await now_ms(c) // 60_000
    for minute in range(current - 5, current + 1):
        await c.hset(keys.minute(minute), mapping={
            "complete": "9" * 15, "failed": "-1", "retry": BAD, XSS: "5", "aborted": "1e5"})
    await c.set(keys.minute(current - 7), "x")


async def _small_keys(pool: Pool) -> None:
    c, keys, g = pool.client, pool.keys("default"), pool.global_keys
    await c.set(keys.leader, BAD + b"|x")
    await c.hset(keys.stats, mapping={"complete": BAD, "failed": "9" * 40, XSS: "1"})
    await c.hset(keys.settings, "max_length", BAD)
    await c.sadd(g.queues, BAD, XSS, "a b", "{x}", "q" * 300, "\x1b[2J")


async def _dead_letters(pool: Pool) -> None:
    c, dead = pool.client, pool.keys("default").dead
    await c.xadd(dead, {"x": "y"})
    await c.xadd(dead, {"i": BAD, "r": BAD, "t": BAD})
    await c.xadd(dead, {"i": XSS, "r": XSS, "t": "9" * 15})
    await c.xadd(dead, {"i": "j", "r": "", "t": "-5"})
    await c.xadd(dead, {"i": "q" * 10_000})


async def _streams(pool: Pool) -> None:
    c, keys = pool.client, pool.keys("default")
    await c.xadd(keys.stream, {"x": "y"})
    await c.xadd(keys.stream, {"i": BAD})
    await c.xadd(keys.stream, {"i": XSS})
    await c.xadd(keys.stream, {"i": ""})
    await c.xgroup_create(keys.stream, "asyncjobs", id="0")
    await c.xreadgroup("asyncjobs", BAD, {keys.stream: ">"}, count=3)
    await c.xgroup_create(keys.stream, XSS, id="0")
    await c.zadd(keys.delayed, {BAD: 1e308, XSS: -1e308, "z": float("inf"),
                                "y": float("-inf"), "q" * 5000: 5})


async def _kept(pool: Pool) -> None:
    keys = pool.keys("default")
    for value in (BAD, None):
        job = await pool.enqueue("t", 1)
        kept = keys.kept(job.id)
        assert kept is not None
        await pool.client.delete(keys.job(job.id))
        if value is None:
            await pool.client.set(kept, "x")
        else:
            await pool.client.hset(kept, job.id, value)


async def _group_ahead(pool: Pool) -> None:
    stream = pool.keys("default").stream
    await pool.client.xgroup_create(stream, "asyncjobs", id="0")
    await pool.client.xgroup_setid(stream, "asyncjobs", id="99999999999-0")


OTHER_KEYS: dict[str, Setup] = {
    "worker registry and cron": _registry, "minute counters": _minutes,
    "leader, stats, settings, queue set": _small_keys, "dead letters": _dead_letters,
    "stream and delayed set": _streams, "kept results": _kept,
    "a group ahead of the stream": _group_ahead,
}


@pytest.mark.parametrize("what", OTHER_KEYS)
async def test_garbage_in_the_other_keys_is_shown_escaped_never_a_500(
        real: Backend, what: str) -> None:
    async with real.pool() as pool:
        await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"), 1)
        await OTHER_KEYS[what](pool)
        async with client(create_app(pool, page_size=3)) as http:
            pages = [await http.get(p) for p in [*PAGES, "/job?id=j"]]
            more = [re.search(r'<a data-more href="([^"]+)"', p.text) for p in pages]
            pages += [await http.get(m.group(1).replace("&amp;", "&") + "&part=rows")
                      for m in more if m]
    for page in pages:
        assert page.status_code == 200, (what, page.url, page.status_code, page.text[-300:])
        assert_safe(page, (what, page.url))


# -- query parameters ---------------------------------------------------------------------------

VALUES = ["", "-1", "0", "NaN", "inf", "-inf", "1e309", "9" * 30, "abc", "x" * 1024, "x" * 1025,
          "%00", "\x00", "é💥", XSS, "../../etc/passwd", "a b", "{x}", " ", "\n", "rows", "list"]
PARAMS = ["queue", "cursor", "list", "part", "id", "task", "error", "limit"]


async def test_query_parameters_of_any_value_are_4xx_never_500(real: Backend) -> None:
    async with real.pool() as pool:
        await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"), 1)
        seen: dict[int, int] = {}
        async with client(create_app(pool)) as http:
            for path in ["/", "/queue", "/dead", "/job", "/workers", "/crons", "/search"]:
                for name in PARAMS:
                    for value in VALUES:
                        for params in ({name: value}, [(name, value), (name, "x"),
                                                       (name, value)]):
                            page = await http.get(path, params=params)
                            seen[page.status_code] = seen.get(page.status_code, 0) + 1
                            assert_safe(page, (path, name, value))
                            if page.status_code >= 400:
                                assert 'data-testid="error"' in page.text, (path, name)
                                assert "Traceback" not in page.text
            long = await http.get("/queue", params={"queue": "q" * 1025})
    assert long.status_code == 400 and "too long" in long.text
    assert set(seen) <= {200, 400, 404}, seen


@pytest.mark.parametrize("query", [b"queue=\xff", b"id=\xff\xfe", b"cursor=\xc3", b"\xff=\xff",
                                   b"queue=default&id=j\x80"])
async def test_a_query_string_that_is_not_utf8_is_no_500(real: Backend, query: bytes) -> None:
    """A first visit (no CSRF cookie yet, so one is set) with raw bytes in the query string:
    the dashboard must not decode the whole URL as UTF-8 to decide on the cookie."""
    async with real.pool() as pool:
        await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"), 1)
        app = create_app(pool)
        replies = {path: await raw_get(app, path, query)
                   for path in ("/", "/queue", "/dead", "/job", "/search")}
    for path, (status, body) in replies.items():
        assert status in (200, 400, 404), (path, status, body[-300:])


# -- actions --------------------------------------------------------------------------------------

MANY_IDS = b'{"confirm": true, "queue": "default", "ids": [' + b'"j",' * 600 + b'"j"]}'
NO_IDS = b'{"confirm": true, "queue": "default", "ids": []}'
BODIES: list[bytes] = [
    b"", b"{", b"[]", b"null", b'"x"', b"1e999", b"\xff\xfe",
    b'{"confirm": true, "queue": "default", "ids": ["\\ud800"]}',
    b'{"confirm": true, "queue": "\\ud800", "ids": ["j"]}',
    b'{"confirm": 1, "queue": "default", "ids": ["j"]}',
    b'{"confirm": true, "queue": "default", "ids": "j"}',
    MANY_IDS,
    b'{"confirm": true, "queue": "default", "ids": ["' + b"x" * 1025 + b'"]}',
    b'{"confirm": true, "queue": "a b", "ids": ["j"]}',
    b'{"confirm": true, "queue": "default", "ids": [1]}',
    b'{"confirm": true, "queue": "default", "ids": [null]}',
    NO_IDS,
    b'{"confirm": true, "queue": "default", "confirm": false, "ids": ["j"]}',
]


async def test_actions_on_bad_bodies_and_ids_are_4xx_never_500(real: Backend) -> None:
    async with real.pool() as pool:
        job = await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"), 1)
        async with client(create_app(pool)) as http:
            token = await token_of(http)
            headers = {"x-csrf-token": token, "content-type": "application/json"}
            for name in ["requeue", "abort", "retry-now", "requeue-all", "purge"]:
                for body in BODIES:
                    if name in ("requeue-all", "purge") and body in (MANY_IDS, NO_IDS):
                        continue  # they take no ids: a valid body for them
                    reply = await http.post(f"/actions/{name}", content=body, headers=headers)
                    assert reply.status_code in (400, 413), (name, body[:60], reply.text[:200])
                    assert reply.json()["ok"] is False and reply.json()["message"]
        assert await job.status() is asyncjobs.JobState.QUEUED


async def test_actions_on_garbage_records_and_ids_answer_without_a_500(real: Backend) -> None:
    async with real.pool() as pool:
        keys = pool.keys("default")
        await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"), 1)
        await pool.client.hset(keys.job("g1"), mapping={"s": BAD})
        await pool.client.hset(keys.job("g2"), mapping={"s": "failed", "j": BAD})
        await pool.client.hset(keys.job("g3"), mapping={"x": "1"})
        await pool.client.zadd(keys.delayed, {"g1": 5})
        for fields in ({"x": "y"}, {"i": BAD}, {"i": ""}, {"i": "j"}, {"i": "g2"}):
            await pool.client.xadd(keys.dead, fields)  # type: ignore[arg-type]
        ids = ["j", "g1", "g2", "g3", "missing", XSS, "\x1b[2J", "\n", "q" * 1024]
        async with client(create_app(pool)) as http:
            token = await token_of(http)
            replies = {name: await post(http, name, token, queue="default", ids=ids)
                       for name in ("requeue", "abort", "retry-now")}
            replies["requeue-all"] = await post(http, "requeue-all", token, queue="default")
            replies["purge"] = await post(http, "purge", token, queue="default")
    for name, reply in replies.items():
        assert reply.status_code in (200, 409), (name, reply.status_code, reply.text[:300])
        assert reply.headers["content-type"] == "application/json"
    assert replies["abort"].status_code == 409  # g1's state cannot be read: said so
    assert "cannot be read" in replies["abort"].json()["message"]


async def test_actions_cannot_be_triggered_cross_site(real: Backend) -> None:
    """What the README promises: a token only the dashboard's page can send (a SameSite
    Strict, HttpOnly cookie echoed in a header), JSON bodies only, cross-site Origin and
    Sec-Fetch-Site refused. Every way a page elsewhere could post is refused; the job is
    untouched."""
    async with real.pool() as pool:
        job = await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"), 1)
        body = json.dumps({"queue": "default", "ids": [job.id], "confirm": True})
        async with client(create_app(pool)) as http:
            token = await token_of(http)
            good = {"x-csrf-token": token, "content-type": "application/json"}
            attempts = [
                {**good, "origin": "null"},
                {**good, "origin": "http://evil.example"},
                {**good, "origin": "http://dash.evil.example"},
                {**good, "origin": "http://evil.example/http://dash"},
                {**good, "sec-fetch-site": "cross-site"},
                {**good, "sec-fetch-site": "same-site"},
                {**good, "sec-fetch-site": "none"},
                {**good, "content-type": "text/plain"},
                {**good, "content-type": "application/x-www-form-urlencoded"},
                {**good, "content-type": "multipart/form-data; boundary=x"},
                {"content-type": "application/json"},
                {"content-type": "application/json", "x-csrf-token": ""},
                {"content-type": "application/json", "x-csrf-token": token[:-1]},
                {"content-type": "application/json", "x-csrf-token": token + "x"},
            ]
            refused = [await http.post("/actions/abort", content=body, headers=headers)
                       for headers in attempts]
            http.cookies.clear()  # a token without its cookie (another browser's page)
            refused.append(await http.post("/actions/abort", content=body, headers=good))
            for method in ("GET", "PUT", "DELETE", "OPTIONS"):
                refused.append(await http.request(method, "/actions/abort", headers=good))
        assert await job.status() is asyncjobs.JobState.QUEUED
    for n, reply in enumerate(refused):
        assert reply.status_code in (403, 405), (n, reply.status_code, reply.text[:200])


# -- bounded work -------------------------------------------------------------------------------

async def _commands(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as link:
        stats = link.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def _fill(pool: Pool, n: int) -> None:
    """``n`` waiting, ``n`` in flight, ``n`` delayed and ``n`` dead letters."""
    c, keys = pool.client, pool.keys("default")
    await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"), 1)
    for start in range(0, n, 5000):
        pipe = c.pipeline(transaction=False)
        for i in range(start, min(n, start + 5000)):
            pipe.xadd(keys.stream, {"i": f"f{i}"})
            pipe.xadd(keys.stream, {"i": f"w{i}"})
            pipe.zadd(keys.delayed, {f"d{i}": 10**13 + i})
            pipe.xadd(keys.dead, {"i": f"x{i}", "r": "r"})
        await pipe.execute()
    await c.xgroup_create(keys.stream, "asyncjobs", id="0")
    await c.xreadgroup("asyncjobs", "w", {keys.stream: ">"}, count=n + 1)


BOUNDED = ["/queue", "/queue?list=in_flight", "/queue?list=delayed", "/dead",
           "/dead?task=nothing", "/dead?error=nothing", "/job?id=j", "/search?id=j",
           "/queue?part=rows&list=waiting", "/", "/workers", "/crons"]


async def test_a_page_on_a_huge_queue_costs_the_commands_it_costs_on_a_small_one(
        fresh_redis: RedisServer) -> None:
    """Redis commands each page sends (counted by Redis: commandstats), on a queue with
    1,200 jobs in each list and on one with 40,000: the same."""
    costs: dict[int, dict[str, int]] = {}
    for n in (1200, 40_000):
        async with asyncjobs.create_pool(fresh_redis.url, prefix=f"b{n}") as pool:
            await _fill(pool, n)
            async with client(create_app(pool)) as http:
                await http.get("/")  # the cookie, the pool's first connection
                costs[n] = {}
                for path in BOUNDED:
                    before = await _commands(fresh_redis)
                    page = await http.get(path)
                    assert page.status_code == 200, (n, path, page.text[-300:])
                    costs[n][path] = await _commands(fresh_redis) - before - 1
    assert costs[1200] == costs[40_000], costs
    assert costs[1200]["/dead?task=nothing"] <= 1100  # 1,000 letters read at most


@pytest.mark.parametrize("state", ["queued", "running", "dead"])
async def test_listing_oldest_first_up_to_the_last_entry_id_ends_there(
        real: Backend, state: str) -> None:
    """Oldest first, one row a page, over entries ending with ``MAX_ID``: the pages give
    every entry once, and the page after the last is empty, with no cursor (Redis refuses
    a range from past ``MAX_ID``: that page raised before)."""
    async with real.pool() as pool:
        keys = pool.keys("default")
        await pool.client.sadd(pool.global_keys.queues, "default")
        await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
        key = keys.dead if state == "dead" else keys.stream
        await pool.client.xadd(key, {"i": "first"}, id="1-0")
        await pool.client.xadd(key, {"i": "last"}, id=MAX_ID)
        if state == "running":
            await pool.client.xreadgroup("asyncjobs", "w", {keys.stream: ">"}, count=10)
        seen: list[str] = []
        cursor = None
        for _ in range(4):
            page = await pool.admin.jobs(state, order="oldest", cursor=cursor, limit=1)
            seen += [row.job_id for row in page.items]
            cursor = page.cursor
            if cursor is None:
                break
    assert seen == ["first", "last"] and cursor is None


async def test_ids_longer_than_any_job_s_are_cut_and_never_looked_up(real: Backend) -> None:
    """Waiting entries and dead letters whose job id is 300 KB (no producer writes one over
    1,024 characters): pages show each cut, stay small, send Redis no such key, and an
    action on a cut id is refused."""
    huge = ["x" * 300_000 + str(n) for n in range(10)]
    async with real.pool() as pool:
        keys = pool.keys("big")
        await pool.client.sadd(pool.global_keys.queues, "big")
        for job_id in huge:
            await pool.client.xadd(keys.stream, {"i": job_id})
            await pool.client.xadd(keys.dead, {"i": job_id, "r": "raised ValueError", "t": "1"})
        async with client(create_app(pool)) as http:
            token = await token_of(http)
            for path in ("/queue?queue=big", "/dead?queue=big"):
                sent = (await pool.client.info("stats"))["total_net_input_bytes"]
                page = await http.get(path)
                sent = (await pool.client.info("stats"))["total_net_input_bytes"] - sent
                assert page.status_code == 200, path
                assert len(page.text) < 150_000, (path, len(page.text))
                assert "x" * 1024 + "…" in page.text and "x" * 1025 not in page.text
                assert sent < 100_000, (path, sent)  # 3 MB if the records were looked up
            refused = await post(http, "abort", token, queue="big", ids=["x" * 1024 + "…"],
                                 confirm=True)
            assert refused.status_code == 400
