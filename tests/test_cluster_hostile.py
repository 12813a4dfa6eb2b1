"""Redis Cluster under a hostile environment: what a cluster does that one server does not,
met by the pool, the worker and the CLI (see ``test_cluster`` for the happy paths)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

import asyncjobs
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import free_port
from asyncjobs._redis.health import judge, memory_used, read_settings
from asyncjobs._redis.keys import Keys
from asyncjobs._worker.reader import ClusterReader, Reader

from .cluster import ClusterSetup, cluster_info, key_slot, migrate_slot
from .conftest import Backend, need_redis_server, running
from .procs import run_cli
from .sentinel import command


@pytest.fixture
def evicting_master(redis_cluster: ClusterSetup, request: pytest.FixtureRequest
                    ) -> Iterator[int]:
    """One master of the session's cluster (by index: ``param``) set to evict keys;
    set back on the way out."""
    masters = [n.port for n in redis_cluster.nodes
               if "role:master" in command(n.port, "INFO", "replication")]
    port = masters[request.param]
    assert command(port, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru").startswith("+OK")
    try:
        yield port
    finally:
        command(port, "CONFIG", "SET", "maxmemory-policy", "noeviction")


@pytest.mark.asyncio
@pytest.mark.parametrize("evicting_master", [0, 1, 2], indirect=True)
async def test_a_master_that_evicts_is_found_whichever_it_is(
        redis_cluster: ClusterSetup, evicting_master: int) -> None:
    """The eviction check reads every master: one evicting master loses the jobs of the
    queues in its slots, whichever node the client's default node is."""
    async with asyncjobs.create_pool(redis_cluster.url, allow_eviction=True) as pool:
        verdict = judge(await read_settings(pool.client))
        assert verdict.errors and "allkeys-lru" in verdict.errors[0]
    with pytest.raises(asyncjobs.ConfigurationError, match="allkeys-lru"):
        async with asyncjobs.create_pool(redis_cluster.url):
            pass


@pytest.mark.asyncio
async def test_memory_use_is_the_fullest_master(redis_cluster: ClusterSetup) -> None:
    """``memory_used`` on a cluster is that of its fullest master (enqueues to it fail
    first): one master with a maxmemory just above its use is seen."""
    async with asyncjobs.create_pool(redis_cluster.url) as pool:
        ports = [n.port for n in redis_cluster.nodes]
        port = ports[-1]
        used = int(next(line.split(":")[1] for line in command(port, "INFO", "memory")
                        .splitlines() if line.startswith("used_memory:")))
        command(port, "CONFIG", "SET", "maxmemory", str(used * 2))
        try:
            share = await memory_used(pool.client)
            assert share is not None and share > 0.3
        finally:
            command(port, "CONFIG", "SET", "maxmemory", "0")


def test_the_cli_says_in_one_line_that_a_cluster_url_names_only_dead_nodes() -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    done = run_cli("info", "--redis-url", url)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "cannot reach Redis" in line or "unavailable" in line, line


def test_a_worker_on_a_cluster_url_naming_only_dead_nodes_says_so_in_one_line() -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    done = run_cli("worker", "tests.apps.basic:worker", env={"ASYNCJOBS_REDIS_URL": url})
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "cannot reach Redis" in done.stderr, done.stderr


@pytest.mark.asyncio
async def test_a_pool_on_a_dead_cluster_raises_redis_unavailable() -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    with pytest.raises(asyncjobs.RedisUnavailable):
        async with asyncjobs.create_pool(url, retry_for=0.5) as pool:
            await pool.enqueue("anything")
    await asyncio.sleep(0)


# --- a worker idle on queues of every master ---------------------------------------------


def _spread_queues(cluster: ClusterSetup, prefix: str) -> list[str]:
    """Three queue names whose slots are on three different masters."""
    by_master: dict[int, str] = {}
    for i in range(100):
        name = f"q{i}"
        by_master.setdefault(cluster.master_of(Keys(prefix, name).stream).port, name)
        if len(by_master) == 3:
            return list(by_master.values())
    raise AssertionError("no three queues on three masters")


@pytest.mark.asyncio
async def test_a_worker_idle_on_every_master_wakes_for_each_and_stops_at_once(
        redis_cluster: ClusterSetup, caplog: pytest.LogCaptureFixture) -> None:
    """A worker serving queues of three masters waits on all three at once (one read per
    node); a job enqueued on any of them wakes it; asked to stop while its reads are
    blocked, it stops, leaving no read blocked on any node."""
    backend = Backend("cluster", redis_cluster.url, url_factory(redis_cluster.url),
                      f"idle{secrets.token_hex(3)}")
    queues = _spread_queues(redis_cluster, backend.prefix)

    @asyncjobs.task(name="echo")
    async def echo(ctx: asyncjobs.Context, i: int) -> int:
        return i

    async with backend.pool() as pool:
        worker = backend.worker([echo], queues=queues, concurrency=4,
                                claim_timeout=3600).configure(block_ms=60_000)
        async with running(backend, worker):
            for round_ in range(3):
                for i, queue in enumerate(queues):
                    await _blocked_everywhere(redis_cluster, 3)
                    job = await pool.enqueue(echo.options(queue=queue), 10 * round_ + i)
                    assert await job.result(timeout=20) == 10 * round_ + i
            await _blocked_everywhere(redis_cluster, 3)
        # stopped: no read of the worker is left blocked in any node
        assert await _blocked_clients(redis_cluster) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def _blocked_clients(cluster: ClusterSetup) -> int:
    total = 0
    for node in cluster.nodes:
        text = await asyncio.to_thread(command, node.port, "INFO", "clients")
        total += int(text.split("blocked_clients:")[1].split()[0])
    return total


async def _blocked_everywhere(cluster: ClusterSetup, n: int, timeout_s: float = 20.0) -> None:
    """Wait until ``n`` clients are blocked, one per master."""
    deadline = time.monotonic() + timeout_s
    while await _blocked_clients(cluster) < n:
        assert time.monotonic() < deadline, "the worker's reads did not all block"
        await asyncio.sleep(0.05)


# --- a master killed under an idle worker, with no replica to take over -------------------


@pytest.fixture
def own_cluster() -> Iterator[ClusterSetup]:
    """A 3-master cluster of the test's own (it kills a master)."""
    need_redis_server()
    with ClusterSetup(masters=3) as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_master_down_and_back_under_an_idle_worker(
        own_cluster: ClusterSetup, caplog: pytest.LogCaptureFixture) -> None:
    """A worker idle on three masters; one is SIGKILLed (no replica: the cluster is down
    until it is back) and started again after the cluster has noticed. The worker rides
    it out as an outage (no internal error, no crash) and runs jobs of every queue after."""
    backend = Backend("cluster", own_cluster.url, url_factory(own_cluster.url),
                      f"down{secrets.token_hex(3)}")
    queues = _spread_queues(own_cluster, backend.prefix)

    @asyncjobs.task(name="echo")
    async def echo(ctx: asyncjobs.Context, i: int) -> int:
        return i

    worker = backend.worker([echo], queues=queues, concurrency=4)
    async with running(backend, worker):
        await _blocked_everywhere(own_cluster, 3)
        victim = own_cluster.master_of(Keys(backend.prefix, queues[1]).stream)
        victim.stop(kill=True)
        others = [n.port for n in own_cluster.nodes if n is not victim]
        deadline = time.monotonic() + 30
        while not all(cluster_info(p).get("cluster_state") == "fail" for p in others):
            assert time.monotonic() < deadline, "the cluster did not notice"
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # the worker meets the failed cluster a few times
        victim.start()
        await asyncio.to_thread(own_cluster.wait_ok, 30.0)
        async with backend.pool(retry_for=30.0) as pool:
            for i, queue in enumerate(queues):
                job = await pool.enqueue(echo.options(queue=queue), i)
                assert await job.result(timeout=60) == i
    bad = [r.getMessage() for r in caplog.records
           if r.levelno >= logging.ERROR or "internal error" in r.getMessage()]
    assert not bad, bad


# --- the ClusterReader's concurrent reads ------------------------------------------------


@pytest.mark.asyncio
async def test_a_read_sent_after_its_unblock_does_not_hold_the_wake_up(
        redis_cluster: ClusterSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    """One slot's read wakes at once while another slot's read is still on its way (its
    connection slow to set up): the CLIENT UNBLOCK sent to end the latter finds nothing
    blocked, and the read then blocks. The wait must still end now, not after the read's
    whole block (a minute here)."""
    prefix = f"rd{secrets.token_hex(3)}"
    queues = _spread_queues(redis_cluster, prefix)
    async with asyncjobs.create_pool(redis_cluster.url, prefix=prefix) as pool:
        client = pool.client
        woken, late = (Keys(prefix, q).stream for q in queues[:2])
        await client.xadd(woken, {"x": "1"})
        await client.xadd(late, {"x": "1"})
        slow = asyncio.Event()  # the late read's connection is ready once this is set
        real_wait, real_unblock = Reader.wait, ClusterReader._unblock_one

        async def wait(self: Reader, newest: dict[str, str], block_ms: int) -> bool:
            if late in newest:
                await slow.wait()
            return await real_wait(self, newest, block_ms)

        async def unblock_one(self: ClusterReader, key: str) -> None:
            await real_unblock(self, key)
            slow.set()  # the unblock went out before the read: it missed it

        monkeypatch.setattr(Reader, "wait", wait)
        monkeypatch.setattr(ClusterReader, "_unblock_one", unblock_one)
        reader = ClusterReader(client, socket_timeout=70.0)
        try:
            woke = await asyncio.wait_for(
                reader.wait({woken: "0-0", late: "$"}, 60_000), timeout=20)
            assert woke
        finally:
            await reader.close()
        assert await _blocked_clients(redis_cluster) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("cancel_after", ["no-step", "one-step", "blocked", "slow-to-end"])
async def test_a_cancelled_wait_leaves_no_read_running_and_close_closes_every_connection(
        redis_cluster: ClusterSetup, monkeypatch: pytest.MonkeyPatch,
        cancel_after: str) -> None:
    """A wait over three slots cancelled (a worker stopping) before its reads start, while
    they connect, while they block, or while they connect with one read that does not end
    on its cancellation (it finishes a step first, as a redis-py connect or a failed read
    can: CI once saw such a read end with an error after the close); the reader is closed
    at once, as the worker does. No read may go on after the close (one that did made its
    connection after the close had run, left open: a ResourceWarning once collected), and
    none may end with an exception nobody retrieves (asyncio logs those as errors)."""
    import gc

    from asyncjobs._worker import reader as reader_module

    made: list[Reader] = []

    class Recorded(Reader):
        def __init__(self, single: Any) -> None:
            super().__init__(single)
            made.append(self)

        async def ready(self) -> None:
            if cancel_after == "slow-to-end" and len(made) == 1 and not self._hooked:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    await asyncio.sleep(0.05)  # a step that ends before the cancel shows
            await super().ready()

    monkeypatch.setattr(reader_module, "Reader", Recorded)
    loop = asyncio.get_running_loop()
    unretrieved: list[str] = []
    monkeypatch.setattr(loop, "call_exception_handler",
                        lambda context: unretrieved.append(str(context.get("message"))))
    prefix = f"rc{secrets.token_hex(3)}"
    queues = _spread_queues(redis_cluster, prefix)
    async with asyncjobs.create_pool(redis_cluster.url, prefix=prefix) as pool:
        streams = {Keys(prefix, q).stream: "$" for q in queues[:3]}
        reader = ClusterReader(pool.client, socket_timeout=70.0)
        waiting = asyncio.create_task(reader.wait(streams, 60_000))
        if cancel_after in ("one-step", "slow-to-end"):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        elif cancel_after == "blocked":
            await _blocked_everywhere(redis_cluster, 3)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await reader.close()
        await asyncio.sleep(0.3)  # anything a read left running ends meanwhile
        gc.collect()
        opened = [r for r in made if r.client.connection is not None]
        assert not opened, f"{len(opened)} of {len(made)} readers left a connection open"
        assert not unretrieved, unretrieved
        assert not reader.readers
        deadline = time.monotonic() + 10
        while await _blocked_clients(redis_cluster) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await _blocked_clients(redis_cluster) == 0


# --- a pool with few connections --------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("on", ["real", "cluster"])
async def test_a_burst_larger_than_the_pool_waits_for_connections_on_a_cluster_too(
        on: str, request: pytest.FixtureRequest) -> None:
    """More calls at once than ``max_connections``: on one server each waits for a free
    connection (up to a few seconds); on a cluster, where ``max_connections`` is per node,
    redis-py raises at once when a node's connections are all busy. The burst must
    succeed on both, not fail with ``PoolExhausted`` on the cluster."""
    if on == "real":
        url = request.getfixturevalue("redis_server").url
    else:
        url = request.getfixturevalue("redis_cluster").url
    async with asyncjobs.create_pool(url, prefix=f"burst{secrets.token_hex(3)}",
                                     max_connections=2) as pool:
        jobs = await asyncio.gather(*(pool.enqueue(_anything, i) for i in range(40)))
        many = await asyncio.gather(*(
            pool.enqueue_many([asyncjobs.call(_anything.options(queue=f"q{k}"), i)
                               for k in range(6)]) for i in range(10)))
        assert len(jobs) == 40 and sum(map(len, many)) == 60
        stats = await asyncio.gather(*(pool.admin.queue_stats(f"q{k}") for k in range(6)))
        assert sum(s.waiting for s in stats) == 60


@asyncjobs.task(name="anything")
async def _anything(ctx: asyncjobs.Context, i: int) -> None:
    raise AssertionError("never run")  # pragma: no cover


@pytest.mark.asyncio
async def test_a_read_whose_slot_moved_is_woken_and_sent_to_the_new_master(
        redis_cluster: ClusterSetup) -> None:
    """After its slot moved to another master, a reader's connection is on the wrong node:
    the read is answered MOVED. That says "woken" (the caller takes again through the
    cluster client) and the next read goes to the slot's new master; it is no outage."""
    prefix = f"mv{secrets.token_hex(3)}"
    async with asyncjobs.create_pool(redis_cluster.url, prefix=prefix) as pool:
        client = pool.client
        stream = Keys(prefix, "moving").stream
        last = (await client.xadd(stream, {"x": "1"})).decode()
        reader = ClusterReader(client, socket_timeout=10.0)
        try:
            assert not await reader.wait({stream: last}, 100)  # connected to the source
            source = redis_cluster.master_of(stream)
            target = next(n for n in redis_cluster.nodes if n is not source)
            slot = key_slot(source.port, stream)
            await asyncio.to_thread(migrate_slot, redis_cluster, slot, source, target)
            assert await reader.wait({stream: last}, 100)  # MOVED: woken, take again
            assert not await reader.wait({stream: last}, 100)  # on the new master
            await client.xadd(stream, {"x": "2"})
            assert await reader.wait({stream: last}, 5000)
        finally:
            await reader.close()
