"""docket (pydocket) adapter (runs inside benchmarks/.venvs/docket). See benchmarks/README.md."""

from __future__ import annotations

import importlib.metadata as md
import time

import _common as c
import _probe
from docket import Docket, Worker

NAME = "bench"


async def noop(i: int) -> None:
    await _probe.anoop(i)


async def sleeper(i: int, seconds: float) -> None:
    await _probe.asleeper(i, seconds)


tasks = [noop, sleeper]  # collection imported by the worker as "docket_bench:tasks"


def docket(args) -> Docket:
    d = Docket(name=NAME, url=args.redis_url)
    for t in tasks:
        d.register(t)
    return d


def info(args):
    return {
        "system": "docket",
        "version": md.version("pydocket"),
        "versions": {p: md.version(p) for p in ("pydocket", "redis")},
        "bulk": "Docket.add_many(chunk_size=1000)",
        "settings": "Worker.run(concurrency=C) (the CLI entry point; default concurrency 10, "
        "minimum_check_interval 100 ms, scheduling_resolution 250 ms), "
        "redelivery_timeout 5 min, execution_ttl 15 min",
        "default_concurrency": 10,
        "recovery": "redelivery_timeout=5 min (XAUTOCLAIM of a dead worker's messages)",
        "unsupported": {},
    }


async def enqueue_single(args):
    async with docket(args) as d:
        return await c.time_single(args.n, lambda i: d.add(noop)(i))


async def _bulk(d, calls, chunk):
    t0 = time.perf_counter()
    await d.add_many(calls, chunk_size=chunk)
    return time.perf_counter() - t0


async def enqueue_bulk(args):
    async with docket(args) as d:
        await d.add(noop)(-1)
        calls = [d.call(noop)(i) for i in range(args.n)]
        secs = await _bulk(d, calls, args.chunk)
        return {"n": args.n, "seconds": secs, "method": f"Docket.add_many(chunk_size={args.chunk})"}


async def prequeue(args):
    async with docket(args) as d:
        if args.job == "sleep":
            calls = [d.call(sleeper)(i, args.seconds) for i in range(args.n)]
        else:
            calls = [d.call(noop)(i) for i in range(args.n)]
        return {"n": args.n, "seconds": await _bulk(d, calls, args.chunk)}


async def enqueue_paced(args):
    async with docket(args) as d:
        return await c.paced(args.n, args.rate, lambda i: d.add(noop)(i))


async def enqueue_delayed(args):
    async with docket(args) as d:
        await d.add(noop)(-1)
        due = c.due_time(args.delay)
        calls = [d.call(noop, when=c.when_of(due, i, args.n, args.spread))(i)
                 for i in range(args.n)]
        await d.add_many(calls, chunk_size=args.chunk)
        return {"n": args.n, "due": due}


async def worker(args):
    await Worker.run(
        docket_name=NAME,
        url=args.redis_url,
        concurrency=args.concurrency,
        tasks=["docket_bench:tasks"],
    )
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
