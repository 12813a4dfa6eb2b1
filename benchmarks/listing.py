"""What a page of ``pool.admin.jobs(state, ...)`` (and ``asyncjobs jobs``) costs on a big
queue: 1,000,000 waiting jobs, 1,000 held by a worker, 100,000 delayed, 100,000 dead
letters and 20,000 ended jobs (complete and failed) in a fresh redis-server; then the first
and the second page (limit 50) of every state in both orders, and a task filter that
matches nothing, each read 20 times in-process. Medians and the slowest in ms, and the
Redis commands each page sent (``total_commands_processed``), printed as JSON (and to --out).

    .venv/bin/python benchmarks/listing.py [--waiting 1000000] [--runs 20] [--out FILE]

The data is written the way the Lua scripts lay it out (see benchmarks/dashboard.py), in
pipelined batches straight into Redis.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from dashboard import BATCH, fill  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs._codec import encode_spec  # noqa: E402
from asyncjobs._model import JobSpec  # noqa: E402
from asyncjobs._redis.connection import url_factory  # noqa: E402
from asyncjobs._redis.embedded import RedisServer  # noqa: E402
from asyncjobs._redis.keys import ENDED_KEEP, GROUP, Keys  # noqa: E402

WORKER = "bench:1:abc"


async def fill_more(url: str, running: int, delayed: int, ended: int) -> None:
    """On top of ``fill``: ``running`` jobs delivered to a worker, ``delayed`` jobs in the
    delayed set, ``ended`` jobs settled (every fifth failed), noted in the ended index as
    settle.lua notes them (one entry per job, the stream capped near ENDED_KEEP)."""
    client = url_factory(url)(max_connections=4, socket_timeout=120)
    keys = Keys("asyncjobs", "default")
    spec = encode_spec(JobSpec(task="bench.send", args=[1, "user@example.com"]))
    now_ms = int(time.time() * 1000)
    delivered = await client.xreadgroup(GROUP, WORKER, {keys.stream: ">"}, count=running)
    pipe = client.pipeline(transaction=False)
    for _, entries in delivered:
        for _, fields in entries:
            job_id = fields[b"i"].decode()
            pipe.hset(keys.job(job_id), mapping={"s": "running", "a": 1, "st": now_ms,
                                                 "w": WORKER})
    await pipe.execute()
    for start in range(0, delayed, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + BATCH, delayed)):
            job_id = f"s{i:07d}"
            pipe.zadd(keys.delayed, {job_id: now_ms + 60_000 + i})
            pipe.hset(keys.job(job_id), mapping={"j": spec, "a": 0, "s": "scheduled"})
        await pipe.execute()
    for start in range(0, ended, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + BATCH, ended)):
            job_id, at = f"e{i:07d}", now_ms - ended + i
            state = "failed" if i % 5 == 0 else "complete"
            pipe.hset(keys.job(job_id), mapping={"j": spec, "a": 1, "s": state, "st": at - 5,
                                                 "et": at, "w": WORKER, "r": b"\x01"})
            pipe.xadd(keys.ended, {job_id: at}, maxlen=ENDED_KEEP, approximate=True)
        await pipe.execute()
    await client.aclose()


def summary(samples: list[float], commands: int) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples), 2),
            "max_ms": round(max(samples), 2), "redis_commands": commands}


async def commands_sent(client: Any) -> int:
    info = await client.info("stats")
    return int(info["total_commands_processed"])


async def page_cost(pool: asyncjobs.Pool, runs: int, state: str, **options: Any
                    ) -> dict[str, Any]:
    """Time the first page and the page after it (by its cursor)."""
    probe = pool.client
    first = await pool.admin.jobs(state, **options)
    out: dict[str, Any] = {"rows": len(first.items), "scanned": first.scanned}
    for name, cursor in (("first", None), ("second", first.cursor)):
        if name == "second" and cursor is None:
            continue
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            await pool.admin.jobs(state, cursor=cursor, **options)
            samples.append((time.perf_counter() - started) * 1000)
        before = await commands_sent(probe)
        await pool.admin.jobs(state, cursor=cursor, **options)
        sent = await commands_sent(probe) - before - 1  # INFO itself
        out[name] = summary(samples, sent)
    return out


async def measure(url: str, runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with asyncjobs.create_pool(url) as pool:
        stats = await pool.admin.queue_stats()
        results["queue"] = {"waiting": stats.waiting, "running": stats.in_flight,
                            "delayed": stats.delayed, "dead": stats.dead,
                            "ended_index": await pool.client.xlen(Keys("asyncjobs",
                                                                       "default").ended)}
        for state in ("queued", "running", "scheduled", "dead", "complete", "failed"):
            for order in ("oldest", "newest"):
                results[f"{state}_{order}"] = await page_cost(pool, runs, state, order=order,
                                                              limit=50)
        results["queued_task_filter_nomatch"] = await page_cost(
            pool, runs, "queued", task="nomatch", limit=50)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    with RedisServer() as server:
        started = time.perf_counter()
        asyncio.run(fill(server.url, options.waiting, options.waiting // 10))
        asyncio.run(fill_more(server.url, 1000, options.waiting // 10, 20_000))
        filled_s = time.perf_counter() - started
        results = asyncio.run(measure(server.url, options.runs))
    results.update(fill_s=round(filled_s, 1), runs=options.runs, limit=50,
                   python=platform.python_version(), machine=platform.machine(),
                   note="complete/failed read the ended index (the latest ~2,000 ended "
                        "jobs); a task filter reads at most scan=1,000 entries per call")
    text = json.dumps(results, indent=2)
    print(text)
    if options.out:
        options.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
