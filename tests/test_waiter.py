"""The result waiter's pub/sub connection: replaced (not reconnected in place) when it fails,
every watcher woken to re-check, every watched channel subscribed again, no spin while Redis
is down. (Following a Sentinel failover to the new master: tests/test_sentinel.py.)"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.asyncio import Redis

import asyncjobs
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.transport import TcpConnection

from .conftest import Backend, Running

pytestmark = pytest.mark.asyncio


async def _subscribers(client: Redis, channel: str) -> int:
    reply = await client.pubsub_numsub(channel)
    return int(reply[0][1])


async def _until_subscribed(client: Redis, *channels: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not all([await _subscribers(client, c) == 1 for c in channels]):
        assert time.monotonic() < deadline, "the waiter did not subscribe again"
        await asyncio.sleep(0.02)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def test_a_killed_pubsub_connection_is_replaced_and_every_watcher_woken(
    fresh_redis: RedisServer,
) -> None:
    async with asyncjobs.create_pool(fresh_redis.url) as pool:
        admin = Redis.from_url(fresh_redis.url)
        try:
            async with pool.waiter.watch("ch-a") as a, pool.waiter.watch("ch-b") as b:
                await _until_subscribed(admin, "ch-a", "ch-b")
                killed = await admin.client_kill_filter(_type="pubsub")
                assert killed == 1
                # each watcher is told to re-check: a notice may have been lost meanwhile
                assert await _set_within(a, 10) and await _set_within(b, 10)
                await _until_subscribed(admin, "ch-a", "ch-b")
                a.clear()
                b.clear()
                assert await admin.publish("ch-b", "done") == 1
                assert await _set_within(b, 5)
                assert not a.is_set()  # a notice wakes its own channel's watchers only
            # left when the block ended: the UNSUBSCRIBE is written before the block ends,
            # but on another connection than this check's, and its reply is not awaited.
            # A subscription left behind (an UNSUBSCRIBE never sent) stays: it fails here.
            started = time.monotonic()
            while await _subscribers(admin, "ch-a") != 0:
                assert time.monotonic() - started < 5, "ch-a still subscribed 5 s after"
                await asyncio.sleep(0.01)
            if time.monotonic() - started > 0.005:
                print(f"ch-a left {time.monotonic() - started:.3f} s after the block ended")
        finally:
            await admin.aclose()


async def test_a_reconnect_and_a_subscribe_at_once_open_one_socket(
    fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader reconnects a cut pub/sub connection in place (redis-py's retry) while a
    new watch subscribes on it: two tasks connect the same connection at once. One socket
    is opened, and closed with the pool. (redis-py let each task open one, the second
    replacing the first in the connection: the first was left open, never closed, an
    "unclosed StreamWriter" ResourceWarning. A Sentinel failover cuts the connection.)"""
    opened: list[asyncio.StreamWriter] = []
    connecting = asyncio.Event()
    connect = TcpConnection._connect

    async def slow_connect(self: TcpConnection) -> None:
        connecting.set()
        await asyncio.sleep(0.2)  # the other task comes along meanwhile
        await connect(self)
        opened.append(self._writer)

    admin = Redis.from_url(fresh_redis.url)  # redis-py's own connection class: not slowed
    try:
        async with asyncjobs.create_pool(fresh_redis.url) as pool, pool.waiter.watch("ch-a"):
            await _until_subscribed(admin, "ch-a")
            monkeypatch.setattr(TcpConnection, "_connect", slow_connect)
            assert await admin.client_kill_filter(_type="pubsub") == 1
            await asyncio.wait_for(connecting.wait(), 10)  # the reader reconnects...
            async with pool.waiter.watch("ch-b") as b:  # ... as this one subscribes
                await _until_subscribed(admin, "ch-a", "ch-b")
                assert len(await admin.client_list(_type="pubsub")) == 1
                b.clear()
                assert await admin.publish("ch-b", "done") == 1
                assert await _set_within(b, 5)
        assert [writer.transport.is_closing() for writer in opened] == [True]
    finally:
        await admin.aclose()
        for writer in opened:  # a socket left open would hang uvloop's close at the end
            writer.close()


async def test_a_redis_restart_is_waited_out_without_spinning(
    fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncjobs.pool")
    async with asyncjobs.create_pool(fresh_redis.url) as pool, pool.waiter.watch("ch") as notice:
        admin = Redis.from_url(fresh_redis.url)
        try:
            await _until_subscribed(admin, "ch")
        finally:
            await admin.aclose()
        fresh_redis.stop(kill=True)
        await asyncio.sleep(3)
        attempts = [
            r for r in caplog.records if r.name == "asyncjobs.pool" and "failed" in r.getMessage()
        ]
        # attempts back off (0.1, 0.5, 1, 2 s ...): a handful in 3 s, not a spin
        assert 1 <= len(attempts) <= 8, [r.getMessage() for r in attempts]
        fresh_redis.start()
        admin = Redis.from_url(fresh_redis.url)
        try:
            await _until_subscribed(admin, "ch")
            notice.clear()
            assert await admin.publish("ch", "done") == 1
            assert await _set_within(notice, 5)
        finally:
            await admin.aclose()


async def test_a_result_wait_spans_a_dropped_pubsub_connection(real: Backend) -> None:
    @asyncjobs.task
    async def slow(ctx: asyncjobs.Context, x: int) -> int:
        await asyncio.sleep(0.5)
        return x * 2

    async with real.pool() as pool, Running(real, real.worker([slow])):
        job = await pool.enqueue(slow, 21)
        waiting = asyncio.create_task(job.result(timeout=30))
        await _until_subscribed(pool.client, pool.keys(job.queue).done_channel(job.id))
        # the worker's own pub/sub connection is cut too
        assert await pool.client.client_kill_filter(_type="pubsub") >= 1
        assert await waiting == 42
