"""``asyncjobs worker ... --processes N``: N worker processes under one supervisor that
restarts the ones that die, forwards SIGTERM so each drains, and gives up on a crash loop."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import asyncjobs
from asyncjobs._redis.embedded import RedisServer

from .procs import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.python_sensitive, pytest.mark.real_redis]


async def live_pids(url: str, prefix: str, count: int, timeout_s: float = 60.0) -> set[int]:
    """The pids of ``count`` registered workers, once they are. (Start-up is waited for as
    an event: 20 s was exceeded by two processes starting on a loaded machine.)"""
    async with asyncjobs.create_pool(url, prefix=prefix) as pool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            workers = await pool.admin.workers()
            if len(workers) >= count:
                return {w.pid for w in workers}
            await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} live workers after {timeout_s} s")


def test_processes_run_restart_and_stop_together(redis_server: RedisServer,
                                                  tmp_path: Path) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    # tests.apps.basic's worker beating every second: the killed process's registry record
    # (kept three heartbeats) is gone 3 s after its death, not 15 s, and replaced() waits
    # for that; nothing else here depends on the heartbeat.
    (tmp_path / "beating_app.py").write_text(
        "from tests.apps.basic import worker as basic\n"
        "worker = basic.configure(heartbeat_every_s=1.0)\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    sup = WorkerProcess("beating_app:worker", redis_server.url, prefix, "--processes",
                        "2", "--grace", "2", env={"PYTHONPATH": path})
    try:
        pids = asyncio.run(live_pids(redis_server.url, prefix, 2))
        assert len(pids) == 2 and sup.proc.pid not in pids

        async def work() -> list[int]:
            async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
                jobs = [await pool.enqueue("add", i, 1) for i in range(40)]
                return [await j.result(timeout=20) for j in jobs]

        assert asyncio.run(work()) == [i + 1 for i in range(40)]
        assert sup.output.count("asyncjobs.worker.banner: asyncjobs ") == 1  # one banner
        # Kill the second process (the first one's replacement would print the banner).
        victim = int(re.search(r"worker process 1 started \(pid (\d+)\)", sup.output)[1])
        os.kill(victim, signal.SIGKILL)
        sup.wait_for("worker process 1 died (exit -9); restarting it in 1 s")

        async def replaced() -> set[int]:  # a 1 s restart delay, then a start-up
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                now = await live_pids(redis_server.url, prefix, 2)
                if victim not in now and len(now - pids) == 1:
                    return now
                await asyncio.sleep(0.2)
            raise AssertionError("the killed process was not replaced")

        asyncio.run(replaced())
        assert sup.output.count("asyncjobs.worker.banner: asyncjobs ") == 1
        began = time.monotonic()
        sup.signal(signal.SIGTERM)
        assert sup.wait(10) == 0
        assert time.monotonic() - began < 2 + 5
        assert sup.output.count("stopped") >= 2
    finally:
        sup.close()


def test_no_worker_outlives_a_killed_supervisor(redis_server: RedisServer) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    sup = WorkerProcess("tests.apps.basic:worker", redis_server.url, prefix, "--processes",
                        "2", "--grace", "1")
    try:
        pids = asyncio.run(live_pids(redis_server.url, prefix, 2))
        sup.kill()  # SIGKILL: no chance to forward anything
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "a worker process was orphaned"
    finally:
        sup.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting to be reaped is gone
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_crash_loop_stops_the_supervisor(redis_server: RedisServer) -> None:
    """Processes that die once ready (each job here kills its process), again and again:
    the supervisor restarts them until the crash limit, then gives up with exit 1. (Ones
    that die before any was ever ready end the supervisor at once, as one process would:
    tests/test_supervisor_hostile.py.)"""
    prefix = f"t{secrets.token_hex(4)}"

    async def enqueue() -> None:
        async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
            for _ in range(30):
                await pool.enqueue("kill_worker")

    asyncio.run(enqueue())
    sup = WorkerProcess("tests.apps.basic:worker", redis_server.url, prefix, "--processes",
                        "4", env={"TEST_CONCURRENCY": "1"})
    try:
        assert sup.wait(90) == 1
        assert "worker processes keep crashing" in sup.output
        assert sup.output.count("died (exit -9); restarting it") >= 9
    finally:
        sup.close()


def test_burst_mode_ends_when_every_process_has_drained(redis_server: RedisServer) -> None:
    prefix = f"t{secrets.token_hex(4)}"

    async def enqueue() -> list[str]:
        async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
            return [(await pool.enqueue("add", i, 1)).id for i in range(30)]

    ids = asyncio.run(enqueue())
    sup = WorkerProcess("tests.apps.basic:worker", redis_server.url, prefix, "--processes",
                        "2", "--burst")
    try:
        assert sup.wait(60) == 0

        async def states() -> set[str]:
            async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
                return {(await pool.job(i).status()).value for i in ids}

        assert asyncio.run(states()) == {"complete"}
    finally:
        sup.close()


def test_a_bad_processes_value_is_one_line() -> None:
    from .procs import run_cli

    done = run_cli("worker", "tests.apps.basic:worker", "--processes", "zero")
    assert done.returncode == 2
    assert done.stderr.startswith("asyncjobs: error:") and "--processes" in done.stderr


@pytest.mark.parametrize("value", ["0", "-1", "1025", "100000"])
def test_a_processes_count_out_of_range_is_one_line(value: str) -> None:
    """``--processes 100000`` started that many worker processes (each ~40 MiB and its own
    connections): refused, as 0 is, before anything starts."""
    from .procs import run_cli

    done = run_cli("worker", "tests.apps.basic:worker", "--processes", value)
    assert done.returncode == 2
    assert done.stderr.startswith("asyncjobs: error:")
    assert "1 to 1024" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_auto_is_one_process_per_cpu_this_process_may_use() -> None:
    """``auto`` counts the CPUs of the process's affinity (a container's cpuset,
    ``taskset``), not the host's."""
    program = ("import os; from asyncjobs._cli.supervisor import processes; "
               "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
               "print(processes('auto'), os.cpu_count())")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    auto, cpus = map(int, done.stdout.split())
    assert auto == 1 and cpus >= 1
