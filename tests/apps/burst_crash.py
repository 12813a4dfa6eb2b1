"""A worker module whose job kills its process (``os._exit(1)``) on its first two runs:
under ``--processes N --burst`` such an exit is a crash, to be restarted, not a burst
process that is done (``asyncjobs worker tests.apps.burst_crash:worker``)."""

from __future__ import annotations

import os

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")


@asyncjobs.task
async def crash_twice(ctx: Context) -> str:
    if await ctx.pool.client.incr(f"{PREFIX}:crashes") <= 2:
        os._exit(1)
    return "survived"


@asyncjobs.task
async def short(ctx: Context, i: int) -> int:
    return i


worker = asyncjobs.Worker([crash_twice, short], prefix=PREFIX, claim_timeout=2.0)
