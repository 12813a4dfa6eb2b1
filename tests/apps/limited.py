"""A worker module for the rate-limit tests (``tests.apps.limited:worker``).

Each attempt of ``ping`` records when it started on the Redis clock, and its attempt
number, in ``<prefix>:starts`` (``<µs>:<attempt>``), so a test measures the rate the workers
achieved together without trusting any process's clock.
"""

from __future__ import annotations

import os

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")


@asyncjobs.task(rate_limit=os.environ.get("TEST_RATE", "10/s"))
async def ping(ctx: Context, i: int) -> int:
    seconds, micros = await ctx.pool.client.time()
    await ctx.pool.client.rpush(f"{PREFIX}:starts", f"{seconds * 1_000_000 + micros}:"
                                                    f"{ctx.attempt}")
    return i


worker = asyncjobs.Worker([ping], prefix=PREFIX, concurrency=8)
