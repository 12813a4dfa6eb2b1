"""The pytest plugin and ``asyncjobs.testing``, used the way a user's test suite uses them:
a small FastAPI project with its own tests, run by an inner pytest (pytester), with the Redis
URL pointing at a closed port: the harness is the only Redis they have."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from asyncjobs.fastapi import lifespan
from asyncjobs.testing import Harness

pytest_plugins = ["pytester"]

CLOSED_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

USER_APP = '''
import asyncjobs
from asyncjobs import Context
from asyncjobs.fastapi import PoolDep, lifespan
from fastapi import FastAPI

SENT: list[str] = []


@asyncjobs.task(max_tries=3, backoff=60)
async def send_welcome_email(ctx: Context, address: str) -> str:
    if address.startswith("flaky") and ctx.attempt == 1:
        raise ConnectionError("smtp reset")
    SENT.append(address)
    return f"sent to {address}"


@asyncjobs.task
async def audit(ctx: Context, event: str, user: int) -> None:
    pass


app = FastAPI(lifespan=lifespan())


@app.post("/signup", status_code=202)
async def signup(address: str, pool: PoolDep) -> dict[str, str]:
    job = await pool.enqueue(send_welcome_email.options(delay=600), address)
    await pool.enqueue(audit, "signup", 7)
    return {"job_id": job.id}
'''

USER_TESTS = '''
import pytest
from fastapi.testclient import TestClient

import asyncjobs
from userapp import SENT, app, audit, send_welcome_email


@pytest.fixture
def client(asyncjobs_harness):
    with TestClient(asyncjobs_harness.attach(app)) as c:   # the harness is the only Redis
        yield c


@pytest.mark.anyio
async def test_the_endpoint_enqueues_the_welcome_email(client, asyncjobs_harness):
    response = client.post("/signup", params={"address": "ada@example.com"})
    assert response.status_code == 202
    [email] = await asyncjobs_harness.enqueued(send_welcome_email)
    assert email.id == response.json()["job_id"]
    assert email.args == ["ada@example.com"]
    assert email.state is asyncjobs.JobState.SCHEDULED    # delayed by 10 minutes
    [event] = await asyncjobs_harness.enqueued("audit")
    assert event.args == ["signup", 7]


@pytest.mark.asyncio
async def test_running_the_jobs_has_their_effect(client, asyncjobs_harness):
    client.post("/signup", params={"address": "flaky@example.com"})
    SENT.clear()
    await asyncjobs_harness.run_all([send_welcome_email, audit])  # no 10 min wait, no backoff
    assert SENT == ["flaky@example.com"]
    assert await asyncjobs_harness.enqueued() == []
    [done] = await asyncjobs_harness.jobs(send_welcome_email)
    assert done.state is asyncjobs.JobState.COMPLETE and done.attempts == 2
    assert done.result == "sent to flaky@example.com"


def test_the_app_is_detached_after_each_test():
    assert getattr(app.state, "asyncjobs", None) is None


@pytest.mark.asyncio
async def test_the_pool_fixture_is_a_real_pool(asyncjobs_pool):
    job = await asyncjobs_pool.enqueue(audit, "x", 1)
    assert await job.status() is asyncjobs.JobState.QUEUED


@pytest.mark.asyncio
async def test_a_failing_assertion_is_reported(asyncjobs_harness):
    await asyncjobs_harness.pool.enqueue(audit, "y", 2)
    assert await asyncjobs_harness.enqueued(send_welcome_email) != []   # fails on purpose
'''


def test_a_user_suite_uses_the_fixtures(pytester: pytest.Pytester,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", CLOSED_URL)
    pytester.makepyfile(userapp=USER_APP, test_userapp=USER_TESTS)
    pytester.makeini("[pytest]\nasyncio_mode = strict\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*test_a_failing_assertion_is_reported*"])


@pytest.mark.asyncio
async def test_an_attached_pool_is_the_apps_pool_and_outlives_its_lifespan() -> None:
    harness = Harness()
    app = FastAPI(lifespan=lifespan(CLOSED_URL))
    assert harness.attach(app) is app
    async with app.router.lifespan_context(app):  # opens nothing: no Redis is reachable
        assert app.state.asyncjobs is harness.pool
    assert app.state.asyncjobs is harness.pool  # left in place, and open
    job = await harness.pool.enqueue("audit", "x", 1)
    assert [j.id for j in await harness.enqueued("audit")] == [job.id]
    await harness.close()
    assert not hasattr(app.state, "asyncjobs")
