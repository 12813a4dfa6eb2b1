"""Redis Sentinel: ``redis+sentinel://`` URLs for the pool, the worker and the command line,
failovers mid-run (``SENTINEL FAILOVER`` and a SIGKILLed master) with producers and a
worker process carrying on, and the WAIT-based enqueue (``create_pool(wait_replicas=)``).

Each test starts its own master, replica(s) and three Sentinels on free ports
(``tests/sentinel.py``).

What a failover may lose, and so what is asserted: replication is asynchronous, so a job
the old master acknowledged but had not yet sent to the replica that gets promoted is gone.
With ``wait_replicas=1`` an enqueue returns only once a replica has the job, so no job
whose enqueue returned may be lost: asserted. Without it, only jobs enqueued once the new
master is in place are certain to run: asserted; how many of the others were lost is
printed (``-s``), not asserted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import asyncjobs
from asyncjobs._cli import loader as _loader
from asyncjobs._redis.connection import redact, url_factory
from asyncjobs._redis.embedded import RedisServer, free_port
from asyncjobs._redis.sentinel import parse_sentinel_url

from .conftest import need_redis_server
from .procs import WorkerProcess, run_cli
from .sentinel import (
    FAST_SYNC,
    SERVICE,
    SentinelServer,
    SentinelSetup,
    command,
    log_of,
    sentinel_setup,
)
from .test_cli_errors import assert_one_line_error

PREFIX_BASE = "sent"


@asyncjobs.task
async def mul(ctx: asyncjobs.Context, a: int, b: int) -> int:
    return a * b


@pytest.fixture(scope="module")
def setup() -> Iterator[SentinelSetup]:
    """A master, one replica and three Sentinels, for the tests that cause no failover."""
    need_redis_server()
    with sentinel_setup() as started:
        yield started


# --- the URL, for the pool, the worker and the command line ----------------------------------


@pytest.mark.asyncio
async def test_pool_and_worker_through_a_sentinel_url(setup: SentinelSetup) -> None:
    async with asyncjobs.create_pool(setup.url, prefix="s1") as pool:
        job = await pool.enqueue(mul, 6, 7)
        async with asyncio.TaskGroup() as tg:  # result() waits on pub/sub, through Sentinel
            waiting = tg.create_task(job.result(timeout=10))
            await asyncjobs.Worker([mul], burst=True, prefix="s1").run(redis_url=setup.url)
        assert waiting.result() == 42
        shared = pool.keys("default").kept(job.id)
    assert shared is not None
    # The job went to the master the Sentinels name (and on to its replica): its result is
    # kept in its tag's shared hash (asyncjobs/_redis/kept.py).
    assert command(setup.master.port, "HEXISTS", shared, job.id).endswith(":1\r\n")


@pytest.mark.asyncio
async def test_a_client_refuses_a_server_that_is_not_the_master() -> None:
    """A Sentinel that names a replica (it has not heard of a failover yet) is not
    believed: the connection checks ROLE, so no script ever runs on a read-only replica."""
    need_redis_server()
    with RedisServer() as master, RedisServer(
            extra_args=("--replicaof", "127.0.0.1", str(master.port))) as replica, \
            SentinelServer(replica.port) as confused:
        url = f"redis+sentinel://127.0.0.1:{confused.port}/{SERVICE}"
        client = url_factory(url)(max_connections=2, socket_timeout=2)
        try:
            with pytest.raises(RedisConnectionError, match="is not the master"):
                await client.ping()
        finally:
            await client.aclose()


@pytest.mark.asyncio
async def test_tasks_connecting_one_connection_at_once_open_one_socket(
        setup: SentinelSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection several tasks use (the waiter's pub/sub one, cut by a failover: its
    reader reconnects it as a ``result()`` subscribes) connected by them at once, each asking
    the Sentinels first: one socket is opened, and one handshake made on it; the others
    find it connected. (Each opened one, the last replacing the others in the connection,
    which were never closed: a ResourceWarning.)"""
    client = url_factory(setup.url)(max_connections=2, socket_timeout=2)
    connection = client.connection_pool.make_connection()
    opened: list[asyncio.StreamWriter] = []
    connect = connection._connect

    async def counted() -> None:
        await asyncio.sleep(0.1)  # the other tasks come along meanwhile
        await connect()
        opened.append(connection._writer)

    monkeypatch.setattr(connection, "_connect", counted)
    try:
        await asyncio.gather(*(connection.connect() for _ in range(3)))
        assert len(opened) == 1
        await connection.send_command("PING")
        assert await connection.read_response() == b"PONG"
        await connection.disconnect()
        assert opened[0].transport.is_closing()
    finally:
        for writer in opened:  # what the test found left open
            writer.close()
        await client.aclose()


@pytest.mark.slow
def test_the_command_line_takes_a_sentinel_url(setup: SentinelSetup) -> None:
    done = run_cli("info", "--redis-url", setup.url, "--prefix", "cli")
    assert done.returncode == 0, done.stderr


BAD_SENTINEL_URLS = {
    "redis+sentinel://h1:26379,h2:x/mymaster": "bad port 'x' for Sentinel 'h2'",
    "redis+sentinel://h1:26379": "expected the service name",
    "redis+sentinel://h1/mymaster/0/1": "expected the service name",
    "redis+sentinel://h1/mymaster/first": "bad database number 'first'",
    "redis+sentinel:///mymaster": "a Sentinel address has no host",
    "redis+sentinel://h1,/mymaster": "a Sentinel address has no host",
    "redis+sentinel://[::1/mymaster": "bad Sentinel address",
    "redis+sentinel://h1/mymaster?ssl_ca_certs=/ca.pem": "TLS through Sentinel",
    "redis+sentinel://h1/mymaster?socket_timeout=soon": "Invalid value for 'socket_timeout'",
    "redis+sentinel://:s3cret@h1:0/m?sentinel_password=s3cret": "bad port '0'",
}


@pytest.mark.parametrize("url", BAD_SENTINEL_URLS)
def test_a_bad_sentinel_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(asyncjobs.ConfigurationError) as caught:
        _loader.redis_url(url)
    assert BAD_SENTINEL_URLS[url] in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("url", [
    "redis+sentinel://h1/mymaster", "redis+sentinel://alice:pw@h1:5000,h2,[::1]:26380/m/3",
    "REDIS+SENTINEL://h1/m?sentinel_password=pw&socket_timeout=2",
])
def test_good_sentinel_urls_pass_the_check(url: str) -> None:
    assert _loader.redis_url(url) == url


def test_sentinel_urls_are_parsed_like_redis_py_options() -> None:
    target = parse_sentinel_url("redis+sentinel://alice:p%40ss@h1:5000,h2,[::1]:26380/"
                                "my%20master/3?sentinel_password=sp&socket_timeout=2")
    assert target.sentinels == (("h1", 5000), ("h2", 26379), ("::1", 26380))
    assert target.service == "my master"
    assert target.master == {"username": "alice", "password": "p@ss", "db": 3,
                             "socket_timeout": 2.0}
    assert target.sentinel == {"password": "sp"}
    assert redact("redis+sentinel://alice:p%40ss@h1,h2/m?sentinel_password=sp&db=1") == \
        "redis+sentinel://alice:***@h1,h2/m?sentinel_password=***&db=1"


@pytest.mark.slow
def test_a_bad_sentinel_url_is_one_line_at_the_command_line() -> None:
    url = "redis+sentinel://:s3cret@h1:26379,h2:x/mymaster?sentinel_password=s3cret"
    line = assert_one_line_error(["info", "--redis-url", url], says="bad port 'x'")
    assert "s3cret" not in line


@pytest.mark.asyncio
async def test_unreachable_sentinels_are_redis_unavailable() -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster"
    with pytest.raises(asyncjobs.RedisUnavailable, match="No master found for 'mymaster'"):
        await asyncjobs.create_pool(url, retry_for=0.2)


# --- WAIT ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio
async def test_wait_replicas_returns_once_a_replica_has_the_job() -> None:
    need_redis_server()
    with RedisServer(extra_args=FAST_SYNC) as master, RedisServer(
            extra_args=(*FAST_SYNC, "--replicaof", "127.0.0.1", str(master.port))) as replica:
        await _until_in_sync(replica)
        async with asyncjobs.create_pool(master.url, prefix="w1", wait_replicas=1,
                                         wait_timeout=0.5) as pool:
            job = await pool.enqueue(mul, 2, 3)
            # No sleep: the replica has it the moment enqueue returns.
            key = pool.keys("default").job(job.id)
            assert command(replica.port, "HGET", key, "s").endswith("queued\r\n")
            same = await pool.enqueue(mul.options(job_id=job.id), 2, 3)  # dedup: no write
            assert same.id == job.id

            replica.stop()  # no replica can acknowledge any more
            started = time.monotonic()
            with pytest.raises(asyncjobs.NotReplicated) as caught:
                await pool.enqueue(mul.options(job_id="not-replicated"), 4, 5)
            assert time.monotonic() - started >= 0.45  # it waited wait_timeout
            error = caught.value
            assert error.job_ids == ["not-replicated"]
            assert (error.acknowledged, error.wanted) == (0, 1)
            assert "is in Redis on the master" in str(error)
            # ... and it is: a worker runs it.
            assert await pool.job("not-replicated").status() == "queued"
            with pytest.raises(asyncjobs.NotReplicated):  # a dedup'd job is covered too
                await pool.enqueue(mul.options(job_id=job.id), 2, 3)


@pytest.mark.parametrize(("options", "says"), [
    ({"wait_replicas": -1}, "wait_replicas must be a whole number"),
    ({"wait_replicas": 1.5}, "wait_replicas must be a whole number"),
    ({"wait_replicas": 1, "wait_timeout": 0}, "wait_timeout must be a number"),
    ({"wait_replicas": 1, "wait_timeout": float("nan")}, "wait_timeout must be a number"),
    ({"wait_replicas": 1, "wait_timeout": 5, "timeout": 5}, "shorter than the pool's timeout"),
])
def test_bad_wait_options_are_refused_at_once(options: dict[str, float], says: str) -> None:
    with pytest.raises(asyncjobs.ConfigurationError, match=says):
        asyncjobs.create_pool("redis://127.0.0.1:1/0", **options)  # type: ignore[arg-type]


async def _until_in_sync(replica: RedisServer, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while "master_link_status:up" not in command(replica.port, "INFO", "replication"):
        assert time.monotonic() < deadline, "the replica never synced"
        await asyncio.sleep(0.05)


# --- failover mid-run --------------------------------------------------------------------------


@dataclass
class Producer:
    """Enqueues ``add`` jobs one after another until stopped; records what was acknowledged
    (enqueue returned) and when, and what failed."""

    name: str
    acked: list[tuple[float, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    async def run(self, pool: asyncjobs.Pool, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            job_id = f"{self.name}-{i}"
            try:
                await pool.enqueue(asyncjobs.task_ref("add").options(job_id=job_id), i, 1)
            except (asyncjobs.NotReplicated, asyncjobs.RedisUnavailable) as exc:
                self.failed.append(type(exc).__name__)
                await asyncio.sleep(0.05)
            else:
                self.acked.append((time.monotonic(), job_id))
            await asyncio.sleep(0.01)


async def _complete(pool: asyncjobs.Pool, job_ids: list[str], timeout_s: float) -> set[str]:
    """The job ids, among ``job_ids``, not complete by the deadline."""
    left = set(job_ids)
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        for job_id in list(left):
            try:
                if await pool.job(job_id).status() == "complete":
                    left.discard(job_id)
            except asyncjobs.JobNotFound:
                pass
        if left:
            await asyncio.sleep(0.2)
    return left


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["sentinel-failover", "sigkill"])
async def test_a_failover_mid_run_loses_no_acknowledged_job(
        how: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncjobs.pool")  # the waiter's story, if it fails
    need_redis_server()
    # SIGKILL leaves no old master to become a replica: a second replica is there to
    # acknowledge WAIT once the first is promoted.
    with sentinel_setup(replicas=1 if how == "sentinel-failover" else 2) as setup:
        prefix = f"{PREFIX_BASE}{how[:3]}"
        worker = WorkerProcess("tests.apps.basic:worker", setup.url, prefix,
                               env={"TEST_CLAIM_TIMEOUT": "3"})
        try:
            worker.wait_for("ready:")
            await _run_failover(setup, worker, prefix, how)
        finally:
            worker.close()


def _roles(setup: SentinelSetup) -> dict[int, str]:
    """Each live server's ROLE, each Sentinel's master (what a failing test shows)."""
    seen = {s.port: command(s.port, "ROLE")[:40] for s in setup.servers if s.process}
    seen.update({s.port: command(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                 for s in setup.sentinels if s.process})
    return seen


async def _run_failover(setup: SentinelSetup, worker: WorkerProcess, prefix: str,
                        how: str) -> None:
    waiting, plain = Producer("wait"), Producer("plain")
    stop = asyncio.Event()
    async with asyncjobs.create_pool(setup.url, prefix=prefix, retry_for=30,
                                     wait_replicas=1, wait_timeout=1) as durable, \
            asyncjobs.create_pool(setup.url, prefix=prefix, retry_for=30) as fast:
        # result() waits on pub/sub: its connection is opened on the first master.
        before = await durable.enqueue(asyncjobs.task_ref("add"), 1, 1)
        assert await before.result(timeout=10) == 2
        tasks = [asyncio.create_task(waiting.run(durable, stop)),
                 asyncio.create_task(plain.run(fast, stop))]
        await asyncio.sleep(1.0)
        old = setup.master.port
        failed_over_at = time.monotonic()
        if how == "sigkill":
            setup.master.stop(kill=True)
        else:
            reply = command(setup.sentinels[0].port, "SENTINEL", "FAILOVER", SERVICE)
            assert reply.startswith("+OK"), reply
        new = await asyncio.to_thread(setup.wait_for_new_master, old)
        switched_at = time.monotonic()
        if how != "sigkill":  # until the old master is demoted, it still takes writes
            await asyncio.to_thread(setup.wait_until_replica, old)
        settled_at = time.monotonic()
        # Both producers carry on: each gets jobs acknowledged by the new master.
        while not (_after(waiting, settled_at) >= 20 and _after(plain, settled_at) >= 20):
            assert time.monotonic() - settled_at < 30, (waiting.failed[-5:], plain.failed[-5:])
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        after_failover = await durable.enqueue(asyncjobs.task_ref("add"), 2, 2)
        assert await after_failover.result(timeout=10) == 4
        # The waiter's pub/sub client follows too: it reconnects when next used, and moves
        # when the Sentinels name another master than the one it reached, so a few more
        # result waits (bounded) find it on the master the Sentinels name now (under load
        # they can fail over a second time: with down-after-milliseconds 1 s, a promoted
        # replica slow to answer is itself replaced, so `new` may be out of date).
        deadline = time.monotonic() + 15
        while True:
            pubsub = durable.waiter._pubsub  # None while the waiter replaces it
            port = pubsub.connection.port if pubsub and pubsub.connection else None
            master = await asyncio.to_thread(setup.master_port)  # None while they disagree
            if port is not None and port == master:
                break
            if time.monotonic() >= deadline:  # what a failure needs explained
                print("servers and Sentinels:", _roles(setup))
            assert time.monotonic() < deadline, (
                f"pub/sub still on port {port}, the Sentinels name {master} (first {old}, "
                f"then {new}; servers {[s.port for s in setup.servers]})")
            probe = await durable.enqueue(asyncjobs.task_ref("add"), 3, 3)
            assert await probe.result(timeout=10) == 6

        lost_durable = await _complete(durable, [j for _, j in waiting.acked], 40)
        after = [j for t, j in plain.acked if t > settled_at]
        lost_after = await _complete(fast, after, 20)
        lost_plain = await _complete(fast, [j for _, j in plain.acked], 1)
        first_done = await _first_completion_after(fast, plain, switched_at)
        final = None  # the master the Sentinels name now (None while they disagree)
        for _ in range(50):
            final = await asyncio.to_thread(setup.master_port)
            if final is not None:
                break
            await asyncio.sleep(0.1)
    print(f"\n{how}: master {old} -> {new} (now {final}) in "
          f"{switched_at - failed_over_at:.1f} s (old one demoted or dead after "
          f"{settled_at - failed_over_at:.1f} s); "
          f"WAIT producer {len(waiting.acked)} acked, {len(waiting.failed)} refused "
          f"({sorted(set(waiting.failed))}), {len(lost_durable)} lost; plain producer "
          f"{len(plain.acked)} acked, {len(plain.failed)} refused, {len(lost_plain)} lost; "
          f"the first job enqueued after the switch ended {first_done:.1f} s after it")
    assert worker.proc.poll() is None, worker.output[-3000:]  # the worker did not exit
    assert not lost_durable, (sorted(lost_durable)[:10], worker.output[-3000:],
                              log_of(setup.server(new)))
    if final == new:
        assert not lost_after, (sorted(lost_after)[:10], worker.output[-3000:])
    else:
        # The Sentinels failed over a second time (under load a promoted replica slow to
        # answer is itself replaced, see above): what `new` acknowledged without WAIT and
        # had not passed on may be gone, like any job a failover catches, so only the
        # WAIT-acknowledged jobs are certain here (asserted above).
        print(f"a second failover ({new} -> {final}): {len(lost_after)} jobs acknowledged "
              f"by {new} without WAIT lost; servers and Sentinels: {_roles(setup)}")
    if how == "sigkill":
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output[-3000:]


def _after(producer: Producer, moment: float) -> int:
    return sum(1 for t, _ in producer.acked if t > moment)


async def _first_completion_after(pool: asyncjobs.Pool, producer: Producer,
                                  moment: float) -> float:
    """Seconds from ``moment`` to the end of the first job acknowledged after it (and not
    lost: the old master may still have taken some)."""
    for t, job_id in producer.acked:
        if t > moment:
            try:
                info = await pool.job(job_id).info()
            except asyncjobs.JobNotFound:
                continue
            assert info.ended_at is not None
            return info.ended_at.timestamp() - (time.time() - (time.monotonic() - moment))
    return float("nan")
