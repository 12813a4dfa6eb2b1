"""The dashboard over a Redis that holds what asyncjobs never writes, or is down: a queue's
key of the wrong type, a job key that is not a hash, a hostile queue name. Pages and actions
say what is wrong (escaped), never a 500; one damaged queue leaves the others shown."""

from __future__ import annotations

import logging

import pytest

import asyncjobs
from asyncjobs.dashboard import create_app

from .test_dashboard import XSS, assert_no_markup_from_redis, client, post, token_of

pytestmark = pytest.mark.asyncio

WRONG = "holds the wrong type"


@pytest.mark.parametrize("suffix", ["stream", "delayed", "dead", "stats", "settings"])
async def test_a_queue_key_of_the_wrong_type_is_named_not_a_500(
        pool: asyncjobs.Pool, suffix: str) -> None:
    await pool.enqueue("t", 1)
    await pool.enqueue(asyncjobs.task_ref("t", queue=XSS), 1)
    key = f"{pool.keys(XSS).stream.rsplit(':', 1)[0]}:{suffix}"
    await pool.client.delete(key)
    await pool.client.set(key, "x")
    async with client(create_app(pool)) as http:
        overview = await http.get("/")
        pages = [await http.get(path, params={"queue": XSS}) for path in ("/queue", "/dead")]
        part = await http.get("/queue", params={"queue": XSS, "part": "stats"})
    assert overview.status_code == 200
    healthy = overview.text.split('<tr data-queue="default">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="num" data-stat="waiting">1</td>' in healthy  # the others are shown
    assert 'data-testid="damaged"' in overview.text and WRONG in overview.text
    assert "WRONGTYPE" in overview.text
    for page in (overview, *pages):
        assert XSS not in page.text
        assert_no_markup_from_redis(page.text)
    for page in pages:
        assert page.status_code == 409 and 'data-testid="error"' in page.text
        assert WRONG in page.text and "Traceback" not in page.text
    assert part.status_code == 409 and WRONG in part.text


async def test_actions_on_data_asyncjobs_never_writes_answer_409(
        pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    keys = pool.keys("default")
    await pool.client.lpush(keys.job("listed"), "x")
    await pool.client.set(keys.dead, "x")
    caplog.set_level(logging.INFO, "asyncjobs.dashboard")
    async with client(create_app(pool)) as http:
        token = await token_of(http)
        aborted = await post(http, "abort", token, queue="default", ids=["listed"])
        emptied = [await post(http, name, token, queue="default")
                   for name in ("purge", "requeue-all")]
    assert aborted.status_code == 409 and aborted.json()["ok"] is False
    assert "the record of job 'listed' cannot be read" in aborted.json()["message"]
    for reply in emptied:
        assert reply.status_code == 409 and WRONG in reply.json()["message"]
    assert await pool.client.get(keys.dead) == b"x"  # left as it was
    lines = [r for r in caplog.records if r.name == "asyncjobs.dashboard"]
    assert [r.levelno for r in lines] == [logging.WARNING] * 3
    assert lines[0].getMessage().startswith(
        "dashboard action abort by anonymous@127.0.0.1 queue=default ids=listed failed: ")


async def test_an_action_while_redis_is_down_is_a_503_as_pages_are() -> None:
    async with client(create_app(redis_url="redis://:s3cret-pw@127.0.0.1:1/0")) as http:
        token = await token_of(http)  # the page itself answers 503, with its token
        reply = await post(http, "purge", token, queue="default")
    assert reply.status_code == 503 and reply.json()["ok"] is False
    assert "s3cret" not in reply.text


async def test_an_action_queue_that_is_not_text_is_refused(pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(asyncjobs.task_ref("t", queue="None").options(job_id="j"))
    other = await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j"))
    async with client(create_app(pool)) as http:
        token = await token_of(http)
        replies = [await post(http, "abort", token, queue=queue, ids=["j"])
                   for queue in (None, ["default"], ["None"], 7, {"q": "None"})]
        replies.append(await post(http, "abort", token, ids=["j"]))
    for reply in replies:
        assert reply.status_code == 400, reply.text
        assert "queue" in reply.json()["message"]
    assert await job.status() is asyncjobs.JobState.QUEUED
    assert await other.status() is asyncjobs.JobState.QUEUED


async def test_the_action_log_line_escapes_the_queue_name(
        pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    queue = "q\x1b[2K\x0bdashboard\x85action_purge_by_admin\x9b2J"
    caplog.set_level(logging.INFO, "asyncjobs.dashboard")
    async with client(create_app(pool)) as http:
        reply = await post(http, "purge", queue=queue)
    assert reply.status_code == 200, reply.text
    [line] = [r.getMessage() for r in caplog.records if r.name == "asyncjobs.dashboard"]
    assert "\x1b" not in line and "\x9b" not in line and len(line.splitlines()) == 1
    assert r"queue=q\x1b[2K\x0bdashboard\x85action_purge_by_admin\x9b2J ids=-" in line
