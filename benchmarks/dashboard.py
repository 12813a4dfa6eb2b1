"""How fast the dashboard answers on a big queue: 1,000,000 waiting jobs and 100,000 dead
letters in a fresh redis-server, then the queue page and the dead-letter page, each
requested 20 times in-process (ASGI) and 20 times over HTTP (uvicorn on a free port);
medians and the slowest, in ms, printed as JSON (and to --out).

    .venv/bin/python benchmarks/dashboard.py [--waiting 1000000] [--dead 100000] [--runs 20]

The jobs are written the way enqueue.lua and settle.lua lay them out (a record hash per job,
a stream entry holding its id, dead letters with their error history), pipelined in
batches, straight into Redis: filling takes a minute or so, timing a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncjobs  # noqa: E402
from asyncjobs._codec import encode_errors, encode_spec  # noqa: E402
from asyncjobs._model import ErrorInfo, JobSpec  # noqa: E402
from asyncjobs._redis.connection import url_factory  # noqa: E402
from asyncjobs._redis.embedded import RedisServer, free_port  # noqa: E402
from asyncjobs._redis.keys import GROUP, Keys  # noqa: E402
from asyncjobs.dashboard import create_app  # noqa: E402

BATCH = 10_000
TRACEBACK = "Traceback (most recent call last):\n" + "  File \"app/jobs.py\", line 12\n" * 20


async def fill(url: str, waiting: int, dead: int) -> None:
    """``waiting`` queued jobs and ``dead`` dead-lettered ones on queue 'default'."""
    client = url_factory(url)(max_connections=4, socket_timeout=120)
    keys = Keys("asyncjobs", "default")
    spec = encode_spec(JobSpec(task="bench.send", args=[1, "user@example.com"]))
    now_ms = int(time.time() * 1000)
    await client.sadd("asyncjobs:queues", "default")
    await client.xgroup_create(keys.stream, GROUP, id="0", mkstream=True)
    for start in range(0, waiting, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + BATCH, waiting)):
            job_id = f"w{i:07d}"
            entry = f"{now_ms - waiting + i}-0"
            pipe.xadd(keys.stream, {"i": job_id}, id=entry)
            pipe.hset(keys.job(job_id), mapping={"j": spec, "a": 0, "s": "queued", "e": entry})
        await pipe.execute()
    for start in range(0, dead, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + BATCH, dead)):
            job_id = f"d{i:07d}"
            entry = f"{now_ms - dead + i}-0"
            reason = "raised ValueError on try 3 of 3"
            history = encode_errors([ErrorInfo("builtins.ValueError", f"bad input {i}",
                                               TRACEBACK, n, now_ms) for n in (1, 2, 3)])
            pipe.xadd(keys.dead, {"i": job_id, "r": reason, "t": now_ms}, id=entry)
            pipe.hset(keys.job(job_id), mapping={
                "j": spec, "a": 3, "s": "failed", "q": now_ms, "st": now_ms, "et": now_ms,
                "w": "bench:1:abc", "h": history, "dl": reason, "de": entry})
        await pipe.execute()
    await client.aclose()


async def time_asgi(app: Any, path: str, runs: int) -> list[float]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://bench") as http:
        return [await _timed(http, path) for _ in range(runs + 1)][1:]  # the first warms up


async def time_http(base: str, path: str, runs: int) -> list[float]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        return [await _timed(http, path) for _ in range(runs + 1)][1:]


async def _timed(http: httpx.AsyncClient, path: str) -> float:
    started = time.perf_counter()
    answer = await http.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
    return elapsed


def serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples), 1),
            "max_ms": round(max(samples), 1), "min_ms": round(min(samples), 1)}


PAGES = {"queue_page": "/queue?queue=default", "dead_letter_page": "/dead?queue=default",
         "dead_letter_page_filtered": "/dead?queue=default&task=nomatch"}


async def measure(url: str, runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with asyncjobs.create_pool(url) as pool:
        stats = await pool.admin.queue_stats()
        results["queue"] = {"waiting": stats.waiting, "dead": stats.dead}
        app = create_app(pool)
        for name, path in PAGES.items():
            results[f"{name}_asgi"] = summary(await time_asgi(app, path, runs))
    base, server, thread = serve(create_app(redis_url=url))
    try:
        for name, path in PAGES.items():
            results[f"{name}_http"] = summary(await time_http(base, path, runs))
    finally:
        server.should_exit = True
        thread.join(10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    with RedisServer() as server:
        started = time.perf_counter()
        asyncio.run(fill(server.url, options.waiting, options.dead))
        filled_s = time.perf_counter() - started
        results = asyncio.run(measure(server.url, options.runs))
    results.update(fill_s=round(filled_s, 1), runs=options.runs,
                   python=platform.python_version(), machine=platform.machine(),
                   note="the dead-letter page with a filter that matches nothing reads "
                        "1,000 letters (its scan bound) and shows 'load more'")
    text = json.dumps(results, indent=2)
    print(text)
    if options.out:
        options.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
