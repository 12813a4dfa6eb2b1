"""SAQ adapter (runs inside benchmarks/.venvs/saq). See benchmarks/README.md for the contract."""

from __future__ import annotations

import importlib.metadata as md
import time

import _common as c
import _probe
from saq import Queue, Worker

QUEUE = "bench"


async def noop(ctx, *, i):
    await _probe.anoop(i)


async def sleeper(ctx, *, i, seconds):
    await _probe.asleeper(i, seconds)


def queue(args):
    return Queue.from_url(args.redis_url, name=QUEUE)


def info(args):
    return {
        "system": "saq",
        "version": md.version("saq"),
        "versions": {p: md.version(p) for p in ("saq", "redis", "hiredis")},
        "bulk": "no bulk API (Queue.map also waits for results): asyncio.gather in chunks of 1000",
        "settings": "RedisQueue (hiredis), Worker(concurrency=C) (default 10), other defaults "
        "(job timeout 10 s, retries 1, sweep every 60 s, schedule poll 1 s)",
        "default_concurrency": 10,
        "recovery": "sweep (every 60 s) aborts stuck jobs after their timeout (10 s); "
        "default retries=1 means a swept job is not re-run",
        "unsupported": {},
    }


async def enqueue_single(args):
    q = queue(args)
    return await c.time_single(args.n, lambda i: q.enqueue("noop", i=i))


async def enqueue_bulk(args):
    q = queue(args)
    return await c.time_gather(args.n, lambda i: q.enqueue("noop", i=i), args.chunk)


async def prequeue(args):
    q = queue(args)
    if args.job == "sleep":
        fn = lambda i: q.enqueue("sleeper", i=i, seconds=args.seconds)  # noqa: E731
    else:
        fn = lambda i: q.enqueue("noop", i=i)  # noqa: E731
    t0 = time.perf_counter()
    await c.gather_chunks(args.n, fn, args.chunk)
    return {"n": args.n, "seconds": time.perf_counter() - t0}


async def enqueue_paced(args):
    q = queue(args)
    return await c.paced(args.n, args.rate, lambda i: q.enqueue("noop", i=i))


async def enqueue_delayed(args):
    q = queue(args)
    await q.enqueue("noop", i=-1)
    due = c.due_time(args.delay)
    # SAQ schedules in whole seconds: a spread due time is truncated, as SAQ would.
    await c.gather_chunks(
        args.n,
        lambda i: q.enqueue("noop", i=i, scheduled=int(c.due_of(due, i, args.n, args.spread))),
        args.chunk,
    )
    return {"n": args.n, "due": due}


async def worker(args):
    w = Worker(queue(args), functions=[noop, sleeper], concurrency=args.concurrency)
    try:
        await w.queue.connect()
        await w.start()
    finally:
        await w.queue.disconnect()
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
