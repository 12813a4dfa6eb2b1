"""streaq adapter (runs inside benchmarks/.venvs/streaq).

See benchmarks/README.md for the contract."""

from __future__ import annotations

import importlib.metadata as md
import time

import _common as c
import _probe
from streaq import Worker

QUEUE = "bench"


def make(args, concurrency: int = 16):
    """Build a Worker and register the benchmark tasks on it (producer and worker alike)."""
    w = Worker(redis_url=args.redis_url, queue_name=QUEUE, concurrency=concurrency)

    @w.task(name="noop")
    async def noop(i: int) -> None:
        await _probe.anoop(i)

    @w.task(name="sleeper")
    async def sleeper(i: int, seconds: float) -> None:
        await _probe.asleeper(i, seconds)

    return w, noop, sleeper


def enq(task):
    async def go():
        await task

    return go()


def info(args):
    return {
        "system": "streaq",
        "version": md.version("streaq"),
        "versions": {p: md.version(p) for p in ("streaq", "coredis", "anyio")},
        "bulk": "Worker.enqueue_many (one pipeline)",
        "settings": "Worker(concurrency=C) (default 16), default prefetch (=concurrency), "
        "pickle serializer, max_tries=3, idle_timeout=60 s; tasks via @worker.task",
        "default_concurrency": 16,
        "recovery": "idle_timeout=60 s: unacked stream entries of a dead worker are reclaimed",
        "unsupported": {},
    }


async def enqueue_single(args):
    w, noop, _ = make(args)
    async with w:
        return await c.time_single(args.n, lambda i: enq(noop.enqueue(i)))


async def _bulk(w, tasks, chunk):
    for lo in range(0, len(tasks), chunk):
        await w.enqueue_many(tasks[lo : lo + chunk])


async def enqueue_bulk(args):
    w, noop, _ = make(args)
    async with w:
        await noop.enqueue(-1)
        t0 = time.perf_counter()
        await _bulk(w, [noop.enqueue(i) for i in range(args.n)], args.chunk)
        return {
            "n": args.n,
            "seconds": time.perf_counter() - t0,
            "method": f"Worker.enqueue_many, chunks of {args.chunk}",
        }


async def prequeue(args):
    w, noop, sleeper = make(args)
    async with w:
        t0 = time.perf_counter()
        if args.job == "sleep":
            tasks = [sleeper.enqueue(i, args.seconds) for i in range(args.n)]
        else:
            tasks = [noop.enqueue(i) for i in range(args.n)]
        await _bulk(w, tasks, args.chunk)
        return {"n": args.n, "seconds": time.perf_counter() - t0}


async def enqueue_paced(args):
    w, noop, _ = make(args)
    async with w:
        return await c.paced(args.n, args.rate, lambda i: enq(noop.enqueue(i)))


async def enqueue_delayed(args):
    w, noop, _ = make(args)
    async with w:
        await noop.enqueue(-1)
        due = c.due_time(args.delay)
        await c.gather_chunks(
            args.n,
            lambda i: enq(noop.enqueue(i).start(schedule=c.when_of(due, i, args.n, args.spread))),
            args.chunk,
        )
        return {"n": args.n, "due": due}


async def worker(args):
    w, _, _ = make(args, args.concurrency)
    await w.run_async()
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
