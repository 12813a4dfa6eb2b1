"""examples/fastapi_app.py end to end: the app under uvicorn, a real worker process and a
real Redis, driven over HTTP as a client would."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import httpx
import pytest

import asyncjobs
from asyncjobs._redis.embedded import RedisServer

from .procs import WorkerProcess, uvicorn

pytestmark = [pytest.mark.slow]


@pytest.fixture
def web(fresh_redis: RedisServer) -> Iterator[str]:
    """The example app under uvicorn, on a Redis of this test's own (the app uses the
    default prefix)."""
    env = {**os.environ, "ASYNCJOBS_REDIS_URL": fresh_redis.url}
    with uvicorn("examples.fastapi_app:app", env, probe="/health") as base:
        yield base


def test_enqueue_then_status_with_progress_then_result(fresh_redis: RedisServer,
                                                       web: str) -> None:
    response = httpx.post(f"{web}/reports", params={"rows": 3000})
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.json()["status_url"] == f"/jobs/{job_id}"
    first = httpx.get(f"{web}/jobs/{job_id}").json()
    assert first["status"] == "queued" and first["attempts"] == 0

    worker = WorkerProcess("examples.fastapi_app:worker", fresh_redis.url, "asyncjobs")
    try:
        worker.wait_for("ready:")
        seen_progress = []
        deadline = time.monotonic() + 20
        while True:
            body = httpx.get(f"{web}/jobs/{job_id}").json()
            if "progress" in body:
                seen_progress.append(body["progress"]["value"])
            if body["status"] == "complete":
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.02)
        assert body["result"] == {"rows": 3000}
        assert body["progress"] == {"value": 1.0, "message": "3000 of 3000 rows",
                                    "data": None}
        assert any(0 < v < 1 for v in seen_progress)  # watched it move
        health = httpx.get(f"{web}/health")
        assert health.status_code == 200 and health.json()["workers"] == 1
    finally:
        worker.signal()
        worker.wait(30)
        worker.close()
    assert httpx.get(f"{web}/jobs/nope").status_code == 404


def test_health_is_503_without_a_live_worker_on_the_queue(fresh_redis: RedisServer,
                                                         web: str) -> None:
    health = httpx.get(f"{web}/health")
    assert health.status_code == 503
    assert health.json()["reason"] == "no live worker serves queue 'default'"
    worker = WorkerProcess("examples.fastapi_app:worker", fresh_redis.url, "asyncjobs",
                           "--queue", "elsewhere")  # alive, but not on this queue
    try:
        worker.wait_for("ready:")
        assert httpx.get(f"{web}/health").status_code == 503
    finally:
        worker.close()


@pytest.mark.asyncio
async def test_health_reports_a_backlog(fresh_redis: RedisServer, web: str) -> None:
    from examples.fastapi_app import build_report

    async with asyncjobs.create_pool(fresh_redis.url) as pool:
        await pool.enqueue_many(asyncjobs.call(build_report, 1) for _ in range(1100))
        worker = WorkerProcess("examples.fastapi_app:worker", fresh_redis.url, "asyncjobs",
                               "--concurrency", "1")
        try:
            worker.wait_for("ready:")
            deadline = time.monotonic() + 10
            async with httpx.AsyncClient() as client:
                # the worker's first heartbeat comes a moment after its ready line
                while "no live worker" in (health := await client.get(
                        f"{web}/health")).json().get("reason", ""):
                    assert time.monotonic() < deadline, health.json()
                    await asyncio.sleep(0.05)
            assert health.status_code == 503
            assert "jobs waiting (limit 1000)" in health.json()["reason"]
        finally:
            worker.close()


@pytest.mark.asyncio
async def test_the_app_runs_on_the_in_memory_harness_without_redis(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``Harness.attach``: the app's lifespan opens no pool; no Redis is reachable."""
    from fastapi.testclient import TestClient

    from asyncjobs.testing import Harness
    from examples.fastapi_app import app, build_report, worker

    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", "redis://127.0.0.1:1/0")  # closed port
    harness = Harness()
    try:
        with TestClient(harness.attach(app)) as client:
            response = client.post("/reports", params={"rows": 10})
            assert response.status_code == 202
            job_id = response.json()["job_id"]
            [job] = await harness.enqueued(build_report)
            assert job.id == job_id and job.args == [10]
            assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
            await harness.run_all(worker)
            body = client.get(f"/jobs/{job_id}").json()
            assert body["status"] == "complete" and body["result"] == {"rows": 10}
            assert client.get("/health").status_code == 503  # no live worker now
    finally:
        await harness.close()
    assert not hasattr(app.state, "asyncjobs")


@asyncjobs.task(name="fastapi_app_structured")
async def structured(ctx: asyncjobs.Context, note: str) -> None:
    await ctx.progress(0.4, {"current": 40, "total": 100, "files": ["a.csv", note],
                             "meta": {"ok": True, "skipped": None}})


@pytest.mark.asyncio
async def test_job_status_returns_structured_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GET /jobs/{id}`` returns the progress data a task reported, as it was reported."""
    from fastapi.testclient import TestClient

    from asyncjobs.testing import Harness
    from examples.fastapi_app import app

    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", "redis://127.0.0.1:1/0")  # closed port
    note = "b.csv\n\x1b[31m\u2028é"
    harness = Harness()
    try:
        job = await harness.pool.enqueue(structured, note)
        await harness.run_all([structured])
        with TestClient(harness.attach(app)) as client:
            body = client.get(f"/jobs/{job.id}").json()
    finally:
        await harness.close()
    assert body["status"] == "complete"
    assert body["progress"] == {
        "value": 0.4, "message": "",
        "data": {"current": 40, "total": 100, "files": ["a.csv", note],
                 "meta": {"ok": True, "skipped": None}},
    }
