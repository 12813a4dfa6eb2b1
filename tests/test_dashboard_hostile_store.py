"""The dashboard over a Redis that holds what asyncjobs never writes, is down, or refuses its
commands: a queue's key of the wrong type, a job key that is not a hash, a hostile queue
name; an ACL (NOPERM: 403), a replica, a busy script, a failing disk, out of memory (503).
Pages and actions say what is wrong (escaped), never a 500; one damaged queue leaves the
others shown."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

import asyncjobs
from asyncjobs import Pool
from asyncjobs._redis.embedded import RedisServer
from asyncjobs.dashboard import create_app

from .conftest import Backend, need_redis_server
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


# -- Redis refusing the dashboard's commands ---------------------------------------------------

GETS = ["/", "/queue", "/queue?part=stats", "/queue?part=charts", "/queue?part=list", "/dead",
        "/dead?part=dead", "/job?id=j1", "/workers", "/crons", "/search?id=j1"]
ACTIONS = {"requeue": ["j1"], "requeue-all": [], "purge": [], "abort": ["j1"],
           "retry-now": ["j1"]}
BUSY = "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
# Each refusal as redis-py raises it (some with their code taken off), the status it gets,
# and what the page must say.
REFUSALS: dict[str, tuple[Callable[[], Exception], int, str]] = {
    "NOPERM": (lambda: NoPermissionError(
        f"this user has no permissions to run the 'xlen' command {XSS}"), 403, "NOPERM"),
    "READONLY": (lambda: ReadOnlyError("You can't write against a read only replica."),
                 503, "READONLY"),
    "OOM": (lambda: OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
            503, "OOM"),
    "MISCONF": (lambda: ResponseError(
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
        "persist to disk."), 503, "MISCONF"),
    "BUSY": (lambda: ResponseError(BUSY), 503, "BUSY"),
    "BUSY in a pipeline": (lambda: ResponseError(
        f"Command # 1 (XLEN t:{{{XSS}}}:stream) of pipeline caused error: ('{BUSY}',)"),
        503, "BUSY Redis is busy"),
    "NOREPLICAS": (lambda: ResponseError("NOREPLICAS Not enough good replicas to write."),
                   503, "NOREPLICAS"),
    "LOADING": (lambda: BusyLoadingError("Redis is loading the dataset in memory"), 503,
                "loading"),
}


def refuse_every_command(monkeypatch: pytest.MonkeyPatch, make: Callable[[], Exception]
                         ) -> None:
    """Every call of every pool raises ``make()`` as Redis's reply would, inside the pool's
    own retrying (which turns OOM into ``RedisFull``, and retries LOADING as an outage)."""
    retrying = Pool._retrying

    async def refused(self: Pool, _: Any) -> Any:
        async def reply() -> Any:
            raise make()
        return await retrying(self, reply)

    monkeypatch.setattr(Pool, "_retrying", refused)


async def _every_page_and_action(http: httpx.AsyncClient, token: str
                                 ) -> dict[str, httpx.Response]:
    replies = {path: await http.get(path) for path in GETS}
    for name, ids in ACTIONS.items():
        replies[name] = await post(http, name, token, queue="default", ids=ids)
    return replies


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_every_refusal_of_redis_is_named_on_every_page_and_action_not_a_500(
        backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        refusal: str) -> None:
    make, status, says = REFUSALS[refusal]
    caplog.set_level(logging.INFO, "asyncjobs.dashboard")
    async with backend.pool(retry_for=0.1) as pool:
        await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j1"), 1)
        async with client(create_app(pool)) as http:
            token = await token_of(http)
            refuse_every_command(monkeypatch, make)
            replies = await _every_page_and_action(http, token)
    for where, reply in replies.items():
        expected = 503 if refusal == "LOADING" else status  # LOADING: an outage, retried
        assert reply.status_code == expected, (where, reply.status_code, reply.text[-300:])
        if where.startswith("/"):
            assert 'data-testid="error"' in reply.text and XSS not in reply.text
            assert_no_markup_from_redis(reply.text)
            assert says in html.unescape(reply.text), (where, reply.text[-500:])
        else:
            assert reply.json()["ok"] is False and says in reply.json()["message"], where
            assert len(reply.json()["message"].splitlines()) == 1
    assert not any(r.exc_info for r in caplog.records)


async def test_an_acl_user_without_rights_gets_403_naming_noperm_never_a_500(
        fresh_redis: RedisServer) -> None:
    """A real Redis user that may only read: the pages that need more, and the actions that
    write, answer 403 with Redis's reason; the others work."""
    async with asyncjobs.create_pool(fresh_redis.url, prefix="acl") as pool:
        await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j1"), 1)
        await pool.client.acl_setuser(
            "viewer", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
            commands=["+@read", "+@connection", "+info", "+ping"])
    url = f"redis://viewer:pw@127.0.0.1:{fresh_redis.port}/0"
    async with asyncjobs.create_pool(url, prefix="acl", check=False) as viewer, \
            client(create_app(viewer)) as http:
        token = await token_of(http, "/job?id=j1")
        replies = await _every_page_and_action(http, token)
    statuses = {where: reply.status_code for where, reply in replies.items()}
    assert set(statuses.values()) <= {200, 403}, statuses
    assert statuses["/"] == statuses["abort"] == statuses["requeue"] == 403, statuses
    for reply in replies.values():
        if reply.status_code == 403:
            assert "NOPERM" in reply.text and "Traceback" not in reply.text
    async with asyncjobs.create_pool(fresh_redis.url, prefix="acl") as pool:
        assert await pool.job("j1").status() is asyncjobs.JobState.QUEUED  # not aborted


async def test_a_busy_script_is_a_503_on_every_page_and_action() -> None:
    """A real Redis running a script past its busy threshold answers BUSY to everything."""
    need_redis_server()
    with RedisServer(extra_args=("--busy-reply-threshold", "50")) as server:
        async with asyncjobs.create_pool(server.url, prefix="busy", retry_for=0.5) as pool:
            await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j1"), 1)
            async with client(create_app(pool)) as http:
                token = await token_of(http)
                hog = redis.asyncio.Redis(port=server.port)
                stuck = asyncio.create_task(hog.eval("while true do end", 0))
                try:
                    await asyncio.sleep(0.3)
                    replies = await _every_page_and_action(http, token)
                finally:
                    killer = redis.asyncio.Redis(port=server.port)
                    await killer.script_kill()
                    await killer.aclose()
                    with contextlib.suppress(Exception):
                        await stuck
                    await hog.aclose()
    for where, reply in replies.items():
        assert reply.status_code == 503, (where, reply.status_code)
        assert "BUSY Redis is busy running a script" in reply.text, where


async def test_a_replica_refuses_the_actions_with_503_and_shows_the_pages(
        fresh_redis: RedisServer) -> None:
    """A real read-only replica (the dashboard pointed at it, or a failover under way):
    pages read as usual, actions that write answer 503 naming READONLY."""
    async with asyncjobs.create_pool(fresh_redis.url, prefix="ro") as pool:
        await pool.enqueue(asyncjobs.task_ref("t").options(job_id="j1"), 1)
    with RedisServer(extra_args=("--replicaof", "127.0.0.1", str(fresh_redis.port))) as replica:
        link = redis.asyncio.Redis(port=replica.port)
        for _ in range(200):
            if (await link.info("replication")).get("master_link_status") == "up":
                break
            await asyncio.sleep(0.05)
        await link.aclose()
        async with asyncjobs.create_pool(replica.url, prefix="ro", check=False) as pool, \
                client(create_app(pool)) as http:
            token = await token_of(http)
            replies = await _every_page_and_action(http, token)
    assert all(replies[path].status_code == 200 for path in GETS), {
        p: r.status_code for p, r in replies.items()}
    for name in ("abort", "requeue"):  # the actions that write for a queued job
        assert replies[name].status_code in (200, 503), (name, replies[name].text)
    assert replies["abort"].status_code == 503, replies["abort"].text
    assert "READONLY" in replies["abort"].json()["message"]
    for name in ACTIONS:
        assert replies[name].status_code != 500
