"""Job-side instrumentation shared by every adapter (identical cost for every system).

Every benchmark job calls exactly these helpers, which talk to Redis through the stdlib RESP
client in `_resp.py` (one connection per process/event loop, or per thread/greenlet for sync
systems). Keys written (all under `bench:`):

  bench:first   SET NX  start time (time.time()) of the first job to finish recording
                        (each job sends its own *start* time, so this is min(start) unless
                        jobs finish out of order by less than a roundtrip)
  bench:done    INCR    number of jobs completed
  bench:last    SET     end time, written by the job whose INCR returned BENCH_EXPECT
  bench:starts  HSET    i -> start time, only when BENCH_RECORD=1 (latency/delayed)
  bench:started INCR    sleeper jobs only, at their start, together with SET bench:first NX

Cost per no-op job: one roundtrip carrying SET NX + INCR (+ HSET when recording), plus one
SET by the final job. The harness subtracts these 2 commands/job when it counts Redis
commands per job.

The redis-py mode (BENCH_CLIENT=redis-py, the `process_incr` workload) makes a no-op job
what a user's job is: one INCR bench:done through a redis-py client (redis.asyncio in async
systems, a sync client per thread in sync ones), so a ratio does not hang on how cheap the
stdlib client above is. The job whose INCR returns 1 also SETs bench:first (its start time)
and the one that returns BENCH_EXPECT SETs bench:last: 1 command per job plus 2 per run.

Environment (set by the harness on the worker process, inherited by forks/threads):
  BENCH_REDIS_URL  where to write (defaults to the adapter's --redis-url via set_url())
  BENCH_EXPECT     total number of jobs expected (0 = never write bench:last)
  BENCH_RECORD     "1" to record per-job start times
  BENCH_CLIENT     "redis-py" for the redis-py mode (no-op jobs only), else the stdlib client
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from _resp import AsyncRedis, SyncRedis

_URL = os.environ.get("BENCH_REDIS_URL", "")
EXPECT = int(os.environ.get("BENCH_EXPECT", "0") or 0)
RECORD = os.environ.get("BENCH_RECORD", "") == "1"
REDIS_PY = os.environ.get("BENCH_CLIENT", "") == "redis-py"

_async_conns: dict[int, tuple[int, AsyncRedis]] = {}
_local = threading.local()


def set_url(url: str) -> None:
    """Adapters call this with --redis-url so jobs know where to report."""
    global _URL
    if not os.environ.get("BENCH_REDIS_URL"):
        _URL = url
        os.environ["BENCH_REDIS_URL"] = url


def _aconn() -> AsyncRedis:
    loop = asyncio.get_running_loop()
    key = id(loop)
    entry = _async_conns.get(key)
    if entry is None or entry[0] != os.getpid():
        entry = (os.getpid(), AsyncRedis(_URL or os.environ["BENCH_REDIS_URL"]))
        _async_conns[key] = entry
    return entry[1]


def _sconn() -> SyncRedis:
    conn = getattr(_local, "conn", None)
    if conn is None or _local.pid != os.getpid():
        conn = SyncRedis(_URL or os.environ["BENCH_REDIS_URL"])
        _local.conn, _local.pid = conn, os.getpid()
    return conn


def _end_cmds(i: int, t0: float) -> list[tuple]:
    cmds = [("SET", "bench:first", repr(t0), "NX"), ("INCR", "bench:done")]
    if RECORD:
        cmds.append(("HSET", "bench:starts", i, repr(t0)))
    return cmds


# ---- redis-py mode: one INCR per job -------------------------------------------------------
_rp_async: dict[int, tuple[int, object]] = {}


def _rp_aclient():
    loop = asyncio.get_running_loop()
    entry = _rp_async.get(id(loop))
    if entry is None or entry[0] != os.getpid():
        import redis.asyncio

        entry = (os.getpid(), redis.asyncio.Redis.from_url(_URL or os.environ["BENCH_REDIS_URL"]))
        _rp_async[id(loop)] = entry
    return entry[1]


def _rp_sclient():
    client = getattr(_local, "rp", None)
    if client is None or _local.rp_pid != os.getpid():
        import redis

        client = redis.Redis.from_url(_URL or os.environ["BENCH_REDIS_URL"])
        _local.rp, _local.rp_pid = client, os.getpid()
    return client


def _marks(done: int, t0: float) -> list[tuple[str, str]]:
    """The run's two extra writes: the first job's start, the last job's end."""
    marks = [("bench:first", repr(t0))] if done == 1 else []
    if done == EXPECT:
        marks.append(("bench:last", repr(time.time())))
    return marks


async def _rp_anoop() -> None:
    t0 = time.time()
    client = _rp_aclient()
    for key, value in _marks(await client.incr("bench:done"), t0):
        await client.set(key, value)


def _rp_noop() -> None:
    t0 = time.time()
    client = _rp_sclient()
    for key, value in _marks(client.incr("bench:done"), t0):
        client.set(key, value)


# ---- asyncio jobs -----------------------------------------------------------------------
async def anoop(i: int) -> None:
    """The whole body of a no-op job: record start time, count completion."""
    if REDIS_PY and not RECORD:
        await _rp_anoop()
        return
    await aend(i, time.time())


async def astart() -> float:
    t0 = time.time()
    await _aconn().pipeline(("SET", "bench:first", repr(t0), "NX"), ("INCR", "bench:started"))
    return t0


async def aend(i: int, t0: float) -> None:
    conn = _aconn()
    replies = await conn.pipeline(*_end_cmds(i, t0))
    if replies[1] == EXPECT:
        await conn.pipeline(("SET", "bench:last", repr(time.time())))


async def asleeper(i: int, seconds: float) -> None:
    t0 = await astart()
    await asyncio.sleep(seconds)
    await aend(i, t0)


# ---- synchronous jobs (rq, celery) --------------------------------------------------------
def noop(i: int) -> None:
    if REDIS_PY and not RECORD:
        _rp_noop()
        return
    end(i, time.time())


def start() -> float:
    t0 = time.time()
    _sconn().pipeline(("SET", "bench:first", repr(t0), "NX"), ("INCR", "bench:started"))
    return t0


def end(i: int, t0: float) -> None:
    conn = _sconn()
    replies = conn.pipeline(*_end_cmds(i, t0))
    if replies[1] == EXPECT:
        conn.pipeline(("SET", "bench:last", repr(time.time())))


def sleeper(i: int, seconds: float) -> None:
    t0 = start()
    time.sleep(seconds)
    end(i, t0)
