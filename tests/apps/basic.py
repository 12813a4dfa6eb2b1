"""A worker module for tests that run ``asyncjobs worker tests.apps.basic:worker``.

Each attempt counts itself in Redis (``<prefix>:runs:<job id>``), so tests can tell how
many times a job ran, across processes.
"""

from __future__ import annotations

import asyncio
import os

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")


async def _count(ctx: Context) -> None:
    await ctx.pool.client.incr(f"{PREFIX}:runs:{ctx.job_id}")


@asyncjobs.task
async def add(ctx: Context, a: int, b: int) -> int:
    await _count(ctx)
    return a + b


@asyncjobs.task(timeout=60)
async def slow(ctx: Context, seconds: float) -> str:
    await _count(ctx)
    await ctx.pool.client.set(f"{PREFIX}:started:{ctx.job_id}", "1")
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@asyncjobs.task
async def short(ctx: Context, i: int) -> int:
    await asyncio.sleep(float(os.environ.get("TEST_SHORT_S", "0.05")))
    await _count(ctx)
    return i


@asyncjobs.task(max_tries=1)
async def fail(ctx: Context, why: str) -> None:
    await _count(ctx)
    raise ValueError(why)


@asyncjobs.task(max_tries=1)
async def kill_worker(ctx: Context) -> None:
    """A poison pill: kills the process running it."""
    await _count(ctx)
    os.kill(os.getpid(), 9)


worker = asyncjobs.Worker(
    [add, slow, short, fail, kill_worker],
    prefix=PREFIX,
    claim_timeout=float(os.environ.get("TEST_CLAIM_TIMEOUT", "15")),
    max_deliveries=int(os.environ.get("TEST_MAX_DELIVERIES", "5")),
    shutdown_grace=float(os.environ.get("TEST_GRACE", "30")),
    concurrency=int(os.environ.get("TEST_CONCURRENCY", "100")),
)
not_a_worker = 42
