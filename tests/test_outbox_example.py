"""examples/outbox_fastapi.py end to end: the app under uvicorn on a SQLite file (no Redis),
a real ``asyncjobs worker`` process that relays the outbox and runs the jobs, and a real
Redis, driven over HTTP as a client would."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import asyncjobs
from asyncjobs._redis.embedded import RedisServer

from .procs import WorkerProcess, uvicorn
from .test_outbox import redis_jobs

pytestmark = [pytest.mark.slow]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/example.db"


@pytest.fixture
def web(database_url: str) -> Iterator[str]:
    """The example app under uvicorn; no Redis URL leads anywhere (it needs none)."""
    env = {**os.environ, "DATABASE_URL": database_url,
           "ASYNCJOBS_REDIS_URL": "redis://127.0.0.1:1/0"}
    with uvicorn("examples.outbox_fastapi:app", env) as base:
        yield base


async def relayed(pool: asyncjobs.Pool, job_id: str, within: float = 20) -> None:
    """Wait until the relay has written the job to Redis."""
    deadline = time.monotonic() + within
    while True:
        try:
            await pool.job(job_id).status()
            return
        except asyncjobs.JobNotFound:
            assert time.monotonic() < deadline, f"job {job_id} never relayed"
            await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_signup_commits_the_user_and_its_email_together(
        fresh_redis: RedisServer, web: str, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=web) as client:
        first = await client.post("/signup", params={"email": "ada@example.com"})
        assert first.status_code == 201, first.text
        taken = await client.post("/signup", params={"email": "ada@example.com"})
        assert taken.status_code == 409  # rolled back: no second user, no second email
        second = await client.post("/signup", params={"email": "grace@example.com"})
    body = first.json()
    worker = WorkerProcess("examples.outbox_fastapi:worker", fresh_redis.url, "asyncjobs",
                           env={"DATABASE_URL": database_url})
    try:
        worker.wait_for("ready:")
        async with asyncjobs.create_pool(fresh_redis.url) as pool:
            # Until the relay has moved a row the job is documented as JobNotFound.
            for job_id in (body["job_id"], second.json()["job_id"]):
                await relayed(pool, job_id)
            result = await pool.job(body["job_id"]).result(timeout=20)
            assert result == f"welcomed user {body['user_id']} <ada@example.com>"
            assert await pool.job(second.json()["job_id"]).result(timeout=20) == (
                f"welcomed user {second.json()['user_id']} <grace@example.com>")
            assert (await redis_jobs(pool))["created"] == 2
        worker.wait_for("mail to grace@example.com: Welcome!")
        assert worker.output.count("Welcome!") == 2
    finally:
        worker.signal()
        assert worker.wait(30) == 0, worker.output
        worker.close()
