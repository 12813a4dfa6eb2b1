"""Numbers that are not what an option takes are refused where they are given, by a typed
exception naming the option: never a backlog reported healthy (``nan`` limits), a relay
wedged on a lease Redis refuses, metrics frozen or spinning, or dashboard pages failing
later with HTTP 500."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

import asyncjobs
from asyncjobs import outbox
from asyncjobs.dashboard import create_app
from asyncjobs.fastapi import health
from asyncjobs.metrics import REFRESH_ENV, WorkerMetrics, refresh_interval
from asyncjobs.testing import Harness

from .conftest import Backend
from .records import exists
from .test_outbox import database, signup, until

NAN, INF = float("nan"), float("inf")


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[Harness]:
    """An in-memory pool (no worker: the checks come before Redis is asked)."""
    opened = Harness()
    try:
        yield opened
    finally:
        await opened.close()


# -- asyncjobs.fastapi.health ----------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize(("limits", "error", "name"), [
    ({"max_waiting": NAN}, TypeError, "max_waiting"),
    ({"max_waiting": INF}, TypeError, "max_waiting"),
    ({"max_waiting": "10"}, TypeError, "max_waiting"),
    ({"max_waiting": True}, TypeError, "max_waiting"),
    ({"max_waiting": -1}, ValueError, "max_waiting"),
    ({"max_age_s": NAN}, ValueError, "max_age_s"),
    ({"max_age_s": INF}, ValueError, "max_age_s"),
    ({"max_age_s": -1}, ValueError, "max_age_s"),
    ({"max_age_s": "1"}, TypeError, "max_age_s"),
])
async def test_health_refuses_limits_that_are_not_limits(
        harness: Harness, limits: dict[str, Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=name):
        await health(harness.pool, **limits)


@pytest.mark.asyncio
@pytest.mark.parametrize("limits", [
    {}, {"max_waiting": 0}, {"max_waiting": 10**400}, {"max_age_s": 0},
    {"max_age_s": 2.5}, {"max_age_s": timedelta(minutes=5)}, {"max_age_s": None},
])
async def test_health_takes_every_limit_it_documents(harness: Harness,
                                                     limits: dict[str, Any]) -> None:
    report = await health(harness.pool, **limits)
    assert not report.healthy and report.reason == "no live worker serves queue 'default'"


# -- outbox.Relay ----------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "name"), [
    ({"lease_ttl": 0.0005}, "lease_ttl"),     # PX 0: Redis refuses it, the relay wedged
    ({"lease_ttl": 0.099}, "lease_ttl"),
    ({"lease_ttl": timedelta(milliseconds=50)}, "lease_ttl"),
    ({"lease_ttl": 3600.5}, "lease_ttl"),
    ({"batch_size": True}, "batch_size"),
    ({"batch_size": "10"}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": NAN}, "batch_size"),
    ({"batch_size": 10_001}, "batch_size"),
])
def test_relay_refuses_a_lease_redis_cannot_set_and_a_batch_that_is_not_a_count(
        tmp_path: Path, options: dict[str, Any], name: str) -> None:
    with pytest.raises(asyncjobs.ConfigurationError, match=name):
        outbox.Relay(f"sqlite:///{tmp_path}/outbox.db", **options)


@pytest.mark.asyncio
async def test_relay_at_the_shortest_lease_and_largest_batch_moves_rows(
        tmp_path: Path, real: Backend) -> None:
    async with database("sqlite", tmp_path) as db:
        relay = db.relay(lease_ttl=0.1, batch_size=10_000, poll=0.05, prefix=real.prefix,
                         redis_url=real.url)
        task = asyncio.create_task(relay.run())
        try:
            async with real.pool() as pool:
                handle = (await signup(db, 1)).handle(pool)
                await until(lambda: exists(handle), 10, "the relay")

                async def held() -> bool:  # the lease is set, at 100 ms
                    ttl: int = await pool.client.pttl(relay.lease_key(real.prefix))
                    return 0 < ttl <= 100

                await until(held, 5, "the lease")
        finally:
            relay.stop()
            await task
        assert await db.statuses() == {}  # relayed and deleted (keep=0)


# -- metrics refresh interval ----------------------------------------------------------------

@pytest.mark.parametrize("bad", ["inf", "nan", "1e-9", "0.009", "3601", "1e400", "-inf"])
def test_metrics_refresh_from_the_environment_is_bounded(
        monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(REFRESH_ENV, bad)
    with pytest.raises(asyncjobs.ConfigurationError, match=REFRESH_ENV):
        refresh_interval()
    with pytest.raises(asyncjobs.ConfigurationError, match=REFRESH_ENV):
        WorkerMetrics(worker="w", queues=["q"], concurrency=1)


@pytest.mark.parametrize("bad", [INF, NAN, 1e-9, 10**400, 3601, -1, True,
                                 timedelta(hours=2), timedelta(microseconds=1)])
def test_metrics_refresh_argument_is_bounded(monkeypatch: pytest.MonkeyPatch,
                                             bad: Any) -> None:
    monkeypatch.delenv(REFRESH_ENV, raising=False)
    with pytest.raises(asyncjobs.ConfigurationError, match="refresh_s"):
        refresh_interval(bad)


@pytest.mark.parametrize(("given", "seconds"), [
    ("0.01", 0.01), ("3600", 3600.0), (0.01, 0.01), (3600, 3600.0),
    (timedelta(seconds=2), 2.0), (timedelta(hours=1), 3600.0),
])
def test_metrics_refresh_takes_its_bounds(monkeypatch: pytest.MonkeyPatch, given: Any,
                                          seconds: float) -> None:
    if isinstance(given, str):
        monkeypatch.setenv(REFRESH_ENV, given)
        assert refresh_interval() == seconds
    else:
        monkeypatch.delenv(REFRESH_ENV, raising=False)
        assert refresh_interval(given) == seconds


@pytest.mark.asyncio
async def test_metrics_at_the_shortest_refresh_still_refresh(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REFRESH_ENV, "0.01")
    registry = CollectorRegistry()
    metrics = WorkerMetrics(worker="w", queues=["default"], concurrency=1, registry=registry)
    beats: list[float] = []
    task = asyncio.create_task(metrics.run(harness.pool,
                                           SimpleNamespace(active=0)))
    try:
        for _ in range(200):
            beat = registry.get_sample_value(
                "asyncjobs_worker_last_heartbeat_timestamp_seconds", {"worker": "w"})
            if beat is not None and beat not in beats:
                beats.append(beat)
            if len(beats) >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(beats) >= 3  # refreshed again and again, not frozen
    assert registry.get_sample_value("asyncjobs_queue_waiting_jobs", {"queue": "default"}) == 0


# -- dashboard.create_app --------------------------------------------------------------------

@pytest.mark.parametrize(("options", "name"), [
    ({"page_size": 2.5}, "page_size"),     # accepted, then every list page was an HTTP 500
    ({"page_size": "10"}, "page_size"),
    ({"page_size": True}, "page_size"),
    ({"page_size": NAN}, "page_size"),
    ({"refresh_s": True}, "refresh_s"),
    ({"refresh_s": "2"}, "refresh_s"),
    ({"refresh_s": math.inf}, "refresh_s"),
    ({"refresh_s": timedelta(hours=2)}, "refresh_s"),
])
def test_dashboard_refuses_a_page_size_or_refresh_that_is_not_one(options: dict[str, Any],
                                                                  name: str) -> None:
    with pytest.raises(ValueError, match=name):
        create_app(redis_url="redis://127.0.0.1:1/0", **options)


@pytest.mark.parametrize("options", [
    {"page_size": 1}, {"page_size": 500}, {"refresh_s": 0.2}, {"refresh_s": 3600},
    {"refresh_s": timedelta(seconds=5)},
])
def test_dashboard_takes_its_bounds(options: dict[str, Any]) -> None:
    create_app(redis_url="redis://127.0.0.1:1/0", **options)


@pytest.mark.parametrize("poll", [1e-9, 0.005, 0])
def test_a_relay_poll_that_would_read_the_table_in_a_loop_is_refused(poll: float) -> None:
    """A positive but tiny ``poll`` (1e-9) was accepted: the relay read the table in a
    loop."""
    with pytest.raises(asyncjobs.ConfigurationError, match=r"^poll must be at least 0\.01 s"):
        outbox.Relay("sqlite:///:memory:", poll=poll)
