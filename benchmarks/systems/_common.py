"""Shared plumbing for adapter scripts: CLI, role dispatch, timing helpers, JSON output.

An adapter defines a function per role it supports, named after the role, and calls
`main(globals())`. Handlers
take the parsed argparse namespace; they may be sync or async (async ones run under
asyncio.run). Each role prints exactly one JSON line on stdout; logs go to stderr.
See benchmarks/README.md ("Adapter contract").
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import math
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import _probe

ROLES = [
    "info",
    "enqueue-single",
    "enqueue-bulk",
    "prequeue",
    "worker",
    "enqueue-paced",
    "enqueue-delayed",
]
CHUNK = 1000  # gather chunk size for systems without a bulk API


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=ROLES)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--n", type=int, default=1000, help="number of jobs")
    ap.add_argument("--concurrency", type=int, default=100, help="worker concurrency")
    ap.add_argument("--job", choices=["noop", "sleep"], default="noop", help="prequeue: which job")
    ap.add_argument("--seconds", type=float, default=0.05, help="sleep job duration")
    ap.add_argument("--rate", type=float, default=200.0, help="enqueue-paced: jobs per second")
    ap.add_argument("--delay", type=float, default=2.0, help="enqueue-delayed: seconds ahead")
    ap.add_argument("--spread", type=float, default=0.0,
                    help="enqueue-delayed: job i is due at due + spread * i / n seconds")
    ap.add_argument("--chunk", type=int, default=CHUNK)
    ap.add_argument("--processes", type=int, default=1,
                    help="worker: processes, in the system's own multi-process mode")
    ap.add_argument(
        "--scheduler",
        action="store_true",
        help="worker: the workload uses delayed jobs (start the system's scheduler)",
    )
    return ap.parse_args(argv)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(adapter: dict[str, Any]) -> None:
    """Run the role named on the command line: the adapter's function of that name, with
    dashes as underscores (`enqueue-single` -> `enqueue_single`). Adapters pass globals()."""
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    args = parse_args()
    _probe.set_url(args.redis_url)
    handler = adapter.get(args.role.replace("-", "_"))
    if not callable(handler):
        emit({"error": f"role {args.role} not supported"})
        sys.exit(2)
    try:
        result = (
            asyncio.run(handler(args)) if inspect.iscoroutinefunction(handler) else handler(args)
        )
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    emit(result if isinstance(result, dict) else {"ok": True})


def due_of(due: float, i: int, n: int, spread: float) -> float:
    """The due time of job i when n jobs are spread over `spread` seconds from `due`."""
    return due + spread * i / max(n, 1)


def when_of(due: float, i: int, n: int, spread: float) -> Any:
    """`due_of` as an aware UTC datetime."""
    import datetime as dt

    return dt.datetime.fromtimestamp(due_of(due, i, n, spread), tz=dt.UTC)


def due_time(delay: float) -> float:
    """All delayed jobs are due at one whole second, `delay`..`delay+1` s from now (so that
    APIs with 1 s resolution are not penalised by a fractional due time)."""
    return float(math.ceil(time.time() + delay))


# ---- async helpers ------------------------------------------------------------------------
async def time_single(n: int, enqueue: Callable[[int], Awaitable[Any]]) -> dict:
    await enqueue(-1)  # warm-up: connect, load scripts (not timed, not counted)
    t0 = time.perf_counter()
    for i in range(n):
        await enqueue(i)
    return {"n": n, "seconds": time.perf_counter() - t0}


async def gather_chunks(
    n: int, enqueue: Callable[[int], Awaitable[Any]], chunk: int = CHUNK, start: int = 0
) -> None:
    for lo in range(start, start + n, chunk):
        await asyncio.gather(*(enqueue(i) for i in range(lo, min(lo + chunk, start + n))))


async def time_gather(n: int, enqueue: Callable[[int], Awaitable[Any]], chunk: int = CHUNK) -> dict:
    await enqueue(-1)
    t0 = time.perf_counter()
    await gather_chunks(n, enqueue, chunk)
    return {
        "n": n,
        "seconds": time.perf_counter() - t0,
        "method": f"no bulk API: asyncio.gather in chunks of {chunk}",
    }


async def paced(n: int, rate: float, enqueue: Callable[[int], Awaitable[Any]]) -> dict:
    """Enqueue job i at t0 + i/rate; record time.time() right before each enqueue call."""
    await enqueue(-1)
    times: list[float] = []
    t0 = time.perf_counter()
    late = 0
    for i in range(n):
        wait = t0 + i / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.05:
            late += 1
        times.append(time.time())
        await enqueue(i)
    return {"n": n, "enqueue_times": times, "late": late}


# ---- sync helpers (rq, celery) ----------------------------------------------------------
def time_single_sync(n: int, enqueue: Callable[[int], Any]) -> dict:
    enqueue(-1)
    t0 = time.perf_counter()
    for i in range(n):
        enqueue(i)
    return {"n": n, "seconds": time.perf_counter() - t0}


def paced_sync(n: int, rate: float, enqueue: Callable[[int], Any]) -> dict:
    enqueue(-1)
    times: list[float] = []
    t0 = time.perf_counter()
    late = 0
    for i in range(n):
        wait = t0 + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        elif wait < -0.05:
            late += 1
        times.append(time.time())
        enqueue(i)
    return {"n": n, "enqueue_times": times, "late": late}
