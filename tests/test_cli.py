"""The ``asyncjobs`` command, run as a subprocess against a real Redis."""

from __future__ import annotations

import asyncio
import re
import signal

import pytest

import asyncjobs
from asyncjobs import JobState
from asyncjobs._redis.embedded import free_port

from .apps import basic
from .conftest import Backend
from .procs import WorkerProcess, run_cli

pytestmark = [pytest.mark.slow]


async def runs(pool: asyncjobs.Pool, prefix: str, job_id: str) -> int:
    return int(await pool.client.get(f"{prefix}:runs:{job_id}") or 0)


@pytest.mark.asyncio
async def test_worker_command_processes_jobs_with_banner_and_job_lines(real: Backend) -> None:
    async with real.pool() as pool:
        jobs = [await pool.enqueue(basic.add, i, 10) for i in range(3)]
        proc = WorkerProcess("tests.apps.basic:worker", real.url or "", real.prefix, "--burst",
                             "--concurrency", "7")
        try:
            assert proc.wait(60) == 0, proc.output
        finally:
            proc.close()
        assert [await j.result(timeout=5) for j in jobs] == [10, 11, 12]
    out = proc.output
    assert f"asyncjobs {asyncjobs.__version__} worker" in out
    assert "(Redis 7" in out and "concurrency 7" in out
    assert "tasks   add, fail, kill_worker, short, slow" in out
    for job in jobs:
        assert f"job started id={job.id} task=add queue=default attempt=1" in out
        assert f"job complete id={job.id} task=add queue=default attempt=1 duration=" in out


@pytest.mark.asyncio
async def test_sigterm_mid_job_hands_the_job_back_and_loses_nothing(real: Backend) -> None:
    async with real.pool() as pool:
        # Long enough to outlast the first worker's 0.5 s grace; the second lets it finish.
        job = await pool.enqueue(basic.slow, 6)
        proc = WorkerProcess("tests.apps.basic:worker", real.url or "", real.prefix,
                             env={"TEST_GRACE": "0.5"})
        try:
            await _until_started(pool, real.prefix, job.id)
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.output
        finally:
            proc.close()
        assert "handed back 1 job(s) on queue default" in proc.output
        assert "Traceback" not in proc.output
        info = await job.info()
        assert info.state is JobState.QUEUED and info.attempts == 0  # not counted as a try
        assert await runs(pool, real.prefix, job.id) == 1

        # Another worker takes it at once: no claim timeout to wait for.
        second = WorkerProcess("tests.apps.basic:worker", real.url or "", real.prefix, "--burst")
        try:
            await _until_started(pool, real.prefix, job.id, count=2, timeout_s=8)
            second.signal(signal.SIGTERM)  # grace 30 s: it lets the job finish
            assert second.wait(60) == 0, second.output
        finally:
            second.close()
    assert "job complete id=" in second.output


@pytest.mark.asyncio
async def test_sigterm_within_grace_lets_the_job_finish(real: Backend) -> None:
    async with real.pool() as pool:
        job = await pool.enqueue(basic.slow, 1.0)
        proc = WorkerProcess("tests.apps.basic:worker", real.url or "", real.prefix)
        try:
            await _until_started(pool, real.prefix, job.id)
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.output
        finally:
            proc.close()
        assert await job.result(timeout=1) == "slept 1.0"
        assert await runs(pool, real.prefix, job.id) == 1


async def _until_started(pool: asyncjobs.Pool, prefix: str, job_id: str, count: int = 1,
                         timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while await runs(pool, prefix, job_id) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} did not start {count} time(s)")
        await asyncio.sleep(0.05)


def test_demo_exits_zero() -> None:
    result = run_cli("demo", timeout_s=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 6 complete, 2 failed" in result.stdout
    # Each row shows its own job's id end (ids made together share their start).
    shown = re.findall(r"…([A-Za-z0-9_-]{8})", result.stdout)
    assert len(shown) == 8 and len(set(shown)) == 8, result.stdout


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.apps.nowhere:worker", "cannot import 'tests.apps.nowhere': no such module"),
        ("tests.apps.basic:missing", "has no attribute 'missing'"),
        ("tests.apps.basic:not_a_worker", "is a int, not an asyncjobs.Worker"),
        ("tests.apps.basic", "expected 'package.module:attribute'"),
    ],
)
def test_bad_worker_path_gives_one_clear_line(target: str, message: str) -> None:
    result = run_cli("worker", target, "--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_redis_gives_one_clear_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("worker", "tests.apps.basic:worker", "--redis-url", url)
    assert result.returncode == 1
    assert f"asyncjobs: error: cannot reach Redis at {url}" in result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


@pytest.mark.asyncio
async def test_json_log_format_has_job_fields(real: Backend) -> None:
    import json

    async with real.pool() as pool:
        job = await pool.enqueue(basic.add, 1, 1)
        proc = WorkerProcess("tests.apps.basic:worker", real.url or "", real.prefix, "--burst",
                             "--log-format", "json")
        try:
            assert proc.wait(60) == 0, proc.output
        finally:
            proc.close()
    records = [json.loads(line) for line in proc.output.splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    [end] = [r for r in records if r.get("outcome") == "complete"]
    assert (end["job_id"], end["task"], end["queue"], end["attempt"]) == (job.id, "add",
                                                                         "default", 1)
    assert end["duration_s"] >= 0 and end["level"] == "info"
