"""Sharded pub/sub on a Redis Cluster (``_redis.pubsub``, ``_redis.sharded``): notices go by
``SPUBLISH`` to the master of their queue's slot, subscribers ``SSUBSCRIBE`` there, and
subscriptions follow a slot that moves or a master that fails over; with the rule forced
off, the same flows run on classic pub/sub.

Every test that waits for a job's result makes ``Job.result``'s periodic re-check far
longer than its own wait: a result seen in time came by a notice (or by the wake-up after a
resubscription), not by the re-check.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import asyncjobs
from asyncjobs._producer import handle
from asyncjobs._redis import pubsub, scripts
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.keys import Keys
from asyncjobs._redis.pubsub import parse_version, sharded_rule
from asyncjobs._redis.scripts import load
from asyncjobs._redis.sharded import ShardedPubSub, by_node, by_slot

from .cluster import ClusterSetup, key_slot, migrate_slot
from .conftest import Backend, need_redis_server, running
from .test_cluster import _wait_replicated

# --- pure logic ------------------------------------------------------------------------------


def test_versions_are_read_as_major_and_minor() -> None:
    assert parse_version("7.0.15") == (7, 0)
    assert parse_version(b"7.2.4") == (7, 2)
    assert parse_version("6.2") == (6, 2)
    # '²' passes str.isdigit(); 5,000 digits are past what int() reads
    for bad in (None, "", "seven", "7", "7.x.1", 7.0, "\u00b2.0", "9" * 5000 + ".0"):
        assert parse_version(bad) is None


def test_sharded_only_on_a_cluster_whose_masters_all_run_7() -> None:
    assert sharded_rule(True, ["7.0.0", "7.2.4", "8.0.1"])
    assert not sharded_rule(False, ["7.0.0"])  # one server, Sentinel, fake: classic
    assert not sharded_rule(True, ["7.0.15", "6.2.14", "7.0.15"])  # mixed: the fallback
    assert not sharded_rule(True, ["7.0.15", None])  # a master that would not say
    assert not sharded_rule(True, ["7.0.15", "garbage"])
    assert not sharded_rule(True, [])
    assert not sharded_rule(True, ["6.9.9"])


def test_a_queues_channels_share_its_slot() -> None:
    for queue in ("default", "emails@high", "q7"):
        keys = Keys("app", queue)
        channels = [keys.done_channel("j1"), keys.done_channel("other"), keys.abort_channel,
                    keys.wake_channel]
        assert {key_slot_of(c) for c in channels} == {key_slot_of(keys.stream)}


def key_slot_of(key: str) -> int:
    from redis.crc import key_slot as slot

    return int(slot(key.encode()))


def test_channels_are_grouped_by_node_then_by_slot() -> None:
    a, b, c = Keys("p", "a"), Keys("p", "b"), Keys("p", "c")
    channels = [ch.encode() for ch in (a.abort_channel, b.abort_channel, a.wake_channel,
                                       c.done_channel("x"), b.wake_channel)]
    slots = by_slot(channels)
    assert sorted(len(g) for g in slots.values()) == [1, 2, 2]
    assert slots[key_slot_of(a.stream)] == [a.abort_channel.encode(), a.wake_channel.encode()]
    owners = {key_slot_of(a.stream): "n1:1", key_slot_of(b.stream): "n2:2",
              key_slot_of(c.stream): "n1:1"}
    nodes = by_node(channels, owners.__getitem__)
    assert set(nodes) == {"n1:1", "n2:2"}
    assert set(nodes["n1:1"]) == {key_slot_of(a.stream), key_slot_of(c.stream)}
    assert nodes["n2:2"] == {key_slot_of(b.stream): [b.abort_channel.encode(),
                                                     b.wake_channel.encode()]}
    with pytest.raises(KeyError):  # a slot no master holds: the caller's to handle
        by_node([b"p:{zz}:wake"], {}.__getitem__)


def test_each_script_has_a_sharded_variant_differing_only_in_its_publish_command() -> None:
    """A script that publishes (through the prelude's PUBLISH) has a sharded variant with
    SPUBLISH there; one that never publishes is loaded without that line (it gets only
    the prelude it uses), so its two variants are one source."""
    lua = Path(scripts.__file__).parent / "lua"
    for name in sorted(p.stem for p in lua.glob("*.lua") if p.stem != "_prelude"):
        classic, sharded = load(name), load(name, True)
        assert not classic.sharded and sharded.sharded
        assert classic.variant(True) is sharded and sharded.variant(False) is classic
        if "PUBLISH" not in classic.source:  # never publishes: one source (checked below:
            assert sharded.source == classic.source  # the scripts that must publish do)
            assert classic.sha == sharded.sha
            continue
        assert classic.sha != sharded.sha
        assert "local PUBLISH = 'PUBLISH'\n" in classic.source
        assert "local PUBLISH = 'SPUBLISH'" not in classic.source
        assert sharded.source == classic.source.replace(
            "local PUBLISH = 'PUBLISH'", "local PUBLISH = 'SPUBLISH'")
        for source in (classic.source, sharded.source):  # every notice by the one name
            assert "redis.call('PUBLISH'" not in source and "pcall('PUBLISH'" not in source
    for name in ("settle", "abort", "lease_release", "enqueue", "promote"):
        assert "local PUBLISH = 'SPUBLISH'" in load(name, True).source, name


# --- on a cluster ------------------------------------------------------------------------------


@asyncjobs.task(name="nap")
async def nap(ctx: asyncjobs.Context, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


@pytest.fixture(autouse=True)
def no_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Job.result`` re-reads the record only every 10 minutes: a result seen sooner came
    by pub/sub."""
    monkeypatch.setattr(handle, "_RECHECK_S", 600.0)


def _backend(cluster: ClusterSetup) -> Backend:
    from asyncjobs._redis.connection import url_factory

    return Backend("cluster", cluster.url, url_factory(cluster.url),
                   f"sp{secrets.token_hex(3)}")


def _worker(backend: Backend, **options: Any) -> asyncjobs.Worker:
    # keep-alive (claim_timeout / 6) and the leader's lease period far beyond each test's
    # waits: an abort or a wake-up seen in time came by pub/sub
    options.setdefault("claim_timeout", 600)
    options.setdefault("lease_ttl", 120)
    return backend.worker([nap], **options)


async def _ask(port: int, *args: Any) -> Any:
    """One command to one node (async: the worker under test shares the event loop)."""
    node = Redis(port=port, socket_timeout=2.0)
    try:
        return await node.execute_command(*args)
    finally:
        await node.aclose()


async def _publishes(cluster: ClusterSetup) -> dict[str, int]:
    """Calls of PUBLISH and SPUBLISH so far, summed over the live nodes."""
    total = {"publish": 0, "spublish": 0}
    for node in cluster.nodes:
        if node.process is None:
            continue
        stats = await _ask(node.port, "INFO", "commandstats")
        for kind in total:
            total[kind] += int(stats.get(f"cmdstat_{kind}", {}).get("calls", 0))
    return total


async def _shard_channels(port: int) -> set[str]:
    return {c.decode() for c in await _ask(port, "PUBSUB", "SHARDCHANNELS")}


async def _classic_channels(port: int) -> set[str]:
    return {c.decode() for c in await _ask(port, "PUBSUB", "CHANNELS")}


async def _subscribed(port: int, *channels: str, classic: bool = False) -> bool:
    """Whether the node on ``port`` has subscribers of every one of ``channels``
    (classic: those of its own clients)."""
    have = await (_classic_channels(port) if classic else _shard_channels(port))
    return set(channels) <= have


async def _master_of(cluster: ClusterSetup, key: str) -> RedisServer:
    return await asyncio.to_thread(cluster.master_of, key)


async def _until(check: Any, timeout_s: float, what: str) -> None:
    """Wait until ``await check()`` is true."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.02)


async def _abort_reaches_the_running_job(pool: asyncjobs.Pool, queue: str = "default"
                                         ) -> None:
    """A job that would nap 60 s is aborted while it runs: it ends within 2 s (the
    keep-alive's own look at abort flags is 100 s away)."""
    job = await pool.enqueue(nap.options(queue=queue), 60.0)
    await _until_running(job)
    began = time.monotonic()
    assert await job.abort()
    with pytest.raises(asyncjobs.JobAborted):
        await job.result(timeout=10)
    assert time.monotonic() - began < 2.0


async def _until_running(job: asyncjobs.Job[Any]) -> None:
    deadline = time.monotonic() + 10
    while (await job.info()).state != "running":
        assert time.monotonic() < deadline, "the job did not start"
        await asyncio.sleep(0.02)


async def _pubsub_clients(port: int) -> int:
    reply = await _ask(port, "CLIENT", "LIST", "TYPE", "pubsub")
    return len([line for line in reply.decode().splitlines() if line.strip()])


@pytest.mark.asyncio
async def test_one_connection_per_master_every_one_read_at_once(redis_cluster: ClusterSetup
                                                                ) -> None:
    """Channels of three queues on three masters: one pub/sub connection per master, each
    channel subscribed on its own master; a message published on any of them is returned
    at once (no node waits for another's timeout); a node's connection outlives its last
    channel and serves the next; a close, even one cancelled at once, leaves no connection
    and no task behind."""
    prefix = f"sp{secrets.token_hex(3)}"
    queues: dict[int, str] = {}
    for i in range(100):
        port = (await _master_of(redis_cluster, Keys(prefix, f"q{i}").stream)).port
        queues.setdefault(port, f"q{i}")
        if len(queues) == 3:
            break
    before = {port: await _pubsub_clients(port) for port in queues}
    async with asyncjobs.create_pool(redis_cluster.url, prefix=prefix) as pool:
        assert await pubsub.sharded_pubsub(pool.client)
        sub = await pubsub.pubsub_for(pool.client)
        assert isinstance(sub, ShardedPubSub)
        channels = {port: Keys(prefix, q).abort_channel for port, q in queues.items()}
        await sub.subscribe(*channels.values())
        assert {int(node.split(":")[1]) for node in sub.channels.values()} == set(queues)
        for port, channel in channels.items():
            assert sub.channels[channel.encode()].endswith(f":{port}")
            await _until(lambda p=port, c=channel: _subscribed(p, c), 5, "SSUBSCRIBE")
            assert await _pubsub_clients(port) == before[port] + 1
        assert await sub.get_message(timeout=0.2) is None
        for channel in reversed(list(channels.values())):
            began = time.monotonic()
            await pool.client.spublish(channel, b"x")
            message = await sub.get_message(timeout=5.0)
            assert message is not None and time.monotonic() - began < 0.5
            assert (message["type"], message["channel"], message["data"]) == (
                "message", channel.encode(), b"x")
        first_port, first = next(iter(channels.items()))
        node = sub.channels[first.encode()]
        connection = sub._shards[node].pubsub.connection
        await sub.unsubscribe(first)  # the node's only channel: its connection stays
        await _until(lambda: _not_subscribed(first_port, first), 5, "SUNSUBSCRIBE")
        await sub.subscribe(first)  # on the same connection, read again
        await _until(lambda: _subscribed(first_port, first), 5, "SSUBSCRIBE again")
        assert sub._shards[node].pubsub.connection is connection
        assert await _pubsub_clients(first_port) == before[first_port] + 1
        await pool.client.spublish(first, b"again")
        message = await sub.get_message(timeout=5.0)
        assert message is not None and message["data"] == b"again"
        closing = asyncio.ensure_future(sub.aclose())
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await _until(lambda: _no_sharded_tasks(), 5, "every task of the subscriber ended")
        for port in queues:
            await _until(lambda p=port: _pubsub_clients_are(p, before[p]), 5,
                         "every connection closed")


async def _not_subscribed(port: int, channel: str) -> bool:
    return channel not in await _shard_channels(port)


async def _pubsub_clients_are(port: int, n: int) -> bool:
    return await _pubsub_clients(port) == n


async def _no_sharded_tasks() -> bool:
    return not [t for t in asyncio.all_tasks() if not t.done()
                and t.get_name() in ("asyncjobs-sharded", "asyncjobs-resubscribe")]


@pytest.mark.asyncio
async def test_a_result_waiter_is_woken_by_a_sharded_notice(redis_cluster: ClusterSetup
                                                            ) -> None:
    """Waiting for a result: the waiter subscribes with SSUBSCRIBE on the master of the
    queue's slot only, the settle script announces the end with SPUBLISH (no PUBLISH
    anywhere), and the result arrives at once."""
    backend = _backend(redis_cluster)
    async with backend.pool() as pool, running(backend, _worker(backend)):
        keys = pool.keys("default")
        owner = await _master_of(redis_cluster, keys.stream)
        job = await pool.enqueue(nap, 1.0)
        before = await _publishes(redis_cluster)
        waiting = asyncio.ensure_future(job.result(timeout=15))
        done = keys.done_channel(job.id)
        await _until(lambda: _subscribed(owner.port, done), 5, "SSUBSCRIBE on the owner")
        assert isinstance(pool.waiter._pubsub, ShardedPubSub)
        for node in redis_cluster.nodes:
            assert done not in await _classic_channels(node.port)
            if node is not owner:
                assert done not in await _shard_channels(node.port)
        # the worker listens there too, for aborts and wake-ups
        assert {keys.abort_channel, keys.wake_channel} <= await _shard_channels(owner.port)
        began = time.monotonic()
        assert await waiting == "rested"
        assert time.monotonic() - began < 3.0
        after = await _publishes(redis_cluster)
        assert after["spublish"] > before["spublish"]
        assert after["publish"] == before["publish"]


@pytest.mark.asyncio
async def test_abort_a_scheduler_wake_up_and_make_due_go_by_sharded_notices(
        redis_cluster: ClusterSetup) -> None:
    """An abort reaches the running job; a job delayed 0.5 s wakes the idle scheduler
    (whose own next look is a lease period, 40 s, away); ``make_due`` (published from
    Python) wakes it too. Only SPUBLISH is used."""
    backend = _backend(redis_cluster)
    async with backend.pool() as pool, running(backend, _worker(backend)):
        await asyncio.sleep(0.5)  # the scheduler leads, and sleeps
        before = await _publishes(redis_cluster)
        await _abort_reaches_the_running_job(pool)
        delayed = await pool.enqueue(nap.options(delay=0.5), 0.0)
        began = time.monotonic()
        assert await delayed.result(timeout=15) == "rested"
        assert time.monotonic() - began < 3.0
        later = await pool.enqueue(nap.options(delay=3600), 0.0)
        await asyncio.sleep(0.3)
        assert await pool.admin.make_due([later.id]) == [later.id]
        began = time.monotonic()
        assert await later.result(timeout=15) == "rested"
        assert time.monotonic() - began < 3.0
        after = await _publishes(redis_cluster)
        assert after["spublish"] >= before["spublish"] + 4
        assert after["publish"] == before["publish"]


@pytest.mark.asyncio
async def test_a_leader_that_stops_hands_its_lease_over_at_once(redis_cluster: ClusterSetup
                                                               ) -> None:
    """The leading worker stops and gives its lease up with a sharded notice: the other
    worker, waiting for the lease, takes it at once, not when it would have expired
    (120 s)."""
    backend = _backend(redis_cluster)
    async with backend.pool() as pool:
        leader_key = pool.keys("default").leader
        first = running(backend, _worker(backend))
        await first.__aenter__()
        try:
            await _until(lambda: pool.client.get(leader_key), 5, "the first leads")
            holder = await pool.client.get(leader_key)
            async with running(backend, _worker(backend)):
                await asyncio.sleep(0.5)  # the second follows: it waits for the lease
                before = await _publishes(redis_cluster)
                await first.__aexit__(None, None, None)
                first = None
                began = time.monotonic()

                async def taken_over() -> bool:
                    now = await pool.client.get(leader_key)
                    return bool(now) and now != holder

                await _until(taken_over, 3, "the second takes the lease")
                assert time.monotonic() - began < 3.0
                after = await _publishes(redis_cluster)
                assert after["spublish"] > before["spublish"]
                assert after["publish"] == before["publish"]
        finally:
            if first is not None:
                await first.__aexit__(None, None, None)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_slot_moved_under_a_waiter_and_a_worker(redis_cluster: ClusterSetup) -> None:
    """The queue's slot moves to another master (key by key) while a waiter waits for a
    running job and the worker listens: Redis unsubscribes them on the old master, they
    subscribe again on the new one, and the result still arrives as the job ends; an
    abort after the move reaches the running job; nothing is subscribed on the old master."""
    backend = _backend(redis_cluster)
    queue = f"mv{secrets.token_hex(3)}"  # a slot of its own (the session's tests share
    # the slot of "default": moving all their keys would take long)
    worker = _worker(backend, queues=[queue])
    async with backend.pool(retry_for=20.0) as pool, running(backend, worker):
        keys = pool.keys(queue)
        source = await _master_of(redis_cluster, keys.stream)
        target = next(n for n in redis_cluster.nodes if n is not source)
        job = await pool.enqueue(nap.options(queue=queue), 6.0)
        await _until_running(job)
        waiting = asyncio.ensure_future(job.result(timeout=30))
        done = keys.done_channel(job.id)
        await _until(lambda: _subscribed(source.port, done), 5, "SSUBSCRIBE on the source")
        await asyncio.to_thread(migrate_slot, redis_cluster, key_slot(source.port, keys.stream),
                                source, target, batch=3)
        assert await _master_of(redis_cluster, keys.stream) is target
        assert not waiting.done()  # the job naps on
        ours = (done, keys.abort_channel, keys.wake_channel)
        await _until(lambda: _subscribed(target.port, *ours), 5, "subscribed on the target")
        assert not set(ours) & await _shard_channels(source.port)
        assert await waiting == "rested"
        info = await job.info()
        assert info.ended_at is not None
        assert time.time() - info.ended_at.timestamp() < 2.0  # seen as it ended
        before = await _publishes(redis_cluster)
        await _abort_reaches_the_running_job(pool, queue)
        assert (await _publishes(redis_cluster))["publish"] == before["publish"]


# --- a master killed ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicated() -> Iterator[ClusterSetup]:
    """A cluster of its own: 3 masters with a replica each (the test kills a master)."""
    need_redis_server()
    with ClusterSetup(masters=3, replicas=1) as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.asyncio
async def test_waiting_and_abort_carry_on_after_a_master_is_killed(replicated: ClusterSetup
                                                                  ) -> None:
    """The master of the queue's slot is SIGKILLed while a waiter waits for a running job;
    once its replica has taken over, the result arrives (the subscriptions moved to the new
    master), and an abort reaches a job started after the failover."""
    backend = _backend(replicated)
    async with backend.pool(retry_for=30.0) as pool, running(backend, _worker(backend)):
        keys = pool.keys("default")
        victim = await _master_of(replicated, keys.stream)
        job = await pool.enqueue(nap, 10.0)
        await _until_running(job)
        waiting = asyncio.ensure_future(job.result(timeout=40))
        done = keys.done_channel(job.id)
        await _until(lambda: _subscribed(victim.port, done), 5, "SSUBSCRIBE on the victim")
        await asyncio.to_thread(_wait_replicated, replicated)
        victim.stop(kill=True)
        await asyncio.to_thread(replicated.wait_ok, 30.0, alive=[
            n.port for n in replicated.nodes if n.process is not None])
        heir = await _master_of(replicated, keys.stream)
        assert heir is not victim
        await _until(lambda: _subscribed(heir.port, done, keys.abort_channel), 10,
                     "subscribed again on the new master")
        assert await waiting == "rested"
        info = await job.info()
        assert info.ended_at is not None
        assert time.time() - info.ended_at.timestamp() < 2.0  # seen as it ended
        await _abort_reaches_the_running_job(pool)


# --- the fallback ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_with_the_rule_off_a_cluster_uses_classic_pub_sub(
        redis_cluster: ClusterSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule forced off (as for a cluster with a master older than 7.0): the same flows
    run on SUBSCRIBE and PUBLISH, and SPUBLISH is not used."""
    monkeypatch.setattr(pubsub, "sharded_rule", lambda cluster, versions: False)
    backend = _backend(redis_cluster)
    async with backend.pool() as pool, running(backend, _worker(backend)):
        keys = pool.keys("default")
        await asyncio.sleep(0.5)
        before = await _publishes(redis_cluster)
        job = await pool.enqueue(nap, 1.0)
        waiting = asyncio.ensure_future(job.result(timeout=15))
        done = keys.done_channel(job.id)
        ports = [n.port for n in redis_cluster.nodes]

        async def anywhere() -> bool:  # a classic subscriber is on any one node
            return any([await _subscribed(p, done, classic=True) for p in ports])

        await _until(anywhere, 5, "SUBSCRIBE")
        for port in ports:
            assert done not in await _shard_channels(port)
        assert not isinstance(pool.waiter._pubsub, ShardedPubSub)
        assert await waiting == "rested"
        await _abort_reaches_the_running_job(pool)
        delayed = await pool.enqueue(nap.options(delay=0.5), 0.0)
        assert await delayed.result(timeout=5) == "rested"
        after = await _publishes(redis_cluster)
        assert after["publish"] >= before["publish"] + 3
        assert after["spublish"] == before["spublish"]
