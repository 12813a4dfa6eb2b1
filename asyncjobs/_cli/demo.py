"""``asyncjobs demo``: a worker and a producer in one process, on a throwaway Redis.

It enqueues a handful of jobs that show the main behaviours (fast jobs, a slow one with
progress, a flaky one that succeeds on retry, one that fails, one that times out, a sync
one), shows them live, prints the outcomes, and exits 0 when each ended as expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .._context import Context
from .._model import JobState
from .._producer.handle import Job
from .._producer.opening import create_pool
from .._producer.pool import Pool
from .._redis import fake as _fake
from .._redis.connection import ClientFactory, redact
from .._redis.embedded import RedisServer, redis_server_path
from .._task import task
from .._worker.worker import Worker
from ..exceptions import AsyncJobsError, ConfigurationError
from .render import safe

NO_REDIS = ("the demo needs a Redis: no redis-server on PATH and no in-memory fake Redis; "
            "install redis-server (apt-get install redis-server, brew install redis) or "
            "asyncjobs' testing extra (pip install -e \".[testing]\" in a clone), "
            "or pass --redis-url")


@task
async def resize_image(ctx: Context, name: str) -> str:
    """A fast job."""
    await asyncio.sleep(0.2)
    return f"{name} resized to 800x600"


@task
async def send_email(ctx: Context, to: str) -> str:
    """Another fast job."""
    await asyncio.sleep(0.1)
    return f"sent to {to}"


@task(timeout=10)
async def build_report(ctx: Context, rows: int) -> int:
    """A slow job that reports progress."""
    for step in range(1, 11):
        await asyncio.sleep(0.25)
        await ctx.progress(step / 10, f"{rows * step // 10} of {rows} rows")
    return rows


@task(max_tries=3, backoff=0.3)
async def call_webhook(ctx: Context, url: str) -> str:
    """Fails on the first attempt, succeeds on the retry."""
    if ctx.attempt == 1:
        raise ConnectionError(f"{url}: connection reset by peer")
    return "200 OK"


@task(max_tries=1)
async def charge_card(ctx: Context, cents: int) -> str:
    """Always fails: a non-retried error, dead-lettered with its traceback."""
    raise ValueError(f"card declined for {cents} cents")


@task(timeout=1.0, max_tries=1)
async def export_archive(ctx: Context) -> None:
    """Hangs: cancelled by its 1 s timeout."""
    await asyncio.sleep(60)


def checksum(ctx: Context, text: str) -> str:
    """A plain ``def`` task: runs in a worker thread."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


TASKS: list[Any] = [resize_image, send_email, build_report, call_webhook, charge_card,
                    export_archive, checksum]


@dataclass
class Row:
    """One demo job and what it should end as."""

    label: str
    job: Job[Any]
    expect: JobState
    state: str = "queued"
    detail: str = ""


async def _enqueue(pool: Pool) -> list[Row]:
    plan: list[tuple[str, Any, tuple[Any, ...], JobState]] = [
        ("resize image", resize_image, ("cat.png",), JobState.COMPLETE),
        ("send email", send_email, ("ada@example.com",), JobState.COMPLETE),
        ("send email", send_email, ("alan@example.com",), JobState.COMPLETE),
        ("build report (slow)", build_report, (5000,), JobState.COMPLETE),
        ("call webhook (flaky)", call_webhook, ("https://example.com/hook",), JobState.COMPLETE),
        ("checksum (sync def)", checksum, ("hello",), JobState.COMPLETE),
        ("charge card (fails)", charge_card, (1999,), JobState.FAILED),
        ("export archive (hangs)", export_archive, (), JobState.FAILED),
    ]
    rows = []
    for label, fn, args, expect in plan:
        rows.append(Row(label, await pool.enqueue(fn, *args), expect))
    return rows


async def _refresh(row: Row) -> None:
    info = await row.job.info()
    row.state = info.state.value
    if info.state is JobState.COMPLETE:
        row.detail = repr(info.result)
    elif info.state is JobState.FAILED and info.error:
        row.detail = f"{info.error.type.rsplit('.', 1)[-1]}: {info.error.message}"
    elif info.progress:
        row.detail = f"{info.progress.value:.0%} {info.progress.message}"
    elif info.attempts > 1 or info.errors:
        row.detail = f"attempt {info.attempts}, last error: {info.errors[-1].message}"
    else:
        row.detail = ""


def _table(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    table.add_column("job")
    # The id's end: its start is a tag shared by ids made together (every job here).
    table.add_column("id (end)", style="dim")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    colour = {"complete": "green", "failed": "red", "running": "yellow", "scheduled": "cyan"}
    for row in rows:
        style = colour.get(row.state, "")
        state = f"[{style}]{row.state}[/]" if style else row.state
        table.add_row(row.label, "…" + row.job.id[-8:], state, row.detail)
    return table


@contextlib.contextmanager
def _redis(url: str | None, console: Console) -> Iterator[tuple[str | None, ClientFactory | None]]:
    if url:
        console.print(Text(safe(f"Using Redis at {redact(url)}")))  # never markup
        yield url, None
    elif redis_server_path():
        with RedisServer() as server:
            console.print(Text(f"Started a throwaway redis-server at {server.url}"))
            yield server.url, None
    elif _fake.available():
        console.print("No redis-server on PATH: using an in-memory fake Redis (fakeredis)")
        yield None, _fake.fake_factory()
    else:
        raise ConfigurationError(NO_REDIS)


@contextlib.asynccontextmanager
async def _running(worker: Worker, url: str | None, factory: ClientFactory | None
                   ) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: worker.run(redis_url=url, client_factory=factory,
                                                      task_status=task_status))
        try:
            yield
        finally:
            worker.stop()


async def run_demo(url: str | None, console: Console | None = None) -> bool:
    """Run the demo; True when every job ended as expected.

    SIGTERM and SIGHUP (unless ignored) stop it as a Ctrl-C does (asyncio's own handling of
    SIGINT): the run is cancelled, so that the throwaway redis-server is stopped and its
    directory removed; then the process ends by that signal, as it would have at once
    without a handler (143 or 129 in a shell)."""
    received: list[int] = []
    with _ending_on(received):
        try:
            ok = await _demo(url, console or Console())
        except asyncio.CancelledError:
            if not received:
                raise
            ok = False
    if received:
        _end_by(received[0])
    return ok


@contextlib.contextmanager
def _ending_on(received: list[int]) -> Iterator[None]:
    """While in the block, the first SIGTERM or SIGHUP cancels the running task and is
    added to ``received`` (a later one is only added: the cleanup runs to its end). A signal
    that is ignored (``nohup``) stays so; off the main thread, or without
    ``add_signal_handler`` (Windows), nothing is handled."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    installed: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1 and task is not None:
            task.cancel()

    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None or signal.getsignal(signum) is signal.SIG_IGN:
            continue
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _end_by(signum: int) -> NoReturn:
    """End the process by ``signum``'s default action (or, where that does nothing, a
    container's PID 1, exit 128 + its number, as a shell reports it)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


async def _demo(url: str | None, console: Console) -> bool:
    prefix = f"asyncjobs-demo-{secrets.token_hex(3)}"
    with _redis(url, console) as (target, factory):
        worker = Worker(TASKS, concurrency=10, prefix=prefix, shutdown_grace=2, result_ttl=600)
        async with create_pool(target, prefix=prefix, client_factory=factory) as pool:
            async with _running(worker, target, factory):
                rows = await _enqueue(pool)
                await _watch(rows, console)
            await _cleanup(pool, prefix)
    console.print()
    ok = all(r.state == r.expect.value for r in rows)
    for row in rows:
        if row.state != row.expect.value:
            console.print(f"[red]unexpected:[/] {row.label} ended {row.state}, "
                          f"expected {row.expect}")
    summary = ", ".join(f"{n} {s}" for s, n in _count(rows).items())
    console.print(f"{'[green]OK' if ok else '[red]FAILED'}[/]: {summary} "
                  "(the failures are on purpose: see the detail column)")
    return ok


async def _watch(rows: list[Row], console: Console) -> None:
    started = time.monotonic()
    with Live(_table(rows, "asyncjobs demo"), console=console, refresh_per_second=8) as live:
        while True:
            await asyncio.gather(*(_refresh(r) for r in rows))
            elapsed = time.monotonic() - started
            live.update(_table(rows, f"asyncjobs demo ({elapsed:.1f} s)"))
            if all(JobState(r.state).is_final for r in rows) or elapsed > 30:
                return
            await asyncio.sleep(0.15)


def _count(rows: list[Row]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


async def _cleanup(pool: Pool, prefix: str) -> None:
    with contextlib.suppress(AsyncJobsError, OSError):
        keys = [k async for k in pool.client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await pool.client.delete(*keys)
