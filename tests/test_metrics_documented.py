"""The README's metrics table: ``asyncjobs_job_duration_seconds`` is a histogram of attempt
durations whose buckets run from 5 ms to 10 min, as the worker's endpoint serves it."""

from __future__ import annotations

import asyncio
import math
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.embedded import free_port
from asyncjobs.metrics import WorkerMetrics

from .conftest import Backend, running

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

pytestmark = pytest.mark.asyncio


@asyncjobs.task(name="md_quick")
async def quick(ctx: Context) -> int:
    return 1


def duration_buckets(port: int) -> list[tuple[float, float]]:
    """(upper bound, count) of each ``asyncjobs_job_duration_seconds`` bucket of the task
    ``md_quick``, as the endpoint serves them, in the order served."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return [(float(s.labels["le"]), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "asyncjobs_job_duration_seconds_bucket"
            and s.labels.get("task") == "md_quick" and s.labels.get("queue") == "default"]


async def test_the_duration_histogram_runs_from_5_ms_to_10_min(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """README, Metrics: ``asyncjobs_job_duration_seconds`` | histogram | queue, task |
    attempt durations, 5 ms to 10 min."""
    port = free_port()
    job = await pool.enqueue(quick)
    async with running(backend, backend.worker([quick], metrics_port=port)):
        assert await job.result(timeout=10) == 1
        buckets: list[tuple[float, float]] = []
        for _ in range(100):  # the event is counted just after the result is written
            buckets = await asyncio.to_thread(duration_buckets, port)
            if buckets and buckets[-1][1] == 1:
                break
            await asyncio.sleep(0.02)
    bounds = [le for le, _ in buckets]
    finite = [le for le in bounds if math.isfinite(le)]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf
    assert finite[0] == 0.005  # 5 ms
    assert finite[-1] == 600.0  # 10 min
    assert buckets[-1][1] == 1  # the one attempt, observed


@pytest.mark.asyncio
async def test_a_queue_s_limits_are_shown_once_whatever_levels_the_worker_serves(
        real: Backend) -> None:
    """A queue's concurrency limits hold for all its priority levels (one lease set): a
    worker serving the three levels shows each limit once, under the queue's name, so a
    sum over queues counts each lease once (it showed them under each level: 3x)."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(worker="w", queues=["m@high", "m", "m@low"], concurrency=4,
                            registry=registry, tasks=["lim"])
    async with real.pool() as pool:
        keys = pool.keys("m")
        await pool.client.hset(keys.concurrency_limits, "3:lim:", 2)
        await pool.client.zadd(keys.concurrency("3:lim:"), {"j1": 9e15, "j2": 9e15})
        await metrics.refresh(pool, type("Idle", (), {"active": 0})())
    shown = {s.labels["queue"]: s.value
             for family in registry.collect() if family.name == "asyncjobs_concurrency_running_jobs"
             for s in family.samples}
    assert shown == {"m": 2.0}


async def test_the_readme_table_names_every_metric_a_worker_exports() -> None:
    """Each metric family a worker's registry holds has its row in the README's table
    (``{a,b}`` in a row stands for each of its names), and each row names one."""
    table = README.split("| metric | type | labels | meaning |", 1)[1].split("\n\n", 1)[0]
    listed: set[str] = set()
    for name in re.findall(r"^\| `([^`]+)` \|", table, re.M):
        head, _, rest = name.partition("{")
        choices, _, tail = rest.partition("}")
        listed |= {f"{head}{c}{tail}" for c in choices.split(",")} if rest else {name}
    registry = CollectorRegistry()
    WorkerMetrics(worker="w", queues=["default"], concurrency=4, registry=registry)
    exported = {f"{f.name}_total" if f.type == "counter" else f.name
                for f in registry.collect()}
    assert exported == listed
