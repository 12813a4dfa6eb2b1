"""The watch of dry queues (``asyncjobs/_worker/watch.py``, ``Watch``): a worker busy on a
lower queue skips the higher queues that ran dry while a blocking XREAD on a connection of
its own covers them, instead of asking each before every batch.

Attacked here: strict order when a watched queue gets work (at most the batch in flight goes
to a lower queue, before and after a watch read timed out and was sent again), the commands
a busy worker sends per batch (counted by Redis, not timed), a watched stream deleted or
replaced by a key of another type, a stop while a watch read is blocked (prompt, within the
grace period, nothing left unclosed), a watch whose reads fail (every queue asked before
each batch instead, logged once, no spin), and a Redis restart under a watch.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import warnings
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._worker import watch
from asyncjobs._worker.reader import Reader

from .conftest import Backend, running

ran: list[str] = []


@asyncjobs.task
async def busy(ctx: Context, tag: str) -> None:
    ran.append(tag)
    await asyncio.sleep(0.01)


@asyncjobs.task
async def long(ctx: Context, tag: str) -> None:
    ran.append(tag)
    await asyncio.sleep(60)


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


QUEUES = ["critical", "default", "bulk"]


def _worker(backend: Backend, task: Any = busy, concurrency: int = 2,
            **options: Any) -> asyncjobs.Worker:
    """A worker of the three queues, strict order, that never reclaims during a test."""
    return backend.worker([task], queues=QUEUES, concurrency=concurrency,
                          claim_timeout=3600, **options)


async def _busy_on_bulk(pool: Any, n: int, task: Any = busy) -> None:
    await pool.enqueue_many([asyncjobs.call(task.options(queue="bulk"), f"bulk{i}")
                             for i in range(n)])


async def _until(cond: Any, timeout: float = 20.0, what: str = "timed out") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


async def _blocked_xreads(client: Any) -> int:
    """Connections blocked in an XREAD now (real Redis)."""
    return sum(1 for c in await client.client_list()
               if c.get("cmd") == "xread" and "b" in c.get("flags", ""))


async def _watched(backend: Backend, pool: Any) -> None:
    """Wait until a watch read is blocked in Redis (the worker is busy: its own idle wait
    is not under way, so the one blocked XREAD is the watch's)."""
    if backend.url is None:  # the fake lists no clients: give the watch time to start
        await asyncio.sleep(0.3)
        return
    deadline = time.monotonic() + 10
    while await _blocked_xreads(pool.client) < 1:
        assert time.monotonic() < deadline, "no watch read under way"
        await asyncio.sleep(0.01)


async def _calls(client: Any) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()
            if isinstance(v, dict)}


def _others_before(tag: str, since: int, skip: tuple[str, ...] = ("c",)) -> list[str]:
    """Jobs of lower queues that started after index ``since`` and before ``tag``."""
    end = ran.index(tag)
    return [t for t in ran[since:end] if not t.startswith(skip)]


@pytest.mark.asyncio
async def test_a_watched_queue_getting_work_is_served_before_more_lower_jobs(
        backend: Backend) -> None:
    async with backend.pool(queue="bulk") as pool:
        await _busy_on_bulk(pool, 900)
        worker = _worker(backend)
        async with running(backend, worker):
            await _until(lambda: len(ran) >= 10)
            for round_, pause in enumerate([0.0, 0.3, 2.3]):  # the last after a re-read
                await asyncio.sleep(pause)
                await _watched(backend, pool)
                since = len(ran)
                c = await pool.enqueue(busy.options(queue="critical"), f"c{round_}")
                d = await pool.enqueue(busy.options(queue="default"), f"d{round_}")
                await c.result(timeout=20)
                await d.result(timeout=20)
                # only the batch in flight (2 slots) may start bulk jobs first
                assert len(_others_before(f"c{round_}", since)) <= 2, ran[since:]
                assert len(_others_before(f"d{round_}", since, skip=("c", "d"))) <= 2, ran[since:]
                assert ran.index(f"c{round_}") < ran.index(f"d{round_}")
            # bulk jobs were still queued when the last round ran. Waited for: when c2 and d2
            # started together, d2's result can arrive before the next bulk job starts.
            await _until(lambda: any(t.startswith("bulk") for t in ran[ran.index("d2"):]),
                         timeout=5, what="no bulk job after the last round: bulk had drained, "
                         "the watch was not tested")


@pytest.mark.asyncio
async def test_a_busy_worker_does_not_ask_its_dry_queues_before_every_batch(
        real: Backend) -> None:
    n = 250
    async with real.pool(queue="bulk") as pool:
        await _busy_on_bulk(pool, n)
        before = await _calls(pool.client)
        worker = _worker(real, concurrency=1)
        async with running(real, worker):
            await _until(lambda: len(ran) >= n, timeout=60)
        after = await _calls(pool.client)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # Concurrency 1: one job per batch. A take of bulk reads its high level (empty) and its
    # normal one: 2 XREADGROUPs; asking the dry critical and default queues too would add
    # 3 each (8 per batch).
    assert delta.get("xreadgroup", 0) <= 2.2 * n + 30, delta
    assert delta.get("client|unblock", 0) <= 4, delta  # one per change of the watched set
    # the watch's reads: one per WATCH_BLOCK_MS while busy (a few seconds), not per batch
    assert delta.get("xread", 0) <= 15, delta


@pytest.mark.asyncio
async def test_a_watched_stream_deleted_or_turned_into_a_string(
        real: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asyncjobs")
    async with real.pool(queue="bulk") as pool:
        await _busy_on_bulk(pool, 1500)
        worker = _worker(real)
        async with running(real, worker):
            await _until(lambda: len(ran) >= 10)
            await _watched(real, pool)
            # deleted: the next enqueue makes it again (its group gone: made again)
            await pool.client.delete(pool.keys("critical").stream)
            await asyncio.sleep(0.1)
            since = len(ran)
            job = await pool.enqueue(busy.options(queue="critical"), "c-after-delete")
            await job.result(timeout=20)
            assert len(_others_before("c-after-delete", since)) <= 2, ran[since:]
            # a watched level turned into a string: the watch's next read fails (pause,
            # logged once), the take quarantines the level; the rest goes on, no spin
            await _watched(real, pool)
            await pool.client.set(pool.keys("critical@high").stream, "garbage")
            await asyncio.sleep(2.5)  # the watch read times out and is sent again
            before = await _calls(pool.client)
            done = len(ran)
            await asyncio.sleep(2)
            after = await _calls(pool.client)
            assert len(ran) > done + 20  # bulk goes on
            xreads = after.get("xread", 0) - before.get("xread", 0)
            assert xreads < 20, f"{xreads} XREADs in 2 s"
            since = len(ran)
            job = await pool.enqueue(busy.options(queue="critical"), "c-after-corrupt")
            await job.result(timeout=20)
            assert len(_others_before("c-after-corrupt", since)) <= 2, ran[since:]
            await _until(lambda: any(t.startswith("bulk")
                                     for t in ran[ran.index("c-after-corrupt"):]),
                         timeout=5, what="no bulk job after c-after-corrupt")
    failed = [r for r in caplog.records if "watching queues that ran dry failed" in r.message]
    assert len(failed) <= 3, [r.message for r in failed]
    assert not [r for r in caplog.records if r.exc_info is not None]


@pytest.mark.asyncio
async def test_a_stop_while_a_watch_read_is_blocked_is_prompt_and_leaves_nothing_open(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    async with backend.pool(queue="bulk") as pool:
        await _busy_on_bulk(pool, 2000)
        before = await _calls(pool.client) if backend.url else {}
        worker = _worker(backend)
        began = 0.0
        async with running(backend, worker):
            await _until(lambda: len(ran) >= 10)
            await _watched(backend, pool)
            began = time.monotonic()
        took = time.monotonic() - began
        assert took < 1.5, f"stopping took {took:.2f} s"  # a watch read blocks 2 s
        if backend.url:
            after = await _calls(pool.client)
            assert after.get("client|unblock", 0) > before.get("client|unblock", 0)
            assert await _blocked_xreads(pool.client) == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "asyncjobs-watch"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], \
        [str(w.message) for w in caught]
    bad = [r.getMessage() for r in caplog.records
           if "Unclosed" in r.getMessage() or "Task was destroyed" in r.getMessage()]
    assert not bad, bad


@pytest.mark.asyncio
async def test_a_stop_with_a_watch_under_way_keeps_to_the_grace_period(
        backend: Backend) -> None:
    async with backend.pool(queue="bulk") as pool:
        await _busy_on_bulk(pool, 10, task=long)
        worker = _worker(backend, long, shutdown_grace=1)
        async with running(backend, worker):
            await _until(lambda: len(ran) >= 2)
            await _watched(backend, pool)
            began = time.monotonic()
        took = time.monotonic() - began
        # the grace period (1 s), then cancelled jobs get CANCEL_WAIT_S (2 s) at most
        assert took < 4.0, f"stopping took {took:.2f} s"
        assert await pool.client.xlen(pool.keys("bulk").stream) >= 8


class _FailingReader(Reader):
    reads = 0

    async def wait(self, newest: dict[str, str], block_ms: int) -> bool:
        _FailingReader.reads += 1
        raise RedisConnectionError("injected: the watch connection dropped")


@pytest.mark.asyncio
async def test_a_failing_watch_falls_back_to_asking_every_queue(
        backend: Backend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(watch, "reader_for", lambda client, blocking, timeout: _FailingReader(
        Redis(connection_pool=blocking.connection_pool, single_connection_client=True))
    )  # the watch's reader only
    _FailingReader.reads = 0
    async with backend.pool(queue="bulk") as pool:
        await _busy_on_bulk(pool, 900)
        worker = _worker(backend)
        async with running(backend, worker):
            await _until(lambda: len(ran) >= 10)
            for round_ in range(3):
                await asyncio.sleep(0.4)
                since = len(ran)
                c = await pool.enqueue(busy.options(queue="critical"), f"c{round_}")
                await c.result(timeout=20)
                assert len(_others_before(f"c{round_}", since)) <= 2, ran[since:]
            await _until(lambda: any(t.startswith("bulk") for t in ran[ran.index("c2"):]),
                         timeout=5, what="no bulk job after c2")
    # paused 1 s, 2 s, 4 s...: a few reads tried in the test's seconds, not one per batch
    assert 1 <= _FailingReader.reads <= 4, _FailingReader.reads
    failed = [r for r in caplog.records if "watching queues that ran dry failed" in r.message]
    assert len(failed) == 1, [r.message for r in failed]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_redis_restart_under_a_watch(fresh_redis: RedisServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    backend = Backend("real", fresh_redis.url, url_factory(fresh_redis.url), "trestart")
    async with backend.pool(queue="bulk") as pool:
        await _busy_on_bulk(pool, 900)
        worker = _worker(backend)
        async with running(backend, worker):
            await _until(lambda: len(ran) >= 10)
            await _watched(backend, pool)
            await asyncio.to_thread(fresh_redis.restart, down_s=1.0)  # its data is lost
            deadline = time.monotonic() + 30
            while True:  # the pool's first calls after the restart may fail
                try:
                    await _busy_on_bulk(pool, 900)
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            done = len(ran)
            await _until(lambda: len(ran) >= done + 20, timeout=30)
            await _watched(backend, pool)  # watching again after the outage
            since = len(ran)
            c = await pool.enqueue(busy.options(queue="critical"), "c-after-restart")
            await c.result(timeout=20)
            assert len(_others_before("c-after-restart", since)) <= 2, ran[since:]
            began = time.monotonic()
        assert time.monotonic() - began < 1.5
    failed = [r for r in caplog.records if "watching queues that ran dry failed" in r.message]
    assert len(failed) <= 1, [r.message for r in failed]
