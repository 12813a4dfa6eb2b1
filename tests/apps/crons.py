"""A worker module with an every-second cron job, for the scheduling tests.

Each tick records its job id in a set and counts its runs, so tests can check that every
tick ran exactly once across processes.
"""

from __future__ import annotations

import os

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")


@asyncjobs.task
async def tick(ctx: Context) -> None:
    await ctx.pool.client.sadd(f"{PREFIX}:ticks", ctx.job_id)
    await ctx.pool.client.incr(f"{PREFIX}:tickruns:{ctx.job_id}")


@asyncjobs.task
async def delayed(ctx: Context, i: int) -> None:
    await ctx.pool.client.incr(f"{PREFIX}:runs:{ctx.job_id}")


worker = asyncjobs.Worker(
    [tick, delayed],
    prefix=PREFIX,
    lease_ttl=float(os.environ.get("TEST_LEASE_TTL", "5")),
    cron=[asyncjobs.cron(tick, "* * * * * *", name="every-second",
                         catch_up=os.environ.get("TEST_CATCH_UP", "latest"))],
)
