"""Redis Cluster: the URL, queues spread over the masters, the CLI, and a master killed under
a running fleet (a cluster with a replica per master, started by the test itself).

The end-to-end, scheduling and reliability suites run on the session's 3-master cluster too
(``on_cluster``, see ``conftest``); this file holds what is particular to a cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

import asyncjobs
from asyncjobs._redis import cluster
from asyncjobs._redis.cluster import parse_cluster_url, slot_groups
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.keys import GlobalKeys, Keys

from .cluster import ClusterSetup, key_slot, migrate_slot
from .conftest import Backend, need_redis_server, running
from .procs import ROOT, WorkerProcess, run_cli
from .test_readme import fenced_blocks, user_env


def test_a_cluster_url_names_its_nodes_and_options() -> None:
    nodes, options = parse_cluster_url(
        "redis+cluster://bob:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002/0?socket_timeout=3")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert (options["username"], options["password"]) == ("bob", "s@cret")
    assert options["socket_timeout"] == 3.0
    assert "ssl" not in options
    _, tls = parse_cluster_url("rediss+cluster://h:7000?ssl_cert_reqs=none")
    assert tls["ssl"] is True and tls["ssl_cert_reqs"] == "none"


@pytest.mark.parametrize(("url", "says"), [
    ("redis+cluster://h:7000/3", "one database, 0"),
    ("redis+cluster://h:0", "bad port"),
    ("redis+cluster://h:70000", "bad port"),
    ("redis+cluster://:7000", "no host"),
    ("redis+cluster://[::1:7000", "bad cluster node address"),
])
def test_a_bad_cluster_url_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        url_factory(url)
    assert "\n" not in str(caught.value)


@pytest.mark.asyncio
async def test_a_cluster_out_of_reach_is_an_outage_whichever_call_finds_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: redis-py 8.2 raises ``RedisClusterUnreachableError`` (a
    ``RedisClusterException``, not a ``ConnectionError``) from a command or a pipeline
    once no node answers: the pool and the CLI showed it as an unknown error with its
    traceback instead of Redis being unavailable, and a worker took it for a bug.
    Expected: the first slot map, a command and a pipeline each raise a
    ``ConnectionError`` for it (an outage, retried); a bare ``RedisClusterException`` from
    a command (keys of several slots: a bug, not an outage) is left alone."""
    unreachable = redis.exceptions.RedisClusterUnreachableError
    raised: list[Exception] = []

    async def fails(*args: object, **kwargs: object) -> None:
        raise raised[-1]

    monkeypatch.setattr(RedisCluster, "initialize", fails)
    monkeypatch.setattr(RedisCluster, "execute_command", fails)
    monkeypatch.setattr(ClusterPipeline, "execute", fails)
    client: Any = cluster.make_cluster([("127.0.0.1", 1)], {}, object, object)
    calls = {
        "the first slot map": lambda: client.initialize(),
        "a command": lambda: client.execute_command("GET", "k"),
        "a pipeline": lambda: client.pipeline(transaction=False).get("k").execute(),
    }
    for what, call in calls.items():
        raised.append(unreachable(f"Redis Cluster cannot be connected ({what})"))
        with pytest.raises(redis.exceptions.ConnectionError, match=rf"\({what}\)"):
            await call()
    raised.append(redis.exceptions.RedisClusterException("Keys in request don't hash"))
    with pytest.raises(redis.exceptions.RedisClusterException) as bare:
        await client.execute_command("MGET", "a", "b")
    assert type(bare.value) is redis.exceptions.RedisClusterException


def test_a_queue_keys_share_a_slot_and_the_registry_keys_share_another() -> None:
    keys = Keys("app", "emails")
    high = Keys("app", "emails@high")
    queue_keys = dict.fromkeys((keys.stream, keys.delayed, keys.job("x"), keys.leader,
                                high.stream, high.concurrency("n"), keys.wake_channel), "")
    assert len(slot_groups(queue_keys)) == 1
    registry = GlobalKeys("app")
    assert len(slot_groups({registry.workers: "", registry.worker("vm:1:ab"): ""})) == 1


def test_queues_spread_over_the_masters(redis_cluster: ClusterSetup) -> None:
    names = [f"q{i}" for i in range(12)]
    masters = {redis_cluster.master_of(Keys("app", n).stream).port for n in names}
    assert len(masters) == 3


@pytest.mark.asyncio
async def test_wait_replicas_is_refused_on_a_cluster(redis_cluster: ClusterSetup) -> None:
    with pytest.raises(asyncjobs.ConfigurationError, match="not supported on a Redis Cluster"):
        await asyncjobs.create_pool(redis_cluster.url, wait_replicas=1)


@pytest.mark.slow
def test_the_cli_works_on_a_cluster(redis_cluster: ClusterSetup) -> None:
    prefix = "clicluster"

    def cli(*args: str) -> tuple[int, str, str]:
        done = run_cli(*args, "--redis-url", redis_cluster.url, "--prefix", prefix)
        return done.returncode, done.stdout, done.stderr

    code, out, err = cli("enqueue", "add", "--arg", "40", "--kwarg", "b=2", "--json")
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    code, out, err = cli("info", "--json")
    assert code == 0, err
    [queue] = json.loads(out)["queues"]
    assert (queue["queue"], queue["waiting"]) == ("default", 1)
    # the README's command, on this cluster and this app, in burst mode
    [line] = [line for block in fenced_blocks("bash") for line in block.source.splitlines()
              if line.startswith("ASYNCJOBS_REDIS_URL='redis+cluster://")]
    url = line.split("'")[1]
    command = line.replace(url, redis_cluster.url).replace(
        "app.jobs:worker", "tests.apps.basic:worker --burst")
    env = {**user_env(redis_cluster.url), "TEST_PREFIX": prefix}
    env.pop("ASYNCJOBS_REDIS_URL")  # the command sets it
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "redis+cluster://" in done.stderr + done.stdout  # the banner names it
    code, out, err = cli("job", job_id, "--json")
    assert code == 0, err
    assert json.loads(out)["result"] == 42
    code, out, err = cli("jobs", "--state", "complete", "--json")
    assert code == 0, err
    assert [j["job_id"] for j in json.loads(out)["jobs"]] == [job_id]
    code, out, err = cli("dlq", "list", "--json")
    assert code == 0 and json.loads(out) == [], err


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_queue_slot_moved_to_another_master_mid_run(
        redis_cluster: ClusterSetup, caplog: pytest.LogCaptureFixture) -> None:
    """Resharding under load: the slot of a busy queue moves to another master, key by key
    (so producer and worker meet ASK and TRYAGAIN), while a producer enqueues and a worker
    runs jobs. Every job runs and completes; nothing in the worker breaks."""
    url = redis_cluster.url
    backend = Backend("cluster", url, url_factory(url), f"reshard{secrets.token_hex(3)}")
    ran: list[int] = []

    @asyncjobs.task(name="step")
    async def step(ctx: asyncjobs.Context, i: int) -> None:
        ran.append(i)
        await asyncio.sleep(0.005)

    async with backend.pool(retry_for=20.0) as pool:
        key = pool.keys("default").stream
        source = redis_cluster.master_of(key)
        target = next(n for n in redis_cluster.nodes if n is not source)
        slot = key_slot(source.port, key)
        jobs = await pool.enqueue_many([asyncjobs.call(step, i) for i in range(300)])
        async with running(backend, backend.worker([step], concurrency=10)):
            moving = asyncio.ensure_future(asyncio.to_thread(
                migrate_slot, redis_cluster, slot, source, target, batch=20))
            n = 300
            while not moving.done():
                jobs.append(await pool.enqueue(step, n))
                n += 1
                await asyncio.sleep(0.01)
            assert await moving > 0
            for job in jobs:
                assert await job.result(timeout=30) is None
        assert redis_cluster.master_of(key) is target
    assert sorted(set(ran)) == list(range(n))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- a master killed under a running fleet ---------------------------------------------------


@pytest.fixture(scope="module")
def replicated() -> Iterator[ClusterSetup]:
    """A cluster of its own: 3 masters with a replica each (the test kills a master)."""
    need_redis_server()
    with ClusterSetup(masters=3, replicas=1) as cluster:
        yield cluster


QUEUES = ("alpha", "beta", "gamma")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_master_killed_mid_run_loses_nothing_acknowledged(
        replicated: ClusterSetup) -> None:
    """Jobs enqueued on three queues (one per master) while two workers run them; the
    master of one queue is SIGKILLed with jobs waiting and in flight. Once a replica has
    taken over: every job whose enqueue returned before the kill (all replicated by then:
    the test waits for the replicas' offsets before the kill) ran and completed; enqueues
    during the failover either returned (and those jobs ran too) or raised
    ``RedisUnavailable``, none hung; the workers carried on by themselves."""
    prefix = "failover"
    url = replicated.url
    workers = [WorkerProcess("tests.apps.basic:worker", url, prefix,
                             *(a for q in QUEUES for a in ("--queue", q)), "--concurrency", "20",
                             env={"TEST_SHORT_S": "0.02"}) for _ in range(2)]
    try:
        for worker in workers:
            worker.wait_for("ready")
        async with asyncjobs.create_pool(url, prefix=prefix, retry_for=20.0) as pool:
            # The task INCRs through the worker's client: a key on the killed master fails
            # until the failover ends, so each job gets tries enough to outlast a slow one
            # (3 tries, jittered 1 s and 2 s apart, all failed once in CI).
            short = asyncjobs.Task(_short_placeholder, name="short")
            before = [await pool.enqueue(short.options(queue=q, max_tries=12), i)
                      for i in range(150) for q in QUEUES]
            victim = replicated.master_of(pool.keys("beta").stream)
            _wait_replicated(replicated)
            victim.stop(kill=True)
            during: list[asyncjobs.Job[int]] = []
            refused = 0
            began = time.monotonic()
            while time.monotonic() - began < 8.0:  # through the failover (~1-3 s)
                for q in QUEUES:
                    try:
                        during.append(await pool.enqueue(short.options(queue=q, max_tries=12), 0))
                    except asyncjobs.RedisUnavailable:
                        refused += 1
                await asyncio.sleep(0.05)
            replicated.wait_ok(30.0, alive=[n.port for n in replicated.nodes
                                             if n.process is not None])
            assert replicated.master_of(pool.keys("beta").stream) is not victim
            for job in [*before, *during]:
                assert await job.result(timeout=60) is not None
            runs = [int(await pool.client.get(f"{prefix}:runs:{job.id}") or 0)
                    for job in before]
            assert min(runs) >= 1
        assert during, "no enqueue returned during the 8 s of the failover"
        for worker in workers:
            assert worker.proc.poll() is None, worker.output  # they carried on
            assert "Traceback" not in worker.output, worker.output
    finally:
        for worker in workers:
            worker.close()
        victim_node = [n for n in replicated.nodes if n.process is None]
        for node in victim_node:  # bring it back (as a replica) for the module's sake
            node.start()


async def _short_placeholder(ctx: asyncjobs.Context, i: int) -> int:
    raise AssertionError("the producer never runs jobs")  # pragma: no cover


def _wait_replicated(cluster: ClusterSetup, timeout_s: float = 10.0) -> None:
    """Wait until every replica has acknowledged what its master had written when this was
    called. Running workers keep writing (heartbeats, leases, jobs), so the master's offset
    moves on while the replicas' acknowledgements (sent once a second) trail it: the wait is
    for the offsets read at the start, not for a moment when nothing is behind."""
    from .sentinel import info

    targets: dict[int, int] = {}
    for node in cluster.nodes:
        replication = info(node.port, "replication")
        if replication.get("role") == "master":
            targets[node.port] = int(replication.get("master_repl_offset", "0"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_replicas_acked(info(port, "replication"), offset)
               for port, offset in targets.items()):
            return
        time.sleep(0.05)
    raise TimeoutError("replicas did not catch up")


def _replicas_acked(replication: dict[str, str], offset: int) -> bool:
    """Whether every replica a master lists (and at least one) acknowledged ``offset``."""
    acked = [int(value.split("offset=")[1].split(",")[0])
             for key, value in replication.items()
             if key.startswith("slave") and "offset=" in value]
    return bool(acked) and min(acked) >= offset
