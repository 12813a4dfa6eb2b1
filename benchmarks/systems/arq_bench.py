"""arq adapter (runs inside benchmarks/.venvs/arq). See benchmarks/README.md for the contract."""

from __future__ import annotations

import importlib.metadata as md
import time

import _common as c
import _probe
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

QUEUE = "bench"


async def noop(ctx, i):
    await _probe.anoop(i)


async def sleeper(ctx, i, seconds):
    await _probe.asleeper(i, seconds)


async def pool(args):
    return await create_pool(RedisSettings.from_dsn(args.redis_url), default_queue_name=QUEUE)


def info(args):
    return {
        "system": "arq",
        "version": md.version("arq"),
        "versions": {p: md.version(p) for p in ("arq", "redis", "hiredis")},
        "bulk": "no bulk API: asyncio.gather in chunks of 1000",
        "settings": "Worker(max_jobs=C) (default 10), other defaults (job_timeout=300s, "
        "keep_result=3600s, poll_delay=0.5s); ArqRedis.enqueue_job",
        "default_concurrency": 10,
        "recovery": "in-progress key expires after job_timeout+10 s = 310 s by default",
        "unsupported": {},
    }


async def enqueue_single(args):
    redis = await pool(args)
    return await c.time_single(args.n, lambda i: redis.enqueue_job("noop", i))


async def enqueue_bulk(args):
    redis = await pool(args)
    return await c.time_gather(args.n, lambda i: redis.enqueue_job("noop", i), args.chunk)


async def prequeue(args):
    redis = await pool(args)
    if args.job == "sleep":
        fn = lambda i: redis.enqueue_job("sleeper", i, args.seconds)  # noqa: E731
    else:
        fn = lambda i: redis.enqueue_job("noop", i)  # noqa: E731
    t0 = time.perf_counter()
    await c.gather_chunks(args.n, fn, args.chunk)
    return {"n": args.n, "seconds": time.perf_counter() - t0}


async def enqueue_paced(args):
    redis = await pool(args)
    return await c.paced(args.n, args.rate, lambda i: redis.enqueue_job("noop", i))


async def enqueue_delayed(args):
    redis = await pool(args)
    await redis.enqueue_job("noop", -1)
    due = c.due_time(args.delay)
    await c.gather_chunks(
        args.n, lambda i: redis.enqueue_job(
            "noop", i, _defer_until=c.when_of(due, i, args.n, args.spread)
        ), args.chunk
    )
    return {"n": args.n, "due": due}


def worker(args):
    w = Worker(
        functions=[noop, sleeper],
        queue_name=QUEUE,
        max_jobs=args.concurrency,
        redis_settings=RedisSettings.from_dsn(args.redis_url),
    )
    w.run()
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
