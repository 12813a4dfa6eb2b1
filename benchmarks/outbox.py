"""Transactional enqueue (asyncjobs.outbox): commit-to-job-start latency and relay throughput.

    python benchmarks/outbox.py                       # PostgreSQL on 127.0.0.1:5432 and SQLite
    python benchmarks/outbox.py --database-url postgresql://postgres@127.0.0.1/test \\
        --commits 500 --rate 100 --rows 50000 --runs 3

- latency: a worker process (``asyncjobs worker benchmarks.outbox:worker``) relays the outbox
  (``Relay.lifespan``: NOTIFY on PostgreSQL, 50 ms polling on SQLite) and runs a no-op task
  that returns ``time.time()`` as it starts. The producer commits ``--commits`` transactions
  at ``--rate`` per second, one job each; latency = job start - the moment ``commit()`` was
  called (``from_return``: - the moment it returned). p50 / p99 / max in ms.
- throughput: ``--rows`` jobs committed first (transactions of 1,000), then one relay
  (``Relay.relay_pending``: batches of ``--batch-size``, no lease) moves them all; jobs/s, and
  Redis commands per job (``INFO commandstats``).

Each database gets a throwaway schema (PostgreSQL) or file (SQLite), and each run a fresh
``redis-server`` on a free port (never 6379). Prints one JSON object per measurement, then a
summary; ``--json PATH`` writes them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncjobs  # noqa: E402
from asyncjobs import Context, outbox  # noqa: E402
from asyncjobs._redis.embedded import RedisServer  # noqa: E402

DB_ENV, SCHEMA_ENV = "OUTBOX_BENCH_DATABASE_URL", "OUTBOX_BENCH_SCHEMA"
PREFIX = "bench"


@asyncjobs.task(result_ttl=600)
async def started(ctx: Context, seq: int) -> float:
    return time.time()


def _worker() -> asyncjobs.Worker | None:
    """The latency run's worker (in its own process): relays the outbox named by the
    environment, runs ``started``."""
    url = os.environ.get(DB_ENV)
    if not url:
        return None
    table = outbox.outbox_table(schema=os.environ.get(SCHEMA_ENV) or None)
    relay = outbox.Relay(url, table=table)
    return asyncjobs.Worker([started], lifespan=relay.lifespan, prefix=PREFIX,
                            concurrency=100)


worker = _worker()


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[tuple[AsyncEngine, sa.Table, str, str | None]]:
    """An engine on a fresh schema (PostgreSQL) or file (SQLite) holding an outbox table;
    yields (engine, table, URL for the worker, schema)."""
    parsed = outbox.database_url(url)
    schema = None
    if parsed.get_backend_name() == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='outbox-bench-')}/bench.db"
        parsed = outbox.database_url(url)
    else:
        schema = f"bench_{secrets.token_hex(4)}"
    engine = create_async_engine(parsed)
    table = outbox.outbox_table(schema=schema)
    try:
        async with engine.begin() as conn:
            if schema:
                await conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            await conn.run_sync(table.metadata.create_all)
        yield engine, table, url, schema
    finally:
        async with engine.begin() as conn:
            if schema:
                await conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        await engine.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def latency(url: str, commits: int, rate: float) -> dict[str, Any]:
    """Commits at a steady rate; each job's start time against its commit."""
    with RedisServer() as server:
        async with database(url) as (engine, table, worker_url, schema):
            env = {**os.environ, DB_ENV: worker_url, SCHEMA_ENV: schema or "",
                   "ASYNCJOBS_REDIS_URL": server.url}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncjobs", "worker", "benchmarks.outbox:worker",
                "--log-level", "WARNING", cwd=ROOT, env=env)
            try:
                async with asyncjobs.create_pool(server.url, prefix=PREFIX) as pool:
                    await _wait_for_leader(pool, table)
                    sent = await _commit_steadily(engine, table, commits, rate)
                    starts = [await pool.job(job_id).result(timeout=60)
                              for job_id, _, _ in sent]
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
    from_call = [(s - called) * 1000 for s, (_, called, _) in zip(starts, sent, strict=True)]
    from_return = [(s - ret) * 1000 for s, (_, _, ret) in zip(starts, sent, strict=True)]
    return {"workload": "latency", "database": _kind(url), "commits": commits, "rate": rate,
            "p50_ms": percentile(from_call, 0.5), "p99_ms": percentile(from_call, 0.99),
            "max_ms": max(from_call), "from_return_p50_ms": percentile(from_return, 0.5),
            "from_return_p99_ms": percentile(from_return, 0.99)}


async def _wait_for_leader(pool: asyncjobs.Pool, table: sa.Table) -> None:
    key = f"{PREFIX}:outbox:{table.fullname}:leader"
    deadline = time.monotonic() + 30
    while not await pool.client.exists(key):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker's relay never took its lease")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)


async def _commit_steadily(engine: AsyncEngine, table: sa.Table, commits: int,
                           rate: float) -> list[tuple[str, float, float]]:
    box = outbox.Outbox(table)
    sent = []
    began = time.monotonic()
    for seq in range(commits):
        await asyncio.sleep(max(0.0, began + seq / rate - time.monotonic()))
        async with AsyncSession(engine) as session:
            await session.begin()
            job = await box.enqueue(session, started, seq)
            called = time.time()
            await session.commit()
            sent.append((job.id, called, time.time()))
    return sent


async def throughput(url: str, rows: int, batch_size: int) -> dict[str, Any]:
    """Commit ``rows`` jobs, then time one relay moving them all."""
    with RedisServer() as server:
        async with database(url) as (engine, table, _, _):
            box = outbox.Outbox(table, notify=False)
            for first in range(0, rows, 1000):
                async with AsyncSession(engine) as session, session.begin():
                    await box.enqueue_many(session, [
                        asyncjobs.call(started, i) for i in range(first, min(rows, first + 1000))])
            relay = outbox.Relay(engine, table=table, batch_size=batch_size, lease=False)
            async with asyncjobs.create_pool(server.url, prefix=PREFIX) as pool:
                before = await _commands(pool)
                began = time.perf_counter()
                moved = await relay.relay_pending(pool)
                elapsed = time.perf_counter() - began
                calls = await _commands(pool) - before
                created = int((await pool.client.hget(pool.keys("default").stats,
                                                      "enqueued")) or 0)
    if moved != rows or created != rows:
        raise RuntimeError(f"relayed {moved} rows and created {created} jobs of {rows}")
    return {"workload": "throughput", "database": _kind(url), "rows": rows,
            "batch_size": batch_size, "seconds": elapsed, "jobs_per_s": rows / elapsed,
            "redis_commands_per_job": (calls - 1) / rows}


async def _commands(pool: asyncjobs.Pool) -> int:
    stats = await pool.client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def _kind(url: str) -> str:
    return outbox.database_url(url).get_backend_name()


def summary(results: list[dict[str, Any]]) -> None:
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["workload"], r["database"]), []).append(r)
    for (workload, db), runs in sorted(by.items()):
        if workload == "latency":
            p50 = statistics.median(r["p50_ms"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            print(f"latency    {db:10} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  ({len(runs)} runs, "
                  "medians)")
        else:
            rate = statistics.median(r["jobs_per_s"] for r in runs)
            cmds = statistics.median(r["redis_commands_per_job"] for r in runs)
            print(f"throughput {db:10} {rate:9,.0f} jobs/s  {cmds:.3f} Redis commands/job "
                  f"({len(runs)} runs, median)")


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for run in range(args.runs):
        for url in args.database_url:
            for measure in (latency(url, args.commits, args.rate),
                            throughput(url, args.rows, args.batch_size)):
                result = {**await measure, "run": run + 1}
                print(json.dumps(result), flush=True)
                results.append(result)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database-url", action="append")
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    options.database_url = options.database_url or [
        "postgresql://postgres@127.0.0.1:5432/test", "sqlite:///bench.db"]
    found = asyncio.run(main(options))
    summary(found)
    if options.json:
        options.json.write_text(json.dumps({
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform()},
            "results": found}, indent=2))
