"""``asyncjobs worker`` parses its options with typer, then execs into a process that runs
the worker without the parser: same pid (signals and supervisors see one process), no
typer/click/rich/pydantic in memory, the hand-over variable gone from the environment, and
garbage in that variable one line, never a traceback.

What that process imports is pinned too (``WORKER_MODULES``, ``WORKER_PACKAGES``): a module
new to the worker path is resident in every idle worker, so it fails here until it is either
imported where it is used or added on purpose. ``benchmarks/worker_rss.py`` measures what the
worker holds; no memory figure is asserted here."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import asyncjobs
from asyncjobs._cli.worker_run import OPTIONS_ENV
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._worker.config import WorkerConfig
from asyncjobs._worker.loop import YOUNG_MOST, YOUNG_PER_SLOT, YOUNG_THRESHOLD, young_threshold

from .apps.lean import inspect_process
from .conftest import Backend, running
from .procs import ROOT, WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.real_redis]

DEFAULT_YOUNG = young_threshold(WorkerConfig().concurrency)
"""The young-generation threshold of a worker with the default concurrency (100 slots)."""


async def inspect(url: str, prefix: str) -> dict[str, object]:
    async with asyncjobs.create_pool(url, prefix=prefix) as pool:
        job = await pool.enqueue("inspect_process")
        result: dict[str, object] = await job.result(timeout=30)
        return result


WORKER_MODULES = frozenset({
    "asyncjobs", "asyncjobs.__main__", "asyncjobs._cli", "asyncjobs._cli.entry",
    "asyncjobs._cli.log_output", "asyncjobs._cli.log_sink",
    "asyncjobs._cli.logs",
    "asyncjobs._cli.supervisor",
    "asyncjobs._cli.target", "asyncjobs._cli.worker_run", "asyncjobs._codec",
    "asyncjobs._context", "asyncjobs._durations", "asyncjobs._events",
    "asyncjobs._exit_signals", "asyncjobs._limits",
    "asyncjobs._middleware", "asyncjobs._model", "asyncjobs._options", "asyncjobs._producer",
    "asyncjobs._producer.cuts", "asyncjobs._producer.handle", "asyncjobs._producer.opening",
    "asyncjobs._producer.pool", "asyncjobs._producer.waiter",
    "asyncjobs._redis", "asyncjobs._redis.access", "asyncjobs._redis.addresses",
    "asyncjobs._redis.cluster",
    "asyncjobs._redis.connection", "asyncjobs._redis.pubsub", "asyncjobs._redis.sentinel",
    "asyncjobs._redis.transport",
    "asyncjobs._redis.health",
    "asyncjobs._redis.keys", "asyncjobs._redis.kept", "asyncjobs._redis.replication",
    "asyncjobs._redis.prelude", "asyncjobs._redis.refusals", "asyncjobs._redis.scripts",
    "asyncjobs._redis.url_options",
    "asyncjobs._redis.store", "asyncjobs._redis.values", "asyncjobs._retry",
    "asyncjobs._routing", "asyncjobs._scheduling",
    "asyncjobs._scheduling.cron", "asyncjobs._scheduling.declare", "asyncjobs._scheduling.leader",
    "asyncjobs._scheduling.repair", "asyncjobs._scheduling.scheduler",
    "asyncjobs._signature", "asyncjobs._task",
    "asyncjobs._text", "asyncjobs._version", "asyncjobs._worker", "asyncjobs._worker.admission",
    "asyncjobs._worker.attempt", "asyncjobs._worker.attempt_path", "asyncjobs._worker.config",
    "asyncjobs._worker.deadlines", "asyncjobs._worker.executor", "asyncjobs._worker.fetcher",
    "asyncjobs._worker.late", "asyncjobs._worker.limiter", "asyncjobs._worker.loop",
    "asyncjobs._worker.outcomes", "asyncjobs._worker.reader", "asyncjobs._worker.reclaimer",
    "asyncjobs._worker.runner",
    "asyncjobs._worker.runtime", "asyncjobs._worker.server_clock",
    "asyncjobs._worker.settler", "asyncjobs._worker.shutdown", "asyncjobs._worker.threads",
    "asyncjobs._worker.waiting",
    "asyncjobs._worker.upkeep", "asyncjobs._worker.watch", "asyncjobs._worker.watchdog",
    "asyncjobs._worker.worker", "asyncjobs._worker.serving", "asyncjobs._worker.startup",
    "asyncjobs._worker.lifespan", "asyncjobs._worker.stop_signals",
    "asyncjobs.exceptions",
})
"""Every asyncjobs module a running worker (no cron job, no metrics port) may have imported.
Not among them: the command line (``asyncjobs.cli``, ``_cli.render``, ``_cli.ops``...), the
producer's listings and admin (``_producer.admin``, ``.listing``, ``.insight``...), and the
optional parts (``asyncjobs.metrics``, ``.otel``, ``.dashboard``, ``.outbox``...)."""

WORKER_PACKAGES = frozenset({"asyncjobs", "anyio", "msgspec", "uvloop", "sniffio",
                             "typing_extensions", "cython_runtime", "tests", "__main__"})
"""The top-level packages outside the standard library a worker may import, besides those
that ``import redis.asyncio`` brings (redis-py 8 imports opentelemetry and cryptography when
they are installed: that is redis-py's cost, outside asyncjobs' control)."""


def redis_packages() -> set[str]:
    """The top-level packages a process that imports ``redis.asyncio`` holds, here."""
    done = subprocess.run([sys.executable, "-c", "import sys, redis.asyncio; print(*sys.modules)"],
                          capture_output=True, text=True, timeout=60, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


def assert_lean(modules: list[str]) -> None:
    own = {m for m in modules if m.split(".")[0] == "asyncjobs"}
    assert own <= WORKER_MODULES, f"new on the worker path: {sorted(own - WORKER_MODULES)}"
    packages = {m.split(".")[0] for m in modules} - sys.stdlib_module_names - redis_packages()
    extra = {p for p in packages - WORKER_PACKAGES  # Cython's runtime; sysconfig's data
             if not p.startswith(("_cython_", "_sysconfigdata"))}
    assert extra == set(), f"new packages on the worker path: {sorted(extra)}"
    # no cron job on this worker: zoneinfo and cronsim stay out
    assert {"zoneinfo", "cronsim"}.isdisjoint(modules)


SCRIPT = str(Path(sys.executable).parent / "asyncjobs")  # the console script pip installs
WAYS = {"script": [SCRIPT], "module": [sys.executable, "-m", "asyncjobs"],
        "main": [sys.executable, "-c", "from asyncjobs.cli import main; main()"]}


@pytest.mark.parametrize("how", WAYS)
def test_the_worker_process_holds_no_parser(redis_server: RedisServer, how: str) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    env = {**os.environ, "TEST_PREFIX": prefix, "ASYNCJOBS_REDIS_URL": redis_server.url}
    proc = subprocess.Popen([*WAYS[how], "worker", "tests.apps.lean:worker",
                             "--grace", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        seen = asyncio.run(inspect(redis_server.url, prefix))
        assert seen["parsers"] == []
        assert seen["pid"] == proc.pid  # exec: the process the caller started runs the jobs
        assert seen["options_env"] is None
        assert seen["argv"][1:3] == ["worker", "tests.apps.lean:worker"]  # type: ignore[index]
        assert_lean(seen["modules"])  # type: ignore[arg-type]
        # the process is the worker's: what start-up made is out of the collector's scans
        assert seen["frozen"] > 10_000, seen["frozen"]  # type: ignore[operator]
        assert seen["young_threshold"] == DEFAULT_YOUNG  # young passes less often
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopped" in out


@pytest.mark.asyncio
async def test_an_embedded_worker_leaves_the_host_collector_alone(real: Backend) -> None:
    """``Worker.run`` in someone else's process freezes nothing (``gc.freeze`` is the
    process owner's call; ``run_sync`` and the CLI make it)."""
    before, threshold = gc.get_freeze_count(), gc.get_threshold()
    async with real.pool() as pool, running(real, real.worker([inspect_process])):
        job = await pool.enqueue(inspect_process)
        seen = await job.result(timeout=30)
    assert seen["frozen"] == before == gc.get_freeze_count()
    assert seen["young_threshold"] == threshold[0] and gc.get_threshold() == threshold


def test_options_reach_the_exec_worker(redis_server: RedisServer) -> None:
    """Every option survives the hand-over: the banner shows them."""
    prefix = f"t{secrets.token_hex(4)}"
    worker = WorkerProcess("tests.apps.lean:worker", redis_server.url, prefix, "-c", "7",
                           "-q", "alpha", "-q", "beta", "--grace", "3", "--prefix", prefix,
                           "--log-format", "json", "--burst")
    try:
        assert worker.wait(30) == 0, worker.output
        messages = [json.loads(line)["message"] for line in worker.output.splitlines()]
        assert f"prefix {prefix}" in messages[1]
        assert messages[2] == ("queues  alpha > beta (strict order): concurrency 7, "
                               "job timeout 300 s, claim timeout 15 s, grace 3 s, burst")
    finally:
        worker.close()


@pytest.mark.parametrize("value", ["garbage", "{}", '{"target": 1}', '{"target": "x", '
                                   '"argv": [], "changes": {"nope": 1}}', "[]"])
def test_garbage_in_the_hand_over_variable_is_one_line(value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "asyncjobs"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, OPTIONS_ENV: value})
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncjobs: error: "), done.stderr
    assert OPTIONS_ENV in lines[0]


def test_a_bad_target_after_the_hand_over_is_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "asyncjobs", "worker", "tests.apps.lean:nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "asyncjobs: error: module 'tests.apps.lean' has no attribute 'nope'"]


RUN_TWICE = r'''
import gc, json, os, sys
import asyncio

import asyncjobs

seen, young = [], []
gc.set_threshold(900, 11, 12)  # the script's own setting, which each run must restore


@asyncjobs.task
async def probe(ctx: asyncjobs.Context) -> int:
    seen.append(gc.get_freeze_count())
    young.append(gc.get_threshold())
    return 1


url, prefix = sys.argv[1], sys.argv[2]
after = []
for _ in range(2):  # a script that runs its worker twice (burst: until the queue is empty)
    async def enqueue() -> None:
        async with asyncjobs.create_pool(url, prefix=prefix) as pool:
            await pool.enqueue(probe)
    asyncio.run(enqueue())
    asyncjobs.Worker([probe], prefix=prefix, burst=True).run_sync(redis_url=url)
    after.append([gc.get_freeze_count(), gc.get_threshold()])
print(json.dumps({"during": seen, "young": young, "after": after}))
'''


def test_a_process_without_automatic_collection_keeps_it_off(
        redis_server: RedisServer) -> None:
    """``gc.set_threshold(0)`` is the process's choice: the run does not turn collection
    back on."""
    script = RUN_TWICE.replace("gc.set_threshold(900, 11, 12)", "gc.set_threshold(0, 11, 12)")
    done = subprocess.run([sys.executable, "-c", script, redis_server.url,
                           f"t{secrets.token_hex(4)}"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["young"] == [[0, 11, 12]] * 2, seen
    assert seen["after"] == [[0, [0, 11, 12]]] * 2, seen


def test_run_sync_freezes_for_the_run_only(redis_server: RedisServer) -> None:
    """Each ``run_sync`` freezes what its start-up made while it runs and unfreezes when
    it returns: a process that runs its worker again collects the old run's objects. The
    young-generation threshold is raised for the run and the process's own put back."""
    done = subprocess.run([sys.executable, "-c", RUN_TWICE, redis_server.url,
                           f"t{secrets.token_hex(4)}"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert len(seen["during"]) == 2 and min(seen["during"]) > 10_000, seen
    assert seen["young"] == [[DEFAULT_YOUNG, 11, 12]] * 2, seen
    assert seen["after"] == [[0, [900, 11, 12]]] * 2, seen


def test_the_young_threshold_grows_with_the_slots() -> None:
    """A worker's attempts in flight hold ~90 container objects each (one redis-py command
    awaited): the threshold stays over what a full worker holds, between its bounds."""
    assert DEFAULT_YOUNG == 100 * YOUNG_PER_SLOT > 100 * 90
    assert young_threshold(1) == young_threshold(YOUNG_THRESHOLD // YOUNG_PER_SLOT) \
        == YOUNG_THRESHOLD
    assert young_threshold(300) == 300 * YOUNG_PER_SLOT
    assert young_threshold(YOUNG_MOST // YOUNG_PER_SLOT) == young_threshold(10**6) \
        == YOUNG_MOST


def test_run_sync_sets_the_young_threshold_of_its_concurrency(
        redis_server: RedisServer) -> None:
    """The threshold ``run_sync`` sets follows the worker's own concurrency."""
    script = RUN_TWICE.replace("burst=True)", "burst=True, concurrency=300)")
    assert script != RUN_TWICE
    done = subprocess.run([sys.executable, "-c", script, redis_server.url,
                           f"t{secrets.token_hex(4)}"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["young"] == [[young_threshold(300), 11, 12]] * 2, seen
    assert seen["after"] == [[0, [900, 11, 12]]] * 2, seen
