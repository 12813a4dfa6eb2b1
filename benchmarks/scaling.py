"""The scaling curve against one Redis: how processing grows with worker processes.

For each workload (no-op jobs, and jobs that await 10 ms of I/O) and each count of worker
processes P (default 1, 2, 4, 8): a fresh redis-server gets N jobs (untimed), then P burst
workers (concurrency 100 each, uvloop) start together and drain them. jobs/s = N / (the last
job's end - the first job's start), both read from the jobs' records (the Redis clock), so
process start-up is not counted. Also recorded: the Redis server's CPU (``used_cpu_sys`` +
``used_cpu_user``, read before the workers start and after they exit) divided by that span,
as a share of one core: near 100 %, Redis is the limit; well below it with every core busy,
the machine is. And the machine's core count. Medians of --runs.

    .venv/bin/python benchmarks/scaling.py [--processes 1,2,4,8] [--jobs 20000] [--runs 3]
                                           [--out benchmarks/results/scaling.json]

Redis Cluster (several masters) is not measured yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
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
from asyncjobs._redis.keys import Keys  # noqa: E402

PREFIX = "scaling"


@asyncjobs.task
async def noop(ctx: Context, i: int) -> None:
    return None


@asyncjobs.task
async def io_10ms(ctx: Context, i: int) -> None:
    await asyncio.sleep(0.01)


TASKS = {"noop": noop, "io_10ms": io_10ms}


async def child(url: str) -> None:
    await asyncjobs.Worker([noop, io_10ms], prefix=PREFIX, concurrency=100,
                           burst=True).run(redis_url=url)


async def enqueue(url: str, kind: str, n: int) -> list[str]:
    ids: list[str] = []
    async with asyncjobs.create_pool(url, prefix=PREFIX) as pool:
        for start in range(0, n, 5000):
            jobs = await pool.enqueue_many([asyncjobs.call(TASKS[kind], i)
                                            for i in range(start, min(n, start + 5000))])
            ids += [j.id for j in jobs]
    return ids


def redis_cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def one(kind: str, processes: int, n: int) -> dict[str, float]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        ids = asyncio.run(enqueue(server.url, kind, n))
        cpu_before = redis_cpu(client)
        began = time.monotonic()
        procs = [subprocess.Popen([sys.executable, __file__, "--child", server.url],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(processes)]
        for p in procs:
            if p.wait(timeout=600) != 0:
                raise SystemExit(f"a worker exited with {p.returncode}")
        wall = time.monotonic() - began
        cpu = redis_cpu(client) - cpu_before
        keys = Keys(PREFIX, "default")
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "s", "st", "et")
        rows = pipe.execute()
        client.close()
    if any(s != b"complete" for s, _, _ in rows):
        raise SystemExit(f"{kind} x{processes}: not every job completed")
    span_s = (max(int(e) for _, _, e in rows) - min(int(s) for _, s, _ in rows)) / 1000
    # Redis works for the jobs in the span (before it, the workers only connect)
    return {"jobs_per_s": n / span_s, "redis_cpu_share": cpu / span_s, "span_s": span_s,
            "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    cells: dict[str, list[dict[str, float]]] = {}
    for run in range(args.runs):
        for kind in TASKS:
            for p in counts if run % 2 == 0 else reversed(counts):
                got = one(kind, p, args.jobs)
                cells.setdefault(f"{kind} x{p}", []).append(got)
                print(f"run {run + 1} {kind} x{p}: {got['jobs_per_s']:,.0f} jobs/s, Redis CPU "
                      f"{got['redis_cpu_share']:.0%}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for name, got in cells.items():
        summary[name] = {k: round(statistics.median(g[k] for g in got), 3 if "share" in k else 1)
                         for k in got[0]}
    result = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "config": {"jobs": args.jobs, "runs": args.runs, "concurrency": 100},
              "median": summary}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        import uvloop
        uvloop.run(child(sys.argv[2]))
    else:
        main()
