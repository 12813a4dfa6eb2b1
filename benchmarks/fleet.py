"""What an idle fleet costs Redis, and what a fleet that comes and goes leaves behind.

N workers (default 200) of one queue, each with a cron job and concurrency 1, run idle
against a fresh redis-server: they are spread over P processes (default 10), each running
N/P ``Worker`` objects in one event loop (each worker has its own connections, consumer
name, heartbeat, lease attempts, reclaim scans and blocking wait, as a process of its own
would; only the interpreter is shared, which is what this saves on a 2-core machine).
After a warm-up, one window (default 60 s) measures:

- Redis commands per second, in all and per worker (``INFO commandstats``: commands run
  inside Lua scripts included), and the Redis server's CPU (``used_cpu_sys`` +
  ``used_cpu_user``) as a share of one core;
- connected clients, and Redis memory.

Then the fleet stops (SIGTERM: each worker drains, hands back, leaves the registry and its
consumer groups) and what is left is counted: consumers in the queue's groups, registry
entries, keys. A second fleet of N is SIGKILLed instead, and the leftovers counted again
once the dead workers' own keys have expired (three heartbeats): what is left of dead
workers goes later (consumers once idle for an hour, pruned by the scheduler's leader;
registry entries, one sorted-set member each, once their last heartbeat is a day old,
pruned by every heartbeat), so nothing grows with the number of workers that ever lived
beyond those that died in the last day.

    .venv/bin/python benchmarks/fleet.py [--workers 200] [--processes 10] [--window 60]
                                         [--out benchmarks/results/fleet.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs import Context  # noqa: E402
from asyncjobs._redis.embedded import RedisServer  # noqa: E402
from asyncjobs._redis.keys import GlobalKeys, Keys  # noqa: E402

PREFIX = "fleet"


@asyncjobs.task
async def noop(ctx: Context) -> None:
    return None


def make_worker() -> asyncjobs.Worker:
    return asyncjobs.Worker([noop], cron=[asyncjobs.cron(noop, every=3600)], prefix=PREFIX,
                            concurrency=1)


async def child(url: str, count: int) -> None:
    """Run ``count`` workers until SIGTERM (each drains and leaves)."""
    workers = [make_worker() for _ in range(count)]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: [w.stop() for w in workers])
    async with asyncio.TaskGroup() as tg:
        for w in workers:
            tg.create_task(w.run(redis_url=url))


def spawn(url: str, n: int, processes: int, log: Any) -> list[subprocess.Popen[bytes]]:
    per = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    return [subprocess.Popen([sys.executable, __file__, "--child", url, str(k)],
                             stdout=subprocess.DEVNULL, stderr=log)
            for k in per if k]


def registry_size(client: redis.Redis) -> int:
    return int(client.zcard(GlobalKeys(PREFIX).workers))


def consumers(client: redis.Redis) -> int:
    stream = Keys(PREFIX, "default").stream
    try:
        return sum(int(g["consumers"]) for g in client.xinfo_groups(stream))
    except redis.ResponseError:
        return 0


def wait_for_registry(client: redis.Redis, n: int, timeout_s: float) -> float:
    began = time.monotonic()
    while registry_size(client) < n:
        if time.monotonic() - began > timeout_s:
            raise SystemExit(f"only {registry_size(client)} of {n} workers registered")
        time.sleep(0.5)
    return time.monotonic() - began


def leftovers(client: redis.Redis) -> dict[str, int]:
    return {"group_consumers": consumers(client), "registry_entries": registry_size(client),
            "keys": int(client.dbsize())}


def measure(client: redis.Redis, window_s: float, n: int) -> dict[str, float]:
    def totals() -> tuple[int, float]:
        stats = client.info("commandstats")
        calls = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
        cpu = client.info("cpu")
        return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    calls0, cpu0 = totals()
    began = time.monotonic()
    time.sleep(window_s)
    calls1, cpu1 = totals()
    took = time.monotonic() - began
    info = client.info()
    rate = (calls1 - calls0) / took
    return {"commands_per_s": round(rate, 1), "commands_per_s_per_worker": round(rate / n, 2),
            "redis_cpu_share_of_a_core": round((cpu1 - cpu0) / took, 4),
            "connected_clients": int(info["connected_clients"]),
            "redis_used_memory_mib": round(int(info["used_memory"]) / 2**20, 1)}


def stop(procs: list[subprocess.Popen[bytes]], sig: int) -> None:
    for p in procs:
        p.send_signal(sig)
    for p in procs:
        try:
            p.wait(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    n = args.workers
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "asyncjobs-fleet.log"
    with RedisServer() as server, log_path.open("wb") as log:
        client = redis.Redis.from_url(server.url)
        procs = spawn(server.url, n, args.processes, log)
        started_s = wait_for_registry(client, n, 300)
        time.sleep(args.warmup)
        idle = measure(client, args.window, n)
        stop(procs, signal.SIGTERM)
        codes = [p.returncode for p in procs]
        after_stop = leftovers(client)
        procs = spawn(server.url, n, args.processes, log)
        wait_for_registry(client, after_stop["registry_entries"] + n, 300)
        time.sleep(5)
        stop(procs, signal.SIGKILL)
        time.sleep(16)  # their worker:<name> keys expire after three heartbeats (15 s)
        after_kill = leftovers(client)
        client.close()
    print(f"worker stderr: {log_path}", file=sys.stderr)
    result: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "config": {"workers": n, "processes": args.processes, "window_s": args.window,
                   "warmup_s": args.warmup},
        "fleet_up_s": round(started_s, 1), "idle": idle,
        "after_sigterm": {**after_stop, "exit_codes": sorted(set(codes))},
        "after_sigkill": after_kill,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        try:
            import uvloop
            uvloop.run(child(sys.argv[2], int(sys.argv[3])))
        except ImportError:
            asyncio.run(child(sys.argv[2], int(sys.argv[3])))
    else:
        main()
