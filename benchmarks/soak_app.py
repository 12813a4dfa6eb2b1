"""The worker of the soak benchmark (benchmarks/soak.py): a mix of jobs as a service has
them. Every job that runs counts itself in Redis (``soak:ran:<kind>``) through a redis-py
client of its own, as users' tasks talk to Redis; fast jobs also push their start delay
(start minus enqueue, ms) to ``soak:lat`` for the latency windows.

    asyncjobs worker soak_app:worker        # with benchmarks/ on PYTHONPATH, SOAK_REDIS_URL set
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
import redis.asyncio

import asyncjobs
from asyncjobs import Context

URL = os.environ.get("SOAK_REDIS_URL", "redis://127.0.0.1:6379/0")
RESULT_TTL = float(os.environ.get("SOAK_RESULT_TTL", "300"))
DEAD_LETTER_LIMIT = int(os.environ.get("SOAK_DEAD_LETTER_LIMIT", "1000"))


@asynccontextmanager
async def lifespan(worker: asyncjobs.Worker) -> AsyncIterator[dict[str, Any]]:
    client = redis.asyncio.from_url(URL)
    sync_client = redis.Redis.from_url(URL)
    try:
        yield {"redis": client, "sync": sync_client}
    finally:
        await client.aclose()
        sync_client.close()


async def _count(ctx: Context, kind: str, latency: bool = False) -> None:
    client: redis.asyncio.Redis = ctx.state["redis"]
    pipe = client.pipeline(transaction=False)
    pipe.incr(f"soak:ran:{kind}")
    if latency:
        pipe.rpush("soak:lat", int(time.time() * 1000) - ctx.enqueued_ms)
    await pipe.execute()


@asyncjobs.task(result_ttl=RESULT_TTL)
async def fast(ctx: Context, n: int) -> int:
    await _count(ctx, "fast", latency=True)
    return n


@asyncjobs.task(result_ttl=RESULT_TTL)
async def delayed(ctx: Context, n: int) -> int:
    await _count(ctx, "delayed")
    return n


@asyncjobs.task(result_ttl=RESULT_TTL)
async def slow(ctx: Context, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await _count(ctx, "slow")


@asyncjobs.task(result_ttl=RESULT_TTL)
def blocking(ctx: Context, seconds: float) -> None:
    time.sleep(seconds)  # a plain def: it runs in the worker's threads
    ctx.state["sync"].incr("soak:ran:blocking")


@asyncjobs.task(max_tries=2, backoff=0.1)
async def failing(ctx: Context, n: int) -> None:
    await _count(ctx, "failing_attempt")
    raise ValueError(f"soak failure {n}")


async def tick(ctx: Context) -> None:
    await _count(ctx, "cron")


worker = asyncjobs.Worker(
    [fast, delayed, slow, blocking, failing], lifespan=lifespan, redis_url=URL,
    cron=[asyncjobs.cron(tick, every=1)], dead_letter_limit=DEAD_LETTER_LIMIT,
    result_ttl=RESULT_TTL)
