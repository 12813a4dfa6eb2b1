"""asyncjobs adapter (runs in the harness's own Python, where the repo is installed
editable). See benchmarks/README.md for the contract."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import sys
import time

import _common as c
import _probe

import asyncjobs
from asyncjobs import Context

QUEUE = "bench"


@asyncjobs.task
async def noop(ctx: Context, i: int) -> None:
    await _probe.anoop(i)


@asyncjobs.task
async def sleeper(ctx: Context, i: int, seconds: float) -> None:
    await _probe.asleeper(i, seconds)


def pool(args):
    return asyncjobs.create_pool(args.redis_url, queue=QUEUE)


def info(args):
    return {
        "system": "asyncjobs",
        "version": md.version("asyncjobs-redis"),
        "versions": {
            p: md.version(p)
            for p in ("asyncjobs-redis", "redis", "hiredis", "msgspec", "uvloop", "anyio")
        },
        "bulk": "Pool.enqueue_many (script calls of 500 jobs, pipelined), chunks of 1000",
        "settings": "Worker(concurrency=C) (default 100) on uvloop, other defaults "
        "(job timeout 300 s, result kept 1 h, claim timeout 15 s); no log handler "
        "configured, like every peer here (the CLI logs 2 lines per job at INFO)",
        "default_concurrency": 100,
        "recovery": "claim timeout 15 s: live workers keep their entries fresh and XAUTOCLAIM "
        "a dead worker's entries idle past 10 s, scanning every 5 s",
        "processes": "asyncjobs worker --processes",
        "unsupported": {},
    }


async def enqueue_single(args):
    async with pool(args) as p:
        return await c.time_single(args.n, lambda i: p.enqueue(noop, i))


async def _bulk(p: asyncjobs.Pool, n: int, chunk: int, make) -> None:
    for start in range(0, n, chunk):
        await p.enqueue_many(make(i) for i in range(start, min(n, start + chunk)))


async def enqueue_bulk(args):
    async with pool(args) as p:
        await p.enqueue(noop, -1)
        t0 = time.perf_counter()
        await _bulk(p, args.n, args.chunk, lambda i: asyncjobs.call(noop, i))
        return {
            "n": args.n,
            "seconds": time.perf_counter() - t0,
            "method": f"Pool.enqueue_many, chunks of {args.chunk}",
        }


async def prequeue(args):
    async with pool(args) as p:
        if args.job == "sleep":
            make = lambda i: asyncjobs.call(sleeper, i, args.seconds)  # noqa: E731
        else:
            make = lambda i: asyncjobs.call(noop, i)  # noqa: E731
        t0 = time.perf_counter()
        await _bulk(p, args.n, args.chunk, make)
        return {"n": args.n, "seconds": time.perf_counter() - t0}


async def enqueue_paced(args):
    async with pool(args) as p:
        return await c.paced(args.n, args.rate, lambda i: p.enqueue(noop, i))


async def enqueue_delayed(args):
    async with pool(args) as p:
        await p.enqueue(noop, -1)
        due = c.due_time(args.delay)
        if args.spread:
            def make(i):
                return asyncjobs.call(noop.options(at=c.when_of(due, i, args.n, args.spread)), i)
        else:
            at = noop.options(at=dt.datetime.fromtimestamp(due, tz=dt.UTC))

            def make(i):
                return asyncjobs.call(at, i)
        await _bulk(p, args.n, args.chunk, make)
        return {"n": args.n, "due": due}


bench_worker = asyncjobs.Worker([noop, sleeper], queues=[QUEUE])
"""What `asyncjobs worker asyncjobs_bench:bench_worker` runs (the multi-process mode)."""


def worker(args):
    if args.processes > 1:  # the CLI's supervisor, as a user runs it; it logs failures only
        os.execv(sys.executable, [
            sys.executable, "-m", "asyncjobs", "worker", "asyncjobs_bench:bench_worker",
            "--redis-url", args.redis_url, "--concurrency", str(args.concurrency),
            "--processes", str(args.processes), "--job-logs", "failures"])
    w = asyncjobs.Worker([noop, sleeper], queues=[QUEUE], concurrency=args.concurrency)
    w.run_sync(redis_url=args.redis_url)
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
