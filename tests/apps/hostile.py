"""Hostile tasks for tests/test_hostile.py, run by ``asyncjobs worker tests.apps.hostile:worker``.

Each task misbehaves in one way users' code does by accident: it ignores or swallows its
cancellation, blocks the event loop or its thread, raises a ``BaseException``, raises an
exception that cannot be printed, returns what cannot be stored, leaks memory, or kills its
own process. Every attempt records itself in Redis, so tests count attempts across
processes: ``<prefix>:runs:<job id>`` (a counter) and ``<prefix>:starts:<job id>`` (a list
of ``"<pid> <unix time> <earlier attempts' pids still alive>"``, one per attempt).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import time
from typing import Any

import redis

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")
TIMEOUT_S = 1.0
BACKOFF_S = 0.1
LEAK_MB = 10


class Boom(BaseException):
    """A custom ``BaseException``: not an ``Exception``, so no default policy retries it."""


class BadStr(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of BadStr raised")


class BadStrRepr(Exception):
    """An exception whose ``__str__`` and ``__repr__`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of BadStrRepr raised")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ of BadStrRepr raised")


BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "boom": Boom, "keyboard": KeyboardInterrupt, "exit": SystemExit,
}
LEAKED: list[bytes] = []


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie has exited: it only awaits its reaping)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _mark(earlier: list[bytes]) -> str:
    """``<pid> <unix time> <pids of earlier attempts' processes still alive, or ->``: checked
    here, as the body starts, so a test needs no clock of its own to tell whether two
    processes ran the job at once."""
    pids = {int(line.split()[0]) for line in earlier} - {os.getpid()}
    alive = ",".join(str(pid) for pid in sorted(pids) if _alive(pid)) or "-"
    return f"{os.getpid()} {time.time():.3f} {alive}"


async def _count(ctx: Context) -> None:
    """Record this attempt (async tasks)."""
    key = f"{PREFIX}:starts:{ctx.job_id}"
    earlier = await ctx.pool.client.lrange(key, 0, -1)
    pipe = ctx.pool.client.pipeline(transaction=False)
    pipe.incr(f"{PREFIX}:runs:{ctx.job_id}")
    pipe.rpush(key, _mark(earlier))
    await pipe.execute()


@functools.cache
def _sync_client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["ASYNCJOBS_REDIS_URL"])


def _count_sync(ctx: Context) -> None:
    """Record this attempt (plain ``def`` tasks, on their thread)."""
    key = f"{PREFIX}:starts:{ctx.job_id}"
    earlier = _sync_client().lrange(key, 0, -1)
    pipe = _sync_client().pipeline(transaction=False)
    pipe.incr(f"{PREFIX}:runs:{ctx.job_id}")
    pipe.rpush(key, _mark(earlier))
    pipe.execute()


# -- well-behaved ------------------------------------------------------------------------


@asyncjobs.task
async def ordinary(ctx: Context, i: int) -> int:
    """A normal job: proves the worker still serves."""
    await _count(ctx)
    return i


@asyncjobs.task
async def echo(ctx: Context, value: Any) -> Any:
    """Returns its argument (its payload is the hostile part)."""
    await _count(ctx)
    return value


@asyncjobs.task
async def needs_two(ctx: Context, a: int, b: int) -> int:
    """Takes exactly two arguments."""
    await _count(ctx)
    return a + b


# -- cancellation ----------------------------------------------------------------------------


@asyncjobs.task(timeout=TIMEOUT_S, max_tries=2, backoff=BACKOFF_S)
async def swallow_return(ctx: Context) -> str:
    """Swallows its cancellation and returns a value at once."""
    await _count(ctx)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        return "swallowed"
    return "slept"


async def _swallow_forever(ctx: Context, stamp: bool = False) -> None:
    """Swallow every cancellation, for ever. Each one is printed; with ``stamp``, once
    cancelled the body also prints ``alive at <unix time>`` every 0.1 s while it runs."""
    cancels = 0
    while True:
        try:
            await asyncio.sleep(0.1 if stamp and cancels else 60)
            if cancels:
                print(f"hostile: {ctx.job_id} attempt {ctx.attempt} alive at "
                      f"{time.time():.3f}", flush=True)
        except asyncio.CancelledError:
            cancels += 1
            print(f"hostile: {ctx.job_id} attempt {ctx.attempt} swallowed cancellation "
                  f"{cancels} at {time.time():.3f}", flush=True)


@asyncjobs.task(timeout=TIMEOUT_S, max_tries=2, backoff=BACKOFF_S)
async def swallow_forever(ctx: Context) -> str:
    """Catches every cancellation and keeps going, for ever."""
    await _count(ctx)
    await _swallow_forever(ctx)
    return "never"


# -- blocking ----------------------------------------------------------------------------


@asyncjobs.task(timeout=TIMEOUT_S, max_tries=1)
async def block_loop(ctx: Context, seconds: float) -> str:
    """An ``async def`` that blocks the event loop."""
    await _count(ctx)
    time.sleep(seconds)  # noqa: ASYNC251 - the point of the test
    return f"blocked the loop {seconds} s"


@asyncjobs.task(timeout=TIMEOUT_S, max_tries=2, backoff=BACKOFF_S)
def block_thread(ctx: Context, seconds: float) -> str:
    """A plain ``def`` that blocks its thread past its timeout."""
    _count_sync(ctx)
    time.sleep(seconds)
    return f"blocked the thread {seconds} s"


@asyncjobs.task(max_tries=2, backoff=BACKOFF_S)
async def hostile_once(ctx: Context, kind: str) -> str:
    """On its first attempt: swallows every cancellation ('swallow') or blocks the loop for
    3 s ('loop'); on later attempts returns at once."""
    await _count(ctx)
    if ctx.attempt == 1:
        if kind == "swallow":
            await _swallow_forever(ctx, stamp=True)
        elif kind == "loop":
            time.sleep(3.0)  # noqa: ASYNC251 - the point of the test
    return f"{kind}: attempt {ctx.attempt} done"


@asyncjobs.task(max_tries=2, backoff=BACKOFF_S)
def hostile_once_sync(ctx: Context, seconds: float) -> str:
    """On its first attempt blocks its thread for ``seconds``; later returns at once."""
    _count_sync(ctx)
    if ctx.attempt == 1:
        time.sleep(seconds)
    return f"thread: attempt {ctx.attempt} done"


# -- what a task raises ----------------------------------------------------------------------


@asyncjobs.task
async def raise_base(ctx: Context, kind: str) -> None:
    """Raises a ``BaseException`` subclass (default policy: 3 tries of ``Exception``)."""
    await _count(ctx)
    raise BASE_EXCEPTIONS[kind](f"hostile {kind}")


@asyncjobs.task
def raise_base_sync(ctx: Context, kind: str) -> None:
    """The same, from a plain ``def`` task's thread."""
    _count_sync(ctx)
    raise BASE_EXCEPTIONS[kind](f"hostile {kind}")


@asyncjobs.task(retry_on=(Boom,), max_tries=2, backoff=BACKOFF_S)
async def boom_retried(ctx: Context) -> None:
    """Raises ``Boom``, which its ``retry_on`` names."""
    await _count(ctx)
    raise Boom("retry me")


@asyncjobs.task(max_tries=2, backoff=BACKOFF_S)
async def raise_unprintable(ctx: Context, repr_too: bool) -> None:
    """Raises an exception whose ``__str__`` (and with ``repr_too`` its ``__repr__``) raise."""
    await _count(ctx)
    raise (BadStrRepr if repr_too else BadStr)("payload")


# -- what a task returns ---------------------------------------------------------------------


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@asyncjobs.task
async def unencodable(ctx: Context, kind: str) -> Any:
    """Returns an ``object()``, a socket, or a list nested 150 levels deep."""
    await _count(ctx)
    if kind == "object":
        return object()
    if kind == "socket":
        return socket.socket()
    return _deep(150)


@asyncjobs.task
async def huge(ctx: Context, size: int) -> bytes:
    """Returns ``size`` bytes."""
    await _count(ctx)
    return b"x" * size


# -- resources -------------------------------------------------------------------------------


@asyncjobs.task(max_tries=3, backoff=BACKOFF_S)
async def leak(ctx: Context) -> None:
    """Keeps 10 MB more on every attempt, then fails."""
    await _count(ctx)
    LEAKED.append(b"\x01" * (LEAK_MB * 1024 * 1024))
    raise RuntimeError(f"leaked {len(LEAKED) * LEAK_MB} MB so far")


@asyncjobs.task(max_tries=1)
async def kill_self(ctx: Context) -> None:
    """A poison pill: SIGKILLs the process running it."""
    await _count(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


TASKS = [ordinary, echo, needs_two, swallow_return, swallow_forever, block_loop, block_thread,
         hostile_once, hostile_once_sync, raise_base, raise_base_sync, boom_retried,
         raise_unprintable, unencodable, huge, leak]

worker = asyncjobs.Worker(
    TASKS,
    prefix=PREFIX,
    concurrency=1,
    shutdown_grace=1.0,
    claim_timeout=float(os.environ.get("TEST_CLAIM_TIMEOUT", "15")),
)

poison_worker = asyncjobs.Worker(
    [kill_self, ordinary],
    prefix=PREFIX,
    concurrency=1,
    shutdown_grace=1.0,
    claim_timeout=2.0,
    max_deliveries=2,
)
