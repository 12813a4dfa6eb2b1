"""Sharded pub/sub (``_redis.sharded``) under hostile conditions: subscriptions Redis
refuses, a close racing a subscribe, losses that overlap a resubscription."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster

from asyncjobs._redis import pubsub, sharded
from asyncjobs._redis.keys import Keys
from asyncjobs._redis.pubsub import RESUBSCRIBED
from asyncjobs._redis.sharded import ShardedPubSub

from .cluster import ClusterSetup
from .test_cluster_sharded import _ask, _master_of, _no_sharded_tasks, _until

# --- a subscription Redis refuses ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def acl_user(redis_cluster: ClusterSetup, name: str, *rules: str
                   ) -> AsyncIterator[tuple[str, str]]:
    """A user (name, password) with ``rules`` on every node, deleted on the way out."""
    user, password = f"{name}{secrets.token_hex(3)}", secrets.token_hex(8)
    for port in redis_cluster.ports:
        await _ask(port, "ACL", "SETUSER", user, "on", f">{password}", *rules)
    try:
        yield user, password
    finally:
        for port in redis_cluster.ports:
            await _ask(port, "ACL", "DELUSER", user)


@pytest_asyncio.fixture
async def no_channels(redis_cluster: ClusterSetup) -> AsyncIterator[tuple[str, str]]:
    """A user (name, password) allowed every key and command but no channel
    (``resetchannels``): every SSUBSCRIBE of it gets NOPERM."""
    async with acl_user(redis_cluster, "noch", "~*", "+@all", "resetchannels") as user:
        yield user


@pytest_asyncio.fixture
async def no_ssubscribe(redis_cluster: ClusterSetup) -> AsyncIterator[tuple[str, str]]:
    """A user (name, password) allowed everything but SSUBSCRIBE (``-ssubscribe``): it
    can run asyncjobs's scripts (SPUBLISH), but its subscriptions are refused."""
    async with acl_user(redis_cluster, "nosub", "~*", "&*", "+@all", "-ssubscribe") as user:
        yield user


@pytest_asyncio.fixture
async def no_channels_user(redis_cluster: ClusterSetup, no_channels: tuple[str, str]
                           ) -> AsyncIterator[RedisCluster]:
    """A cluster client of the ``no_channels`` user."""
    user, password = no_channels
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], username=user,
                          password=password)
    try:
        await client.initialize()
        yield client
    finally:
        await client.aclose()


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


@pytest.mark.asyncio
async def test_a_worker_whose_subscribe_is_refused_backs_off(
        redis_cluster: ClusterSetup, no_ssubscribe: tuple[str, str]) -> None:
    """The same in a worker, whose failures go to its shared outage tracker: its other
    loops (fetching, settling) succeeding in between must not keep the pub/sub's retries
    at their first, shortest wait."""
    from asyncjobs._redis.connection import url_factory

    from .conftest import Backend, running
    from .test_cluster_sharded import _worker, nap

    user, password = no_ssubscribe
    url = redis_cluster.url.replace("redis+cluster://", f"redis+cluster://{user}:{password}@")
    backend = Backend("cluster", url, url_factory(url), f"sp{secrets.token_hex(3)}")
    channel = Keys(backend.prefix, "default").abort_channel
    port = (await _master_of(redis_cluster, channel)).port
    async with backend.pool() as pool, running(backend, _worker(backend)):

        async def busy() -> None:  # jobs flowing: fetch and settle succeed all along
            while True:
                await pool.enqueue(nap, 0.0)
                await asyncio.sleep(0.02)

        feeding = asyncio.ensure_future(busy())
        try:
            await asyncio.sleep(1.0)
            before = await _ssubscribes(port)
            await asyncio.sleep(4.0)
            tried = await _ssubscribes(port) - before
        finally:
            feeding.cancel()
    assert tried <= 6, f"{tried} SSUBSCRIBE in 4 s"


# --- on fake nodes: races, step by step ---------------------------------------------------------


class _FakePubSub:
    """A node's pub/sub connection: SSUBSCRIBE waits for ``gate`` then confirms each
    channel; ``fail`` makes the next read raise; ``refuse`` makes SSUBSCRIBE raise."""

    def __init__(self, node: _FakeNode) -> None:
        self.node = node
        self.shard_channels: dict[bytes, Any] = {}
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.connection = None
        self.closed = False
        node.opened.append(self)

    @property
    def subscribed(self) -> bool:
        return bool(self.shard_channels)

    async def ssubscribe(self, *channels: bytes) -> None:
        await self.node.gate.wait()
        if self.node.refuse:
            raise ConnectionError(f"{self.node.name} refuses")
        self.shard_channels.update(dict.fromkeys(channels))
        for channel in channels:
            self.inbox.put_nowait({"type": "ssubscribe", "channel": channel, "data": 1})

    async def sunsubscribe(self, *channels: bytes) -> None:
        for channel in channels:
            self.shard_channels.pop(channel, None)

    async def get_message(self, timeout: float | None = 0.0) -> Any:
        try:  # not wait_for: on 3.11 it may swallow a cancel racing a message
            async with asyncio.timeout(timeout):
                item = await self.inbox.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True


class _FakeNode:
    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.gate.set()
        self.refuse = False
        self.opened: list[_FakePubSub] = []

    def pubsub(self) -> _FakePubSub:
        return _FakePubSub(self)

    async def aclose(self) -> None:
        pass

    def fail(self) -> None:
        """The connection now open on this node fails."""
        self.opened[-1].inbox.put_nowait(ConnectionError(f"{self.name} went away"))


class _FakeCluster:
    """Two nodes: the slot of ``{a}`` on n1, every other one on n2."""

    def __init__(self) -> None:
        self.n1, self.n2 = _FakeNode("n1:1"), _FakeNode("n2:2")
        self.nodes_manager = self
        self.a_on_n2 = False  # the slot map gives {a} to n2 (a failover)
        self._asyncjobs_sharded_pubsub = True  # the rule, as pubsub.sharded_pubsub keeps it

    def get_node_from_slot(self, slot: int) -> _FakeNode:
        from redis.crc import key_slot

        return self.n1 if slot == key_slot(b"{a}") and not self.a_on_n2 else self.n2

    def get_node(self, node_name: str) -> _FakeNode | None:
        return {"n1:1": self.n1, "n2:2": self.n2}.get(node_name)

    async def initialize(self) -> None:
        pass


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> _FakeCluster:
    monkeypatch.setattr(sharded, "client_of", lambda node, **options: node)
    return _FakeCluster()


async def _until_true(check: Any, timeout_s: float = 2.0) -> None:
    async def checked() -> bool:
        return bool(check())

    await _until(checked, timeout_s, "condition")


@pytest.mark.asyncio
async def test_a_subscribe_waiting_while_closed_opens_nothing(fake_cluster: _FakeCluster
                                                              ) -> None:
    """A subscribe that waits for a resubscription under way (its node out of reach) when
    the subscriber is closed: once the close has cancelled that resubscription, the
    subscribe must not open a connection and a reader that nobody will close."""
    sub = ShardedPubSub(fake_cluster)  # type: ignore[arg-type]
    await sub.subscribe(b"{a}1")
    fake_cluster.n1.gate.clear()  # connecting to n1 hangs from now on
    fake_cluster.n1.fail()
    await _until_true(lambda: sub._repair is not None and sub._lock.locked())
    waiting = asyncio.ensure_future(sub.subscribe(b"{b}1"))  # a watch starts meanwhile
    await asyncio.sleep(0.01)
    await sub.aclose()
    await asyncio.wait_for(waiting, 2)
    await asyncio.sleep(0.01)
    assert not sub._shards
    assert await _no_sharded_tasks()
    assert all(p.closed for node in (fake_cluster.n1, fake_cluster.n2) for p in node.opened)


@pytest.mark.asyncio
async def test_a_resubscription_is_announced_even_when_more_was_lost_meanwhile(
        fake_cluster: _FakeCluster) -> None:
    """n1's channel is subscribed again while n2 fails (and stays out of reach): the
    watchers of n1's channel, which may have missed a notice, are woken at once
    (RESUBSCRIBED), not only once n2 is back."""
    sub = ShardedPubSub(fake_cluster)  # type: ignore[arg-type]
    try:
        await sub.subscribe(b"{a}1", b"{b}1", b"{c}1")
        await _until_true(lambda: len(sub.channels) == 3)
        fake_cluster.n1.gate.clear()
        fake_cluster.n1.fail()
        await _until_true(lambda: sub._lock.locked())  # subscribing {a}1 again
        fake_cluster.n2.refuse = True
        fake_cluster.n2.fail()  # n2's two channels lost meanwhile
        await _until_true(lambda: len(sub._lost) == 2)
        fake_cluster.n1.gate.set()
        message = await sub.get_message(timeout=2.0)
        assert message is not None and message["type"] == RESUBSCRIBED
        assert sub.channels == {b"{a}1": "n1:1"}
    finally:
        await sub.aclose()


async def _watch_briefly(waiter: Any, channel: str) -> None:
    async with asyncio.timeout(0.05), waiter.watch(channel):
        pass


@pytest.mark.asyncio
async def test_a_watch_cancelled_while_subscribing_leaves_nothing_behind(
        fake_cluster: _FakeCluster) -> None:
    """``result(timeout=...)`` calls that time out while their node does not answer the
    subscribe (each cancelled inside ``watch``): no channel stays watched by the Waiter or
    wanted by the subscriber (each would be subscribed again after every outage, for
    ever), and a later watch of the same channel works."""
    from asyncjobs._producer.waiter import Waiter

    waiter = Waiter(fake_cluster)  # type: ignore[arg-type]
    try:
        fake_cluster.n1.gate.clear()  # n1 does not answer
        for i in range(5):
            with pytest.raises(TimeoutError):
                await _watch_briefly(waiter, f"{{a}}done{i}")
        assert waiter._events == {}
        sub = waiter._pubsub
        assert isinstance(sub, ShardedPubSub)
        assert sub._wanted == set()
        fake_cluster.n1.gate.set()
        async with waiter.watch("{a}done0") as event:
            assert sub._wanted == {b"{a}done0"}
            fake_cluster.n1.opened[-1].inbox.put_nowait(
                {"type": "smessage", "channel": b"{a}done0", "data": b"ok"})
            await asyncio.wait_for(event.wait(), 2)
    finally:
        await waiter.close()


# --- the reply to our own SUNSUBSCRIBE ----------------------------------------------------------


@pytest.mark.asyncio
async def test_unsubscribe_then_subscribe_again_is_no_slot_move(redis_cluster: ClusterSetup
                                                                ) -> None:
    """A channel unsubscribed and at once subscribed again (``result()`` called again for
    the same job): the reply to our own SUNSUBSCRIBE, read after the new SSUBSCRIBE, is not
    a slot moved away; no resubscription, and no RESUBSCRIBED waking every watcher."""
    client = RedisCluster.from_url(redis_cluster.url.replace("redis+cluster://", "redis://")
                                   .split(",")[0])
    try:
        assert await pubsub.sharded_pubsub(client)
        channel = Keys(f"sp{secrets.token_hex(3)}", "default").done_channel("j1")
        sub = ShardedPubSub(client)
        try:
            await sub.subscribe(channel)
            for _ in range(5):
                await sub.unsubscribe(channel)
                await sub.subscribe(channel)
            message = await sub.get_message(timeout=0.5)
            assert message is None, message
            await client.spublish(channel, b"x")
            message = await sub.get_message(timeout=2.0)
            assert message is not None and message["data"] == b"x"
        finally:
            await sub.aclose()
    finally:
        await client.aclose()


# --- get_message cancelled ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_cancelled_get_message_is_cancelled_and_keeps_the_message(
        fake_cluster: _FakeCluster) -> None:
    """``get_message(timeout=...)`` cancelled in the very step a message arrives: the
    cancellation goes through (Python 3.11's ``wait_for`` returned the message instead,
    swallowing the cancel: a reader told to stop would read on), and the message stays
    for the next call."""
    sub = ShardedPubSub(fake_cluster)  # type: ignore[arg-type]
    try:
        reading = asyncio.ensure_future(sub.get_message(timeout=5.0))
        await asyncio.sleep(0.01)
        notice = {"type": "message", "pattern": None, "channel": b"{a}1", "data": b"x"}
        sub._queue.put_nowait(notice)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert await sub.get_message(timeout=0.1) == notice
    finally:
        await sub.aclose()


# --- a hung node ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_closing_with_a_master_hung_is_prompt(redis_cluster: ClusterSetup) -> None:
    """The master of a subscribed channel hangs (SIGSTOP): closing the subscriber (a worker
    stopping) still ends at once, every task gone."""
    import os
    import signal
    import time

    import asyncjobs

    prefix = f"sp{secrets.token_hex(3)}"
    channel = Keys(prefix, "default").abort_channel
    async with asyncjobs.create_pool(redis_cluster.url, prefix=prefix) as pool:
        sub = await pubsub.pubsub_for(pool.client)
        await sub.subscribe(channel)
        victim = await _master_of(redis_cluster, channel)
        await _until(lambda: _subscribed_on(victim.port, channel), 5, "SSUBSCRIBE")
        assert victim.process is not None
        os.kill(victim.process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.2)
            began = time.monotonic()
            await asyncio.wait_for(sub.aclose(), 10)
            assert time.monotonic() - began < 1.0
            assert await _no_sharded_tasks()
        finally:
            os.kill(victim.process.pid, signal.SIGCONT)
    await asyncio.to_thread(redis_cluster.wait_ok, 30.0)


async def _subscribed_on(port: int, channel: str) -> bool:
    return channel.encode() in await _ask(port, "PUBSUB", "SHARDCHANNELS")


@pytest.mark.asyncio
async def test_a_failover_behind_a_hung_master_moves_the_subscription(
        fake_cluster: _FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The master of a channel hangs (no reply, no error, no SUNSUBSCRIBE) and its replica
    takes over: once the slot map names the new master (the cluster client learns it from
    its own commands), the channel is subscribed there and RESUBSCRIBED wakes its
    watchers; it does not stay on the hung node, deaf, for as long as that hangs."""
    monkeypatch.setattr(sharded, "_READ_S", 0.1)
    sub = ShardedPubSub(fake_cluster)  # type: ignore[arg-type]
    try:
        await sub.subscribe(b"{a}1")
        assert sub.channels == {b"{a}1": "n1:1"}
        fake_cluster.a_on_n2 = True
        message = await sub.get_message(timeout=2.0)
        assert message is not None and message["type"] == RESUBSCRIBED
        assert sub.channels == {b"{a}1": "n2:2"}
        assert "n1:1" not in sub._shards and fake_cluster.n1.opened[-1].closed
    finally:
        await sub.aclose()


# --- checks that held ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_scripts_flushed_and_the_pubsub_connection_killed(redis_cluster: ClusterSetup,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """SCRIPT FLUSH on every node, then the queue master's pub/sub connections killed
    (CLIENT KILL TYPE pubsub) while a result is awaited: the scripts reloaded are the
    sharded variants (SPUBLISH only), and the result still comes by a notice."""
    import time

    from asyncjobs._producer import handle

    from .conftest import running
    from .test_cluster_sharded import _backend, _publishes, _subscribed, _worker, nap

    monkeypatch.setattr(handle, "_RECHECK_S", 600.0)
    backend = _backend(redis_cluster)
    async with backend.pool() as pool, running(backend, _worker(backend)):
        keys = pool.keys("default")
        owner = await _master_of(redis_cluster, keys.stream)
        for port in redis_cluster.ports:
            await _ask(port, "SCRIPT", "FLUSH")
        before = await _publishes(redis_cluster)
        job = await pool.enqueue(nap, 1.5)
        waiting = asyncio.ensure_future(job.result(timeout=20))
        done = keys.done_channel(job.id)
        await _until(lambda: _subscribed(owner.port, done), 5, "SSUBSCRIBE")
        await _ask(owner.port, "CLIENT", "KILL", "TYPE", "pubsub")
        began = time.monotonic()
        assert await waiting == "rested"
        assert time.monotonic() - began < 4.0
        after = await _publishes(redis_cluster)
        assert after["spublish"] > before["spublish"]
        assert after["publish"] == before["publish"]
