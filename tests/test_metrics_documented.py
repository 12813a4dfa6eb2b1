"""The README's metrics table: ``asyncjobs_job_duration_seconds`` is a histogram of attempt
durations whose buckets run from 5 ms to 10 min, as the worker's endpoint serves it."""

from __future__ import annotations

import asyncio
import math
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.embedded import free_port

from .conftest import Backend, running

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
