"""Prometheus metrics: the event table, the registry, and the worker's real HTTP endpoint."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.embedded import free_port
from asyncjobs.metrics import (
    EVENT_COUNTERS,
    REFRESH_ENV,
    WorkerMetrics,
    counters_for,
    refresh_interval,
)

from .conftest import Backend, running

pytestmark = pytest.mark.on_cluster

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample the endpoint serves: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def jobs(samples: Samples, counter: str) -> dict[str, float]:
    """One counter's values by task (queue 'default' only)."""
    name = f"asyncjobs_jobs_{counter}_total"
    return {dict(labels)["task"]: value for (n, labels), value in samples.items()
            if n == name and dict(labels)["queue"] == "default"}


# -- pure ------------------------------------------------------------------------------------


def test_event_table() -> None:
    assert dict(EVENT_COUNTERS) == {
        "started": ("started",),
        "complete": ("succeeded",),
        "retry": ("failed", "retried"),
        "failed": ("failed", "dead_lettered"),
        "expired": ("expired",),
        "aborted": ("aborted",),
        "interrupted": ("interrupted",),
        "rate_limited": ("rate_limited",),
        "concurrency_limited": ("concurrency_limited",),
    }
    assert counters_for("retry") == ("failed", "retried")
    assert counters_for("no-such-event") == ()


def test_job_events_count_and_time() -> None:
    registry = CollectorRegistry()
    m = WorkerMetrics(worker="w1", queues=["default"], concurrency=4, registry=registry,
                      refresh_s=1)
    WorkerMetrics(worker="w2", queues=["default"], concurrency=4)  # own registry: no clash
    for event, duration in [("started", 0.0), ("retry", 0.02), ("started", 0.0),
                            ("failed", 0.3), ("failed", 0.0), ("complete", 2.0),
                            ("expired", 0.0), ("bogus", 1.0)]:
        m.count(event, "q", "t", duration)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"queue": "q", "task": "t", **labels})

    assert value("asyncjobs_jobs_started_total") == 2
    assert value("asyncjobs_jobs_failed_total") == 3
    assert value("asyncjobs_jobs_retried_total") == 1
    assert value("asyncjobs_jobs_dead_lettered_total") == 2
    assert value("asyncjobs_jobs_succeeded_total") == 1
    assert value("asyncjobs_jobs_expired_total") == 1
    assert value("asyncjobs_jobs_aborted_total") is None
    assert value("asyncjobs_job_duration_seconds_count") == 3  # retry, failed 0.3, complete
    assert value("asyncjobs_job_duration_seconds_sum") == pytest.approx(2.32)
    assert value("asyncjobs_job_duration_seconds_bucket", le="0.025") == 1
    assert value("asyncjobs_job_duration_seconds_bucket", le="600.0") == 3
    assert registry.get_sample_value("asyncjobs_worker_concurrency", {"worker": "w1"}) == 4


def test_refresh_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REFRESH_ENV, raising=False)
    assert refresh_interval() == 5.0
    monkeypatch.setenv(REFRESH_ENV, "0.25")
    assert refresh_interval() == 0.25
    assert refresh_interval(2) == 2.0
    assert WorkerMetrics(worker="w", queues=["q"], concurrency=1).refresh_s == 0.25
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv(REFRESH_ENV, bad)
        with pytest.raises(asyncjobs.ConfigurationError, match=REFRESH_ENV if bad == "soon"
                           else "positive"):
            refresh_interval()


def test_serve_on_port_zero_then_close() -> None:
    m = WorkerMetrics(worker="w", queues=["q"], concurrency=3)
    m.serve(0, addr="127.0.0.1")
    port = m.port
    try:
        assert port is not None and port > 0
        assert scrape(port)[("asyncjobs_worker_concurrency", (("worker", "w"),))] == 3
        with pytest.raises(RuntimeError, match="already served"):
            m.serve(0)
    finally:
        m.close()
    assert m.port is None
    with pytest.raises(OSError):
        scrape(port)
    m.close()  # harmless twice


def test_missing_prometheus_client_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "asyncjobs.metrics")
    with pytest.raises(asyncjobs.ConfigurationError,
                       match=r'its "metrics" extra \(pip install -e "\.\[metrics\]"'):
        importlib.import_module("asyncjobs.metrics")


class DownPool:
    """A pool whose Redis is away."""

    def __init__(self) -> None:
        self.calls = 0
        self.admin = SimpleNamespace(queue_stats=self.queue_stats, memory_used=self.memory_used)

    async def queue_stats(self, queue: str) -> Any:
        self.calls += 1
        raise asyncjobs.RedisUnavailable("Redis unavailable for 5 s (test)")

    async def memory_used(self) -> Any:
        raise asyncjobs.RedisUnavailable("Redis unavailable for 5 s (test)")


@pytest.mark.asyncio
async def test_refresh_survives_redis_errors(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    m = WorkerMetrics(worker="w", queues=["a", "b"], concurrency=2, registry=registry,
                      refresh_s=0.01)
    m.serve(0, addr="127.0.0.1")
    pool = DownPool()
    caplog.set_level("DEBUG", logger="asyncjobs.metrics")
    before = time.time()
    task = asyncio.create_task(m.run(pool, SimpleNamespace(active=1)))  # type: ignore[arg-type]
    while pool.calls < 4:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert registry.get_sample_value("asyncjobs_worker_running_jobs", {"worker": "w"}) == 1
    beat = registry.get_sample_value("asyncjobs_worker_last_heartbeat_timestamp_seconds",
                                     {"worker": "w"})
    assert beat is not None and before <= beat <= time.time()
    assert registry.get_sample_value("asyncjobs_queue_dead_letters", {"queue": "a"}) is None
    assert "metrics: cannot read queue a: Redis unavailable" in caplog.text
    assert m.port is None  # cancelling run closed the endpoint


# -- end to end, through the worker's endpoint -----------------------------------------------


@asyncjobs.task(name="ok")
async def ok(ctx: Context) -> int:
    return 1


@asyncjobs.task(name="flaky", max_tries=2, backoff=0)
async def flaky(ctx: Context) -> int:
    if ctx.attempt == 1:
        raise ValueError("first try fails")
    return 2


@asyncjobs.task(name="doomed", max_tries=1)
async def doomed(ctx: Context) -> None:
    raise ValueError("always fails")


async def poll(port: int, until: Any, timeout_s: float = 10.0) -> Samples:
    """Scrape until ``until(samples)`` holds (or time runs out: return the last scrape)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await asyncio.to_thread(scrape, port)
        if until(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


def queue_gauges(samples: Samples) -> dict[str, float]:
    q = (("queue", "default"),)
    return {n: samples.get((f"asyncjobs_queue_{n}", q), -1.0)
            for n in ("waiting_jobs", "in_flight_jobs", "delayed_jobs", "dead_letters",
                      "oldest_waiting_age_seconds")}


@pytest.mark.asyncio
async def test_worker_serves_metrics(backend: Backend, pool: asyncjobs.Pool,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REFRESH_ENV, "0.05")
    port = free_port()
    handles = [await pool.enqueue(ok), await pool.enqueue(ok), await pool.enqueue(flaky)]
    dead = await pool.enqueue(doomed)
    late = await pool.enqueue(ok.options(expires=0.001))
    await asyncio.sleep(0.01)
    worker = backend.worker([ok, flaky, doomed], concurrency=7, metrics_port=port)
    started = time.time()
    async with running(backend, worker):
        assert [await h.result(timeout=10) for h in handles] == [1, 1, 2]
        with pytest.raises(asyncjobs.JobFailed):
            await dead.result(timeout=10)
        with pytest.raises(asyncjobs.JobExpired):
            await late.result(timeout=10)
        settled = {"waiting_jobs": 0, "in_flight_jobs": 0, "delayed_jobs": 0,
                   "dead_letters": 1, "oldest_waiting_age_seconds": 0}
        samples = await poll(port, lambda s: queue_gauges(s) == settled)
    assert queue_gauges(samples) == settled
    assert jobs(samples, "started") == {"ok": 2, "flaky": 2, "doomed": 1}
    assert jobs(samples, "succeeded") == {"ok": 2, "flaky": 1}
    assert jobs(samples, "failed") == {"flaky": 1, "doomed": 1}
    assert jobs(samples, "retried") == {"flaky": 1}
    assert jobs(samples, "dead_lettered") == {"doomed": 1}
    assert jobs(samples, "expired") == {"ok": 1}
    assert jobs(samples, "aborted") == {}
    assert jobs(samples, "interrupted") == {}
    counts = {dict(labels)["task"]: v for (n, labels), v in samples.items()
              if n == "asyncjobs_job_duration_seconds_count"}
    assert counts == {"ok": 2, "flaky": 2, "doomed": 1}
    me = (("worker", worker.name),)
    assert samples[("asyncjobs_worker_concurrency", me)] == 7
    assert samples[("asyncjobs_worker_running_jobs", me)] == 0
    assert started <= samples[("asyncjobs_worker_last_heartbeat_timestamp_seconds", me)] \
        <= time.time()
    with pytest.raises(OSError):  # the endpoint closed with the worker
        scrape(port)


@pytest.mark.asyncio
async def test_heartbeat_moves_and_running_jobs_show(backend: Backend, pool: asyncjobs.Pool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REFRESH_ENV, "0.05")
    release = asyncio.Event()

    @asyncjobs.task(name="hold")
    async def hold(ctx: Context) -> None:
        await release.wait()

    port = free_port()
    worker = backend.worker([hold], metrics_port=port)
    me = (("worker", worker.name),)
    beat = "asyncjobs_worker_last_heartbeat_timestamp_seconds"
    busy = "asyncjobs_worker_running_jobs"
    flight = ("asyncjobs_queue_in_flight_jobs", (("queue", "default"),))

    def shows(running_jobs: int) -> Any:
        return lambda s: (s.get((busy, me)), s.get(flight)) == (running_jobs, running_jobs)

    async with running(backend, worker):
        try:
            first = (await poll(port, lambda s: (beat, me) in s))[(beat, me)]
            later = await poll(port, lambda s: s[(beat, me)] > first)
            assert later[(beat, me)] > first
            job = await pool.enqueue(hold)
            samples = await poll(port, shows(1))
            assert (samples[(busy, me)], samples[flight]) == (1, 1)
        finally:
            release.set()
        await job.result(timeout=10)
        samples = await poll(port, shows(0))
        assert (samples[(busy, me)], samples[flight]) == (0, 0)


def test_unknown_task_names_share_one_metrics_label() -> None:
    """Regression: 2,000 jobs naming unknown tasks added 8,000 series (task names come
    from Redis, i.e. from any producer)."""
    from asyncjobs.metrics import UNKNOWN_TASK, WorkerMetrics

    metrics = WorkerMetrics(worker="w", queues=["default"], concurrency=1, tasks=["add"])
    for i in range(2000):
        metrics.count("failed", "default", f"task-{i}", 0.0)
    metrics.count("complete", "default", "add", 0.01)
    labels = {s.labels["task"] for m in metrics.registry.collect() for s in m.samples
              if "task" in s.labels}
    assert labels == {UNKNOWN_TASK, "add"}
