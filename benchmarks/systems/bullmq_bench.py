"""BullMQ (Python package) adapter (runs inside benchmarks/.venvs/bullmq).

See benchmarks/README.md for the contract."""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import signal
import time

import _common as c
import _probe
from bullmq import Queue, Worker

QUEUE = "bench"


async def process(job, token):
    if job.name == "sleeper":
        await _probe.asleeper(job.data["i"], job.data["seconds"])
    else:
        await _probe.anoop(job.data["i"])


def queue(args) -> Queue:
    return Queue(QUEUE, {"connection": args.redis_url})


def info(args):
    return {
        "system": "bullmq",
        "version": md.version("bullmq"),
        "versions": {p: md.version(p) for p in ("bullmq", "redis")},
        "bulk": "Queue.addBulk (chunks of 1000)",
        "settings": "Worker(concurrency=C) (default 1), other defaults (lockDuration 30 s, "
        "stalledInterval 30 s, maxStalledCount 1, drainDelay 5 s, completed jobs kept)",
        "default_concurrency": 1,
        "recovery": "stalled-job check every 30 s after the 30 s lock expires (maxStalledCount 1)",
        "unsupported": {},
    }


def _job(i, seconds=None, opts=None):
    if seconds is None:
        return {"name": "noop", "data": {"i": i}, "opts": opts or {}}
    return {"name": "sleeper", "data": {"i": i, "seconds": seconds}, "opts": opts or {}}


async def _bulk(q, jobs, chunk):
    for lo in range(0, len(jobs), chunk):
        await q.addBulk(jobs[lo : lo + chunk])


async def enqueue_single(args):
    q = queue(args)
    out = await c.time_single(args.n, lambda i: q.add("noop", {"i": i}))
    await q.close()
    return out


async def enqueue_bulk(args):
    q = queue(args)
    await q.add("noop", {"i": -1})
    t0 = time.perf_counter()
    await _bulk(q, [_job(i) for i in range(args.n)], args.chunk)
    secs = time.perf_counter() - t0
    await q.close()
    return {"n": args.n, "seconds": secs, "method": f"Queue.addBulk, chunks of {args.chunk}"}


async def prequeue(args):
    q = queue(args)
    secs = args.seconds if args.job == "sleep" else None
    t0 = time.perf_counter()
    await _bulk(q, [_job(i, secs) for i in range(args.n)], args.chunk)
    secs = time.perf_counter() - t0
    await q.close()
    return {"n": args.n, "seconds": secs}


async def enqueue_paced(args):
    q = queue(args)
    out = await c.paced(args.n, args.rate, lambda i: q.add("noop", {"i": i}))
    await q.close()
    return out


async def enqueue_delayed(args):
    q = queue(args)
    await q.add("noop", {"i": -1})
    due = c.due_time(args.delay)
    for lo in range(0, args.n, args.chunk):  # delay is relative: compute it per chunk
        now = time.time()
        jobs = []
        for i in range(lo, min(lo + args.chunk, args.n)):
            delay = max(0, round((c.due_of(due, i, args.n, args.spread) - now) * 1000))
            jobs.append(_job(i, opts={"delay": delay}))
        await q.addBulk(jobs)
    await q.close()
    return {"n": args.n, "due": due}


async def worker(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    w = Worker(QUEUE, process, {"connection": args.redis_url, "concurrency": args.concurrency})
    await stop.wait()
    await w.close()
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
