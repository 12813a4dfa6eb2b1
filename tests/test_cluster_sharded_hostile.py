"""Sharded pub/sub (``_redis.sharded``) under hostile conditions: subscriptions Redis
refuses, a close racing a subscribe, losses that overlap a resubscription."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster

from asyncjobs._redis import pubsub
from asyncjobs._redis.keys import Keys
from asyncjobs._redis.pubsub import RESUBSCRIBED
from asyncjobs._redis.sharded import ShardedPubSub

from .cluster import ClusterSetup
from .test_cluster_sharded import _ask, _master_of, _no_sharded_tasks, _until

# --- a subscription Redis refuses ---------------------------------------------------------------


@pytest_asyncio.fixture
async def no_channels_user(redis_cluster: ClusterSetup) -> AsyncIterator[RedisCluster]:
    """A cluster client of a user allowed every key and command but no channel
    (``resetchannels``): every SSUBSCRIBE of it gets NOPERM."""
    user, password = f"noch{secrets.token_hex(3)}", secrets.token_hex(8)
    for port in redis_cluster.ports:
        await _ask(port, "ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all",
                   "resetchannels")
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], username=user,
                          password=password)
    try:
        await client.initialize()
        yield client
    finally:
        await client.aclose()
        for port in redis_cluster.ports:
            await _ask(port, "ACL", "DELUSER", user)


async def _ssubscribes(port: int) -> int:
    """SSUBSCRIBE calls on the node so far, refused ones too."""
    stats = (await _ask(port, "INFO", "commandstats")).get("cmdstat_ssubscribe", {})
    return int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))


@pytest.mark.asyncio
async def test_a_refused_subscribe_backs_off(redis_cluster: ClusterSetup,
                                            no_channels_user: RedisCluster) -> None:
    """SSUBSCRIBE refused (NOPERM, an ACL without the channel): the subscriber tries again
    with a growing wait, not at the first retry's pace forever (a new connection and a
    RESUBSCRIBED, waking every waiter, each 50 ms), and never says it recovered."""
    assert await pubsub.sharded_pubsub(no_channels_user)
    channel = Keys(f"sp{secrets.token_hex(3)}", "default").abort_channel
    port = (await _master_of(redis_cluster, channel)).port
    recovered: list[bool] = []
    sub = ShardedPubSub(no_channels_user, on_recovery=lambda: recovered.append(True))
    before = await _ssubscribes(port)
    try:
        await sub.subscribe(channel)
        resubscribed = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while (left := deadline - loop.time()) > 0:
            message = await sub.get_message(timeout=left)
            if message is not None and message["type"] == RESUBSCRIBED:
                resubscribed += 1
        tried = await _ssubscribes(port) - before
    finally:
        await sub.aclose()
    # backing off 0.05, 0.2, 0.5, 1, 2 s: a handful of attempts in 3 s, not 60
    assert tried <= 7, f"{tried} SSUBSCRIBE in 3 s"
    assert resubscribed <= 6
    assert not recovered
    await _until(_no_sharded_tasks, 5, "every task ended")
