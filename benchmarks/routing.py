"""What routing and limits cost: no-op jobs processed by one worker with one plain queue,
with three queues served in strict order and by weight (jobs spread over the queues and the
three priority levels), and with a rate limit and a concurrency limit (1,000, above the
worker's 100 slots) that are never exceeded. Each mode runs in a
fresh redis-server: N jobs are enqueued (untimed), then a burst worker (concurrency 100,
uvloop) drains them; jobs/s = N / time to drain, and Redis commands per job from
``INFO commandstats`` (every command, those run inside scripts included). Medians of
--runs, modes alternating; printed as JSON (and to --out).

    .venv/bin/python benchmarks/routing.py [--jobs 20000] [--runs 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncjobs  # noqa: E402
from asyncjobs import Context  # noqa: E402
from asyncjobs._redis.connection import url_factory  # noqa: E402
from asyncjobs._redis.embedded import RedisServer  # noqa: E402
from asyncjobs._worker.loop import loop_factory  # noqa: E402


@asyncjobs.task
async def noop(ctx: Context, i: int) -> None:
    return None


@asyncjobs.task(rate_limit="1000000/s")
async def limited(ctx: Context, i: int) -> None:
    return None


@asyncjobs.task(concurrency_limit=1000)
async def leased(ctx: Context, i: int) -> None:
    return None


QUEUES = ["critical", "default", "bulk"]
LEVELS = ["high", "normal", "low"]


def calls(mode: str, n: int) -> list[asyncjobs.Call[Any]]:
    if mode == "plain":
        return [asyncjobs.call(noop.options(queue="default"), i) for i in range(n)]
    if mode == "rate_limit":
        return [asyncjobs.call(limited.options(queue="default"), i) for i in range(n)]
    if mode == "concurrency_limit":
        return [asyncjobs.call(leased.options(queue="default"), i) for i in range(n)]
    # spread over 3 queues x 3 levels, interleaved
    return [asyncjobs.call(noop.options(queue=QUEUES[i % 3], priority=LEVELS[(i // 3) % 3]),
                           i)  # type: ignore[arg-type]
            for i in range(n)]


def worker_for(mode: str) -> asyncjobs.Worker:
    tasks = [noop, limited, leased]
    if mode == "strict":
        return asyncjobs.Worker(tasks, queues=QUEUES, burst=True)
    if mode == "weighted":
        return asyncjobs.Worker(tasks, queues={"critical": 6, "default": 3, "bulk": 1},
                                burst=True)
    return asyncjobs.Worker(tasks, queues=["default"], burst=True)


async def commands(url: str) -> int:
    client = url_factory(url)(max_connections=2, socket_timeout=30)
    try:
        stats = await client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items()
                   if k != "cmdstat_info" and isinstance(v, dict))
    finally:
        await client.aclose()


async def one(mode: str, n: int) -> dict[str, float]:
    with RedisServer() as server:
        async with asyncjobs.create_pool(server.url) as pool:
            for start in range(0, n, 5000):
                await pool.enqueue_many(calls(mode, n)[start:start + 5000])
        before = await commands(server.url)
        began = time.perf_counter()
        await worker_for(mode).run(redis_url=server.url)
        took = time.perf_counter() - began
        after = await commands(server.url)
    return {"jobs_per_s": n / took, "commands_per_job": (after - before) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)  # single runs swing by 20 % here
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    modes = ["plain", "strict", "weighted", "rate_limit", "concurrency_limit"]
    cells: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    factory = loop_factory(True) or asyncio.new_event_loop
    for run in range(args.runs):
        for mode in modes[run % len(modes):] + modes[:run % len(modes)]:
            loop = factory()
            try:
                cells[mode].append(loop.run_until_complete(one(mode, args.jobs)))
            finally:
                loop.close()
            print(f"run {run + 1} {mode:<10} {cells[mode][-1]}", file=sys.stderr)
    plain = statistics.median(c["jobs_per_s"] for c in cells["plain"])
    summary = {
        mode: {
            "jobs_per_s": round(statistics.median(c["jobs_per_s"] for c in cs)),
            "commands_per_job": round(statistics.median(c["commands_per_job"] for c in cs), 2),
            "vs_plain": round(statistics.median(c["jobs_per_s"] for c in cs) / plain, 3),
        }
        for mode, cs in cells.items()
    }
    result = {"machine": {"python": platform.python_version(), "cores": _cores()},
              "jobs": args.jobs, "runs": args.runs, "summary": summary, "cells": cells}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
