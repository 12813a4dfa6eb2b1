"""A ``rediss://`` URL pointed at a server without TLS: connecting times out (the server
waits for the end of what it takes for a command), and redis-py says only "Timeout
connecting to server". The error now names the likely cause, in the producer's and the
worker's words alike."""

from __future__ import annotations

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

import asyncjobs
from asyncjobs._redis.connection import tls_hint
from asyncjobs._redis.embedded import RedisServer
from asyncjobs.exceptions import RedisUnavailable


@asyncjobs.task
async def add(ctx: asyncjobs.Context, a: int, b: int) -> int:
    return a + b


HINT = "the URL asks for TLS: if the server on that port does not speak TLS"


def test_the_hint_is_for_a_tls_url_that_timed_out_connecting() -> None:
    timeout = RedisTimeoutError("Timeout connecting to server")
    assert HINT in tls_hint("rediss://h:6380/0", timeout)
    assert HINT in tls_hint("REDISS+cluster://h:6380", TimeoutError("Timeout connecting"))
    assert tls_hint("redis://h:6379/0", timeout) == ""
    assert tls_hint("rediss://h:6380/0", RedisTimeoutError("Timeout reading from h")) == ""
    assert tls_hint("rediss://h:6380/0", ConnectionRefusedError("connecting")) == ""


def _tls_url(server: RedisServer) -> str:
    plain = server.url
    assert plain.startswith("redis://")
    return "rediss://" + plain.removeprefix("redis://") + "?socket_connect_timeout=0.5"


@pytest.mark.asyncio
async def test_create_pool_says_so(redis_server: RedisServer) -> None:
    with pytest.raises(RedisUnavailable) as raised:
        async with asyncjobs.create_pool(_tls_url(redis_server), retry_for=0) as pool:
            await pool.enqueue("add", 1, 2)
    assert HINT in str(raised.value)


@pytest.mark.asyncio
async def test_the_worker_says_so(redis_server: RedisServer) -> None:
    worker = asyncjobs.Worker([add], burst=True)
    with pytest.raises(RedisUnavailable) as raised:
        await worker.run(redis_url=_tls_url(redis_server))
    assert HINT in str(raised.value) and str(raised.value).startswith("cannot reach Redis")
