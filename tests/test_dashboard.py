"""The dashboard over HTTP, in-process on the in-memory Redis: every page, the numbers it
shows, pagination, escaping, redaction, CSRF, read-only mode, and every action."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
import pytest_asyncio

import asyncjobs
from asyncjobs import Context
from asyncjobs.dashboard import create_app
from asyncjobs.testing import Harness

from .test_dashboard_listing import dead_letters, fail

pytestmark = pytest.mark.asyncio

XSS = "<script>alert(1)</script>"
BASE = "http://dash"


@asyncjobs.task(max_tries=1)
async def boom(ctx: Context, n: int) -> None:
    raise ValueError(f"boom {n}")


@asyncjobs.task(max_tries=1)
async def crash(ctx: Context, n: int) -> None:
    raise KeyError(n)


@asyncjobs.task
async def charge(ctx: Context, order: int, card: str, *, note: str = "") -> None: ...


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    await h.close()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


async def token_of(http: httpx.AsyncClient, path: str = "/") -> str:
    page = await http.get(path)
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found and http.cookies.get("asyncjobs_csrf") == found.group(1)
    return found.group(1)


async def post(http: httpx.AsyncClient, action: str, token: str | None = None,
               **body: Any) -> httpx.Response:
    token = token if token is not None else await token_of(http)
    return await http.post(f"/actions/{action}", json={"confirm": True, **body},
                           headers={"x-csrf-token": token})


class Tags(HTMLParser):
    """Every element of a page, with its attributes, and the text inside scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def assert_no_markup_from_redis(html: str) -> None:
    """No element but the templates' own: no img, no inline script or handler, no style."""
    parser = Tags()
    parser.feed(html)
    names = {tag for tag, _ in parser.tags}
    assert "img" not in names and "iframe" not in names
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert len(scripts) == 1 and str(scripts[0].get("src", "")).startswith("/static/")
    assert parser.script_text.strip() == ""
    for tag, attrs in parser.tags:
        assert not any(name.startswith("on") or name == "style" for name in attrs), (tag, attrs)


def numbers(html: str, attr: str = "data-stat") -> dict[str, str]:
    return {m.group(1): re.sub(r"<[^>]+>", "", m.group(2)).strip()
            for m in re.finditer(rf'{attr}="(\w+)">(.*?)</d[d]>', html, re.S)}


async def test_every_page_answers_and_numbers_match_redis(harness: Harness) -> None:
    pool = harness.pool
    await dead_letters(pool, 3, 0)
    for i in range(4):
        await pool.enqueue("t", i)
    await pool.enqueue(asyncjobs.task_ref("t").options(delay=600), 9)
    async with client(create_app(pool)) as http:
        for path in ("/", "/queue", "/queue?list=in_flight", "/queue?list=delayed", "/dead",
                     "/workers", "/crons", "/search?id=x", "/job?id=nope"):
            answer = await http.get(path)
            assert answer.status_code == (404 if "nope" in path else 200), path
            assert answer.headers["content-security-policy"].startswith("default-src 'none'")
        html = (await http.get("/queue?queue=default")).text
    stats = await pool.admin.queue_stats()
    shown = numbers(html)
    assert (shown["waiting"], shown["in_flight"], shown["delayed"], shown["dead"]) == (
        str(stats.waiting), str(stats.in_flight), str(stats.delayed), str(stats.dead))
    assert (stats.waiting, stats.delayed, stats.dead) == (4, 1, 3)
    assert "complete 0" in html and "failed 3" in html  # the chart's totals for the hour


async def test_large_lists_paginate(harness: Harness) -> None:
    jobs = await harness.pool.enqueue_many(asyncjobs.call("t", i) for i in range(120))
    async with client(create_app(harness.pool, page_size=50)) as http:
        first = (await http.get("/queue")).text
        assert first.count('<tr data-job="') == 50
        more = re.search(r'<a data-more href="([^"]+)"', first)
        assert more
        rows = await http.get(more.group(1).replace("&amp;", "&") + "&part=rows")
        assert rows.text.count('<tr data-job="') == 50
        shown = re.findall(r'<tr data-job="([^"]+)"', first + rows.text)
        assert shown == [j.id for j in jobs[:100]]
        bad = await http.get("/queue?cursor=" + "x" * 30)
        assert bad.status_code == 400 and "invalid cursor" in bad.text
        assert (await http.get("/queue?list=nothing")).status_code == 400
        assert (await http.get("/queue?queue=a%20b")).status_code == 400


async def test_redis_data_is_shown_as_text(harness: Harness) -> None:
    pool = harness.pool
    job = await pool.enqueue(boom.options(job_id=f"id{XSS}"), 1)
    await fail(pool, job, f"error{XSS}", f"message {XSS}")
    xjob = await pool.enqueue(asyncjobs.task_ref(f"task{XSS}"), XSS,
                              note='"><img src=x onerror=alert(1)>')
    await fail(pool, xjob)
    await pool.client.xadd(pool.keys("default").dead, {"i": XSS, "r": f"reason {XSS}"})
    await pool.enqueue(asyncjobs.task_ref("t", queue=XSS), 1)
    async with client(create_app(pool)) as http:
        pages = [await http.get(p, params=q) for p, q in [
            ("/", {}), ("/queue", {}), ("/dead", {}), ("/job", {"id": job.id}),
            ("/queue", {"queue": XSS}), ("/dead", {"task": XSS, "error": XSS}),
            ("/search", {"id": XSS}), ("/job", {"id": XSS}), ("/job", {"id": xjob.id}),
        ]]
    for page in pages:
        assert page.status_code in (200, 404)
        assert XSS not in page.text and "<img" not in page.text
        assert "onerror=alert" not in page.text.replace("onerror=alert(1)&gt;", "")
        assert_no_markup_from_redis(page.text)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"id{escaped}" in pages[2].text and f"task{escaped}" in pages[2].text
    assert f"reason {escaped}" in pages[2].text
    assert f"&#34;{escaped}&#34;" in pages[-1].text  # the argument, as text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in pages[-1].text


async def test_a_job_page_shows_the_record(harness: Harness) -> None:
    job = await harness.pool.enqueue(boom, 7)
    await fail(harness.pool, job, message="boom 7")
    await harness.pool.client.hset(harness.pool.keys("default").job(job.id), "p",
                                   b"\x93\xcb?\xe0\x00\x00\x00\x00\x00\x00\xa4half\x00")
    async with client(create_app(harness.pool)) as http:
        html = (await http.get("/job", params={"id": job.id})).text
    assert 'data-field="state">failed<' in html and "boom 7" in html
    assert "Traceback ...\nbuiltins.ValueError: boom 7" in html
    assert '<progress max="1" value="0.5">' in html and "half" in html
    assert "attempt 1 failed" in html and "enqueued" in html  # the timeline
    assert 'data-action="requeue"' in html and 'data-action="abort"' not in html


async def test_a_corrupt_record_is_an_error_panel(harness: Harness) -> None:
    key = harness.pool.keys("default").job("bad")
    await harness.pool.client.hset(key, mapping={"s": "zombie", "j": b"\xc1"})
    await harness.pool.client.set(harness.pool.keys("default").job("wrong"), "x")
    async with client(create_app(harness.pool)) as http:
        for job_id, why in (("bad", "zombie"), ("wrong", "something other than a hash")):
            page = await http.get("/job", params={"id": job_id})
            assert page.status_code == 200 and 'data-testid="corrupt"' in page.text
            assert why in page.text


async def test_redaction(harness: Harness) -> None:
    pool = harness.pool
    a = await pool.enqueue(charge, 1, "4242-card", note="secret-note")
    b = await pool.enqueue("email", "to@example.com", password="hunter2")
    c = await pool.enqueue("sms", "555-phone")
    d = await pool.enqueue("raises", "sensitive")

    def oops(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        raise RuntimeError("bug")

    app = create_app(pool, redact={charge: {"card", "note"}, "email": {"password"},
                                   "sms": lambda args, kwargs: (["<hidden>"], kwargs),
                                   "raises": oops})
    async with client(app) as http:
        pages = {j.id: (await http.get("/job", params={"id": j.id})).text for j in (a, b, c, d)}
    assert "4242-card" not in pages[a.id] and "secret-note" not in pages[a.id]
    assert "1," in pages[a.id] and "***" in pages[a.id]
    assert "hunter2" not in pages[b.id] and "to@example.com" in pages[b.id]
    assert "555-phone" not in pages[c.id] and "&lt;hidden&gt;" in pages[c.id]
    assert "sensitive" not in pages[d.id] and "every argument hidden" in pages[d.id]
    with pytest.raises(TypeError):
        create_app(pool, redact={"x": "card"})


async def test_actions_need_the_csrf_token(harness: Harness) -> None:
    job = await harness.pool.enqueue("t", 1)
    async with client(create_app(harness.pool)) as http:
        token = await token_of(http)
        body = {"queue": "default", "ids": [job.id], "confirm": True}
        refused = [
            await http.post("/actions/abort", json=body),
            await http.post("/actions/abort", json=body, headers={"x-csrf-token": "x" * 43}),
            await http.post("/actions/abort", json=body, headers={
                "x-csrf-token": token, "sec-fetch-site": "cross-site"}),
            await http.post("/actions/abort", json=body, headers={
                "x-csrf-token": token, "origin": "http://evil.example"}),
            await http.post("/actions/abort", content=f"queue=default&ids={job.id}",
                            headers={"x-csrf-token": token,
                                     "content-type": "application/x-www-form-urlencoded"}),
        ]
        assert [r.status_code for r in refused] == [403] * 5
        assert (await http.get("/actions/abort")).status_code == 405
        assert (await job.status()) is asyncjobs.JobState.QUEUED
        unconfirmed = await http.post("/actions/abort", json={**body, "confirm": False},
                                      headers={"x-csrf-token": token})
        assert unconfirmed.status_code == 400
        done = await http.post("/actions/abort", json=body, headers={
            "x-csrf-token": token, "origin": BASE, "sec-fetch-site": "same-origin"})
        assert done.status_code == 200, done.text
    assert (await job.status()) is asyncjobs.JobState.ABORTED
    cookie = [h for k, h in done.request.headers.items() if k == "cookie"]
    assert cookie


async def test_the_csrf_cookie_is_strict_and_scoped(harness: Harness) -> None:
    async with client(create_app(harness.pool)) as http:
        first = await http.get("/")
        again = await http.get("/")
    cookie = first.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "set-cookie" not in again.headers


async def test_read_only_mode_removes_the_actions(harness: Harness) -> None:
    job = await harness.pool.enqueue(boom, 1)
    await fail(harness.pool, job)
    await harness.pool.enqueue(asyncjobs.task_ref("t").options(delay=60), 1)
    async with client(create_app(harness.pool, read_only=True)) as http:
        for path in ("/dead", f"/job?id={job.id}", "/queue?list=delayed"):
            html = (await http.get(path)).text
            assert "data-action" not in html and "read-only" in html
        for action in ("requeue", "requeue-all", "purge", "abort", "retry-now"):
            answer = await post(http, action, queue="default", ids=[job.id])
            assert answer.status_code == 403 and "read-only" in answer.json()["message"]
    assert (await job.status()) is asyncjobs.JobState.FAILED
    assert (await harness.pool.admin.queue_stats()).dead == 1


async def test_every_action_does_what_it_says_and_is_logged(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    pool = harness.pool
    dead = [await pool.enqueue(boom, i) for i in range(4)]
    for job in dead:
        await fail(pool, job)
    later = await pool.enqueue(asyncjobs.task_ref("t").options(delay=600), 1)
    queued = await pool.enqueue("t", 2)
    caplog.set_level(logging.INFO, "asyncjobs.dashboard")
    async with client(create_app(pool)) as http:
        token = await token_of(http)
        replies = [
            await post(http, "requeue", token, queue="default", ids=[dead[0].id, "nope"]),
            await post(http, "retry-now", token, queue="default", ids=[later.id]),
            await post(http, "abort", token, queue="default", ids=[queued.id]),
            await post(http, "requeue-all", token, queue="default"),
        ]
        assert [r.json()["ok"] for r in replies] == [True] * 4
        assert replies[0].json()["message"] == "requeued 1 job(s); not requeued: nope (missing)"
        assert replies[3].json()["message"] == "requeued 3 dead letter(s)"
        [(_, due)] = await pool.client.zrange(pool.keys("default").delayed, 0, -1,
                                              withscores=True)
        assert due == 0
        for job in dead:  # the 4 requeued jobs fail again
            assert await job.status() is asyncjobs.JobState.QUEUED
            await fail(pool, job)
        purge = await post(http, "purge", token, queue="default")
        assert purge.json()["message"] == "purged 4 dead letter(s)"
        assert (await post(http, "abort", token, queue="default", ids=[])).status_code == 400
        assert (await post(http, "explode", token, queue="default")).status_code == 404
    assert (await queued.status()) is asyncjobs.JobState.ABORTED
    assert (await pool.admin.queue_stats()).dead == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncjobs.dashboard"]
    assert len(lines) == 5
    assert lines[0].startswith("dashboard action requeue by anonymous@127.0.0.1 queue=default"
                               f" ids={dead[0].id},nope: requeued 1")


async def test_dead_letter_filters_over_http(harness: Harness) -> None:
    await dead_letters(harness.pool, 3, 2)
    async with client(create_app(harness.pool)) as http:
        crashes = (await http.get("/dead", params={"task": "crash"})).text
        values = (await http.get("/dead", params={"error": "ValueError"})).text
        none = (await http.get("/dead", params={"task": "other"})).text
    assert crashes.count('<tr data-job="') == 2 and "builtins.KeyError" in crashes
    assert values.count('<tr data-job="') == 3
    assert "No dead letter matches among the 5 read" in none


async def test_search_finds_the_queues(harness: Harness) -> None:
    job = await harness.pool.enqueue(asyncjobs.task_ref("t", queue="mail"), 1)
    async with client(create_app(harness.pool)) as http:
        found = (await http.get("/search", params={"id": job.id})).text
        missing = (await http.get("/search", params={"id": "nope"})).text
    assert f'href="/job?queue=mail&amp;id={job.id}"' in found
    assert 'data-testid="not-found"' in missing


async def test_parts_reload_alone(harness: Harness) -> None:
    await harness.pool.enqueue("t", 1)
    async with client(create_app(harness.pool)) as http:
        stats = await http.get("/queue?part=stats")
        unknown = await http.get("/queue?part=nothing")
    assert stats.text.startswith('<dl class="stats"') and "<html" not in stats.text
    assert numbers(stats.text)["waiting"] == "1"
    assert unknown.status_code == 400


async def test_static_assets_come_from_the_package(harness: Harness) -> None:
    async with client(create_app(harness.pool)) as http:
        js = await http.get("/static/dashboard.js")
        css = await http.get("/static/dashboard.css")
        missing = await http.get("/static/../_app.py")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "max-age" in js.headers["cache-control"] and "innerHTML" in js.text
    assert css.status_code == 200 and missing.status_code == 404


async def test_the_redis_password_is_never_shown() -> None:
    app = create_app(redis_url="redis://:s3cret-pw@127.0.0.1:1/0")
    async with client(app) as http:
        page = await http.get("/")
    assert page.status_code == 503 and "s3cret" not in page.text
    assert "redis://:***@127.0.0.1:1/0" in page.text


async def test_options_are_checked() -> None:
    for bad in ({"refresh_s": 0}, {"refresh_s": float("nan")}, {"page_size": 0},
                {"page_size": 501}):
        with pytest.raises(ValueError):
            create_app(**bad)  # type: ignore[arg-type]


async def test_the_charts_geometry() -> None:
    from datetime import UTC, datetime, timedelta

    from asyncjobs._producer.insight import MinuteCounts
    from asyncjobs.dashboard._charts import HEIGHT, chart

    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    minutes = [MinuteCounts(start + timedelta(minutes=i), c) for i, c in enumerate(
        [{}, {"complete": 6, "failed": 2}, {"complete": 1, "retry": 1, "aborted": 2}])]
    drawn = chart(minutes)
    assert drawn.peak == 8 and drawn.total["complete"] == 7
    assert drawn.failure_rate == 3 / 10
    first = [b for b in drawn.bars if b.minute == "12:01"]
    assert [(b.outcome, b.count) for b in first] == [("complete", 6), ("failed", 2)]
    assert sum(b.height for b in first) == pytest.approx(HEIGHT)
    assert [text for _, _, text in drawn.rate_dots] == ["12:01: 25.0 %", "12:02: 50.0 %"]
    assert drawn.labels[0] == (0.0, "12:00")
    empty = chart([])
    assert empty.bars == [] and empty.failure_rate is None and empty.rate_points == ""



async def test_workers_and_cron_pages_show_a_live_worker(harness: Harness) -> None:
    import asyncio

    from .conftest import Backend, running

    backend = Backend("fake", None, harness.client_factory, harness.prefix)
    worker = harness.worker([boom], concurrency=7,
                            cron=[asyncjobs.cron(boom, every=3600, name="hourly", args=[1])])
    async with running(backend, worker), client(create_app(harness.pool)) as http:
        for _ in range(100):
            if await harness.pool.admin.leader() == worker.name:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # a heartbeat with the cron jobs
        workers = (await http.get("/workers")).text
        crons = (await http.get("/crons")).text
    assert f'<tr data-worker="{worker.name}">' in workers
    assert '<td class="num">7</td>' in workers  # its concurrency
    assert f'data-field="leader">{worker.name}<' in crons
    assert '<tr data-cron="hourly">' in crons and "every 3600s" in crons
