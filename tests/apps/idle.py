"""A worker module for the idle-fleet test: one no-op task and one cron job, defaults
otherwise (``asyncjobs worker tests.apps.idle:worker``)."""

from __future__ import annotations

import os

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")


@asyncjobs.task
async def noop(ctx: Context) -> None:
    return None


worker = asyncjobs.Worker([noop], cron=[asyncjobs.cron(noop, every=60)], prefix=PREFIX)
