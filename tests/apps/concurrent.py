"""A worker module for the concurrency-limit tests (``tests.apps.concurrent:worker``).

Each attempt records itself on the Redis clock (keys ``key(prefix, name)``, which share one
Cluster slot): ``starts`` and ``ends`` get ``<ms>:<job id>:<attempt>``, ``runs:<job id>``
counts the job's runs, and ``cur:<limit>`` / ``max:<limit>`` track how many run at once under a
limit (one atomic script each way), so a test checks the limit across processes without
trusting any process's clock.
"""

from __future__ import annotations

import asyncio
import os

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")
LIMIT = int(os.environ.get("TEST_CONC_LIMIT", "3"))

_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('RPUSH', KEYS[3], ms .. ':' .. ARGV[1])
redis.call('INCR', KEYS[4])
return n
"""

_LEAVE = """
redis.call('DECR', KEYS[1])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('RPUSH', KEYS[2], ms .. ':' .. ARGV[1])
return ms
"""


def key(prefix: str, name: str) -> str:
    """One of these records' keys: they share a hash tag (one Redis Cluster slot), so the
    scripts above and a test's MGET of them run on a cluster too."""
    return f"{prefix}:{{tracked}}:{name}"


async def tracked(ctx: Context, limit: str, sleep_s: float) -> None:
    """Run ``sleep_s`` seconds, counted as one of the jobs running under ``limit``."""
    client = ctx.pool.client
    me = f"{ctx.job_id}:{ctx.attempt}"
    await client.eval(_ENTER, 4, key(PREFIX, f"cur:{limit}"), key(PREFIX, f"max:{limit}"),
                      key(PREFIX, "starts"), key(PREFIX, f"runs:{ctx.job_id}"), me)
    try:
        await asyncio.sleep(sleep_s)
    finally:
        await asyncio.shield(client.eval(_LEAVE, 2, key(PREFIX, f"cur:{limit}"),
                                         key(PREFIX, "ends"), me))


@asyncjobs.task(concurrency_limit=LIMIT)
async def call_api(ctx: Context, i: int, sleep_s: float, first_s: float = 0.0) -> int:
    """Holds one of the API's LIMIT slots for ``sleep_s`` (``first_s`` on a first
    attempt, when given)."""
    await tracked(ctx, "api", first_s if first_s and ctx.attempt == 1 else sleep_s)
    return i


def _customer(customer: str, *_: object) -> str:
    return customer


@asyncjobs.task(concurrency_limit=1, concurrency_key=_customer)
async def report(ctx: Context, customer: str, sleep_s: float) -> str:
    """One report at a time per customer."""
    await tracked(ctx, customer, sleep_s)
    return customer


worker = asyncjobs.Worker(
    [call_api, report], prefix=PREFIX,
    concurrency=int(os.environ.get("TEST_CONCURRENCY", "8")),
    claim_timeout=float(os.environ.get("TEST_CLAIM_TIMEOUT", "15")),
)
