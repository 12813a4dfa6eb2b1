"""The outbox relay as users run it, ``asyncjobs outbox-relay`` in a subprocess, under
SIGKILL mid-batch, racing another relay, and through a Redis outage. Jobs are counted in
Redis by job id (the records, the stream, the ``enqueued`` counter): none lost, none twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

import asyncjobs
from asyncjobs._redis.embedded import RedisServer

from .conftest import Backend, need_redis_server
from .procs import ROOT, run_cli
from .test_outbox import Database, database, greet, redis_jobs, until

pytestmark = [pytest.mark.slow]


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The test's database: SQLite, then PostgreSQL."""
    async with database(request.param, tmp_path) as opened:
        yield opened


class RelayProcess:
    """``asyncjobs outbox-relay ...`` in a subprocess, its output in a file."""

    def __init__(self, db: Database, redis_url: str, prefix: str, *args: str) -> None:
        self.log_path = Path("/tmp") / f"outbox-relay-{prefix}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "ASYNCJOBS_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asyncjobs", "outbox-relay", *db.cli_args(),
             "--prefix", prefix, "--no-uvloop", *args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, text: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            assert self.proc.poll() is None, f"relay exited:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"{text!r} not seen:\n{self.output[-3000:]}"
            await asyncio.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@contextmanager
def relays(db: Database, redis_url: str, prefix: str, count: int,
           *args: str) -> Iterator[list[RelayProcess]]:
    procs = [RelayProcess(db, redis_url, prefix, *args) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.close()


async def commit_jobs(db: Database, count: int, tag: str) -> list[str]:
    """One transaction that writes ``count`` jobs; their ids."""
    async with db.session() as session, session.begin():
        jobs = await db.outbox().enqueue_many(
            session, [asyncjobs.call(greet, i, f"{tag}{i}@x") for i in range(count)])
    return [j.id for j in jobs]


async def all_relayed(db: Database) -> bool:
    return await db.statuses() == {}


def assert_each_once(found: dict[str, Any], expected: list[str]) -> None:
    assert len(expected) == len(set(expected))
    assert found["created"] == len(expected), "a job was created twice, or lost"
    assert sorted(found["stream"]) == sorted(expected), "lost or duplicated stream entries"
    assert found["records"] == len(expected)


@pytest.mark.asyncio
async def test_a_relay_sigkilled_mid_batch_loses_and_duplicates_nothing(
        db: Database, real: Backend) -> None:
    expected = await commit_jobs(db, 2500, "k")
    lock = await _block_marking(db)
    try:
        with relays(db, real.url or "", real.prefix, 1, "--batch-size", "1000") as [relay]:
            await relay.wait_for("outbox relay leads")
            async with real.pool() as pool:
                # The first batch is in Redis; its rows cannot be marked: kill it now.
                await until(lambda: _created(pool, 1000), 20, "the first batch in Redis")
                await asyncio.sleep(0.2)
                assert await db.statuses() == {"pending": 2500}
                relay.proc.send_signal(signal.SIGKILL)
                relay.proc.wait(10)
    finally:
        await lock()
    # --no-lease: the dead relay's lease would hold the next one back for its TTL (5 s).
    with relays(db, real.url or "", real.prefix, 1, "--no-lease"):
        await until(lambda: all_relayed(db), 30, "the second relay")
    async with real.pool() as pool:
        assert_each_once(await redis_jobs(pool), expected)


async def _created(pool: asyncjobs.Pool, count: int) -> bool:
    return (await redis_jobs(pool))["created"] >= count


async def _block_marking(db: Database) -> Any:
    """Take a lock under which a relay can claim rows and write Redis but not mark them;
    returns the coroutine function that releases it."""
    if db.kind == "sqlite":
        conn = sqlite3.connect(db.url.split("///", 1)[1], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the write lock; readers still read

        async def release_sqlite() -> None:
            conn.execute("ROLLBACK")
            conn.close()

        return release_sqlite
    holder = await db.engine.connect()
    await holder.begin()
    # SHARE mode: SELECT ... FOR UPDATE goes through, DELETE and UPDATE wait.
    await holder.execute(sa.text(f"LOCK TABLE {db.table.fullname} IN SHARE MODE"))

    async def release_postgres() -> None:
        await holder.rollback()
        await holder.close()

    return release_postgres


@pytest.mark.asyncio
async def test_two_relays_race_on_50_concurrent_transactions(
        db: Database, real: Backend) -> None:
    with relays(db, real.url or "", real.prefix, 2, "--no-lease", "--poll", "0.02",
                "--batch-size", "7") as procs:
        for proc in procs:
            await proc.wait_for("outbox relay ready")

        async def transaction(n: int) -> list[str]:
            async with db.session() as session:
                await session.begin()
                await session.execute(sa.insert(db.users).values(id=n, email=f"{n}@x"))
                jobs = await db.outbox().enqueue_many(
                    session, [asyncjobs.call(greet, n, f"{n}.{i}@x") for i in range(10)])
                if n % 5 == 0:
                    await session.rollback()
                    return []
                await session.commit()
                return [j.id for j in jobs]

        committed = await asyncio.gather(*(transaction(n) for n in range(50)))
        expected = [job_id for ids in committed for job_id in ids]
        assert len(expected) == 400
        await until(lambda: all_relayed(db), 30, "both relays")
    async with real.pool() as pool:
        assert_each_once(await redis_jobs(pool), expected)


@pytest.mark.asyncio
async def test_redis_down_for_10_s_while_commits_go_on(db: Database) -> None:
    need_redis_server()
    server = RedisServer(appendonly=True)  # stopped and started: what was written stays
    server.start()
    expected: list[str] = []
    try:
        with relays(db, server.url, "down", 1, "--batch-size", "50") as [relay]:
            await relay.wait_for("outbox relay leads")

            async def commit_for(seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    expected.extend(await commit_jobs(db, 3, "d"))
                    await asyncio.sleep(0.05)

            await commit_for(1.0)
            server.stop()
            await commit_for(10.0)
            server.start()
            await commit_for(1.0)
            await until(lambda: all_relayed(db), 30, "the relay after the outage")
            assert "redis unavailable" in relay.output
            # Logged once the batch that relayed the last rows is done (after the purge
            # check), so it can come a moment after all_relayed() is true: waited for.
            await relay.wait_for("outbox relay working again")
        async with asyncjobs.create_pool(server.url, prefix="down") as pool:
            assert_each_once(await redis_jobs(pool), expected)
    finally:
        server.close()


def test_the_command_refuses_bad_options_in_one_line() -> None:
    for args, fragment in [
        (["--database-url", "mysql://u@h/db"], "supports PostgreSQL and SQLite, not 'mysql'"),
        (["--database-url", "sqlite:///x.db", "--poll", "0"], "--poll must be more than 0"),
        ([], "Missing option '--database-url'"),
    ]:
        done = run_cli("outbox-relay", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert fragment in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
