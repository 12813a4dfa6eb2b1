"""The worker registry read on the Redis clock: a worker whose host clock is off is still
judged by its heartbeat's score, and garbage in the registry never crashes a reader."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

import asyncjobs
from asyncjobs._model import from_ms

from .conftest import Backend
from .procs import run_cli

pytestmark = pytest.mark.on_cluster

HOUR_MS = 3_600_000


async def redis_now_ms(pool: asyncjobs.Pool) -> int:
    seconds, micros = await pool.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def register(pool: asyncjobs.Pool, name: str, score_ms: float, blob: str | bytes) -> None:
    """A registry entry written the way a heartbeat writes it: score and JSON."""
    await pool.client.zadd(f"{pool.prefix}:workers", {name: score_ms})
    await pool.client.set(pool.global_keys.worker(name), blob)


def beat_json(name: str, *, beat_ms: int, started_ms: int, **extra: object) -> str:
    info = {"name": name, "host": "skewed-host", "pid": 42, "queues": ["default"],
            "concurrency": 10, "running": 1, "stopping": False, "started": started_ms,
            "beat": beat_ms, "version": "0.1.0", "tasks": ["add"], **extra}
    return json.dumps(info)


@pytest.mark.asyncio
@pytest.mark.parametrize("skew_s", [-70, 70, -86_400 * 365])
async def test_a_worker_with_a_skewed_clock_is_live_by_its_score(
    backend: Backend, pool: asyncjobs.Pool, skew_s: int
) -> None:
    now = await redis_now_ms(pool)
    host_now = now + skew_s * 1000  # what the worker's own clock said at its heartbeat
    blob = beat_json("w1", beat_ms=host_now, started_ms=host_now - HOUR_MS)
    await register(pool, "w1", now - 2_000, blob)
    [worker] = await pool.admin.workers()
    assert worker.last_beat == from_ms(now - 2_000)  # the score, not the JSON's beat
    assert worker.started_at == from_ms(now - 2_000 - HOUR_MS)  # its uptime, on Redis' clock
    assert 2.0 <= worker.beat_age_s < 3.0
    assert (worker.host, worker.pid, worker.queues, worker.running) == ("skewed-host", 42,
                                                                        ["default"], 1)


@pytest.mark.asyncio
async def test_a_worker_is_live_for_60_seconds_of_redis_time(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    now = await redis_now_ms(pool)
    await register(pool, "fresh", now - 58_000, beat_json("fresh", beat_ms=now, started_ms=now))
    await register(pool, "gone", now - 62_000, beat_json("gone", beat_ms=now, started_ms=now))
    assert [w.name for w in await pool.admin.workers()] == ["fresh"]


GARBAGE: dict[str, str | bytes] = {
    "not-json": "{not json",
    "not-utf8": b"\xff\xfe{}",
    "a-list": "[1, 2, 3]",
    "a-number": "42",
    "too-deep": "[" * 100_000 + "]" * 100_000,
    "empty": "{}",
    "wrong-types": json.dumps({"host": 7, "pid": "abc", "queues": "default", "concurrency": None,
                               "running": 1.5e300, "started": "x", "beat": True,
                               "tasks": [1, "ok"], "stopping": "yes", "version": []}),
    "bad-queues": json.dumps({"queues": ["default", "a{b}", "has space", 3]}),
}


@pytest.mark.asyncio
async def test_garbage_in_the_registry_is_skipped_or_shown_with_placeholders(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    now = await redis_now_ms(pool)
    for name, blob in GARBAGE.items():
        await register(pool, name, now, blob)
    await pool.client.zadd(f"{pool.prefix}:workers", {"no-json-at-all": now, "inf": "+inf"})
    workers = {w.name: w for w in await pool.admin.workers()}
    assert sorted(workers) == ["bad-queues", "empty", "wrong-types"]
    odd = workers["wrong-types"]
    assert (odd.host, odd.pid, odd.queues, odd.concurrency, odd.tasks, odd.stopping,
            odd.version) == ("?", 0, [], 0, ["ok"], False, "?")
    assert odd.started_at == odd.last_beat == from_ms(now)
    assert workers["bad-queues"].queues == ["default"]


@pytest.mark.asyncio
async def test_a_score_in_the_future_reads_as_now(backend: Backend,
                                                  pool: asyncjobs.Pool) -> None:
    now = await redis_now_ms(pool)
    await register(pool, "ahead", now + 3_600_000, beat_json("ahead", beat_ms=0, started_ms=0))
    [worker] = await pool.admin.workers()
    assert worker.last_beat - from_ms(now) < timedelta(seconds=1) and worker.beat_age_s <= 0.5


@pytest.mark.slow
@pytest.mark.asyncio
async def test_check_and_info_judge_a_skewed_worker_by_the_redis_clock(real: Backend) -> None:
    async with real.pool() as pool:
        now = await redis_now_ms(pool)
        behind = now - 70_000
        await register(pool, "skewed", now, beat_json("skewed", beat_ms=behind,
                                                      started_ms=behind - HOUR_MS))
        for name, blob in GARBAGE.items():
            await register(pool, name, now, blob)
    args = ("--redis-url", real.url or "", "--prefix", real.prefix)
    done = run_cli("check", "-q", "default", *args)
    assert (done.returncode, done.stdout.strip()) == (0, "healthy"), done.stderr
    done = run_cli("info", "--json", *args)
    workers = {w["name"]: w for w in json.loads(done.stdout)["workers"]}
    assert workers["skewed"]["last_beat"] == from_ms(now).isoformat()
    done = run_cli("info", *args, env={"COLUMNS": "80"})
    assert done.returncode == 0 and "Traceback" not in done.stderr
    skewed = next(line for line in done.stdout.splitlines() if "skewed " in line)
    # up an hour, beat just now (the column's width depends on the other rows: a garbage
    # row's age grows with the seconds a loaded machine takes to start the command)
    assert re.search(r"│ +1\.0h │", skewed) and "s ago" in skewed
