"""asyncjobs.outbox: jobs written in the application's transaction, relayed to Redis.

Every test runs on SQLite (a temporary file) and on PostgreSQL (127.0.0.1:5432, or
``$ASYNCJOBS_TEST_POSTGRES_URL``; skipped locally when none answers, a failure in CI), each
in a schema of its own that is dropped afterwards; Redis is the session's real server.
The fixtures here are shared by the other ``test_outbox_*`` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import asyncjobs
from asyncjobs import Context, outbox
from asyncjobs._redis.embedded import RedisServer

from .conftest import IN_CI, Backend, running
from .records import exists

POSTGRES_URL = os.environ.get("ASYNCJOBS_TEST_POSTGRES_URL",
                              "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@asyncjobs.task(timeout=30)
async def greet(ctx: Context, user_id: int, address: str) -> str:
    return f"hello {user_id} <{address}>"


def need_postgres() -> None:
    """Skip (or, in CI, fail) when no PostgreSQL server answers."""
    url = make_url(POSTGRES_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), 1).close()
    except OSError as exc:
        if IN_CI:
            pytest.fail(f"no PostgreSQL at {url.host}:{url.port} ({exc}), and PostgreSQL "
                        "tests never skip in CI")
        pytest.skip(f"no PostgreSQL at {url.host}:{url.port}")


@dataclass
class Database:
    """One test's database: an engine, a schema of its own, the outbox and a users table."""

    kind: str
    url: str
    engine: AsyncEngine
    schema: str | None
    table: sa.Table
    users: sa.Table

    def outbox(self, **options: Any) -> outbox.Outbox:
        return outbox.Outbox(self.table, **options)

    def relay(self, **options: Any) -> outbox.Relay:
        return outbox.Relay(self.engine, table=self.table, **options)

    def cli_args(self) -> list[str]:
        """The ``asyncjobs outbox-relay`` options naming this database and table."""
        return ["--database-url", self.url, *(["--schema", self.schema] if self.schema else [])]

    def session(self) -> AsyncSession:
        return AsyncSession(self.engine, expire_on_commit=False)

    async def statuses(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(self.table.c.status, sa.func.count())
                                      .group_by(self.table.c.status))
            return {str(status): int(n) for status, n in rows}

    async def rows(self) -> list[Any]:
        async with self.engine.connect() as conn:
            return list(await conn.execute(sa.select(self.table).order_by(self.table.c.id)))

    async def execute(self, statement: Any, params: Any = None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(statement, params)


def _tables(schema: str | None) -> tuple[sa.Table, sa.Table]:
    metadata = sa.MetaData(schema=schema)
    users = sa.Table("users", metadata,
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("email", sa.String(200), nullable=False, unique=True))
    return outbox.outbox_table(metadata), users


@contextlib.asynccontextmanager
async def database(kind: str, directory: Any) -> AsyncIterator[Database]:
    """A fresh database of ``kind``; everything it created is gone afterwards."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{directory}/outbox-{secrets.token_hex(4)}.db"
        schema = None
    else:
        need_postgres()
        url, schema = POSTGRES_URL, f"aj_{secrets.token_hex(6)}"
    engine = create_async_engine(url, pool_size=60, max_overflow=0) if schema else \
        create_async_engine(url, connect_args={"timeout": 30})
    try:
        if schema:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        table, users = _tables(schema)
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
        yield Database(kind, url, engine, schema, table, users)
    finally:
        if schema:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        await engine.dispose()


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Database]:
    """The test's database: SQLite, then PostgreSQL."""
    async with database(request.param, tmp_path) as opened:
        yield opened


async def signup(db: Database, user_id: int, box: outbox.Outbox | None = None,
                 *, commit: bool = True) -> outbox.OutboxJob[str]:
    """Insert a user and enqueue its greeting in one transaction; commit or roll back."""
    async with db.session() as session:
        await session.begin()
        await session.execute(sa.insert(db.users).values(id=user_id, email=f"u{user_id}@x"))
        job = await (box or db.outbox()).enqueue(session, greet, user_id, f"u{user_id}@x")
        await (session.commit() if commit else session.rollback())
    return job


async def redis_jobs(pool: asyncjobs.Pool, queue: str = "default") -> dict[str, Any]:
    """What Redis holds for a queue: jobs created (stats), stream entries' job ids, and
    the number of job records."""
    keys = pool.keys(queue)
    stats = await pool.client.hgetall(keys.stats)
    entries = await pool.client.xrange(keys.stream)
    records = [k async for k in pool.client.scan_iter(match=f"{keys.job_prefix}*", count=1000)]
    return {"created": int(stats.get(b"enqueued", 0)),
            "stream": [fields[b"i"].decode() for _, fields in entries],
            "records": len(records)}


async def until(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


pytestmark = pytest.mark.asyncio


# -- the transaction decides ----------------------------------------------------------------


async def test_rollback_leaves_no_job(db: Database, real: Backend) -> None:
    await signup(db, 1, commit=False)
    async with real.pool() as pool:
        assert await db.relay().relay_pending(pool) == 0
        assert await redis_jobs(pool) == {"created": 0, "stream": [], "records": 0}
    assert await db.rows() == []


async def test_commit_yields_exactly_one_job_as_pool_enqueue_writes_it(
        db: Database, real: Backend) -> None:
    options: dict[str, Any] = {"queue": "mail", "timeout": 10, "max_tries": 3,
                               "result_ttl": 600, "headers": {"tenant": "acme"}}
    async with db.session() as session, session.begin():
        job = await db.outbox().enqueue(session, greet.options(job_id="welcome:7", **options),
                                        7, "ada@example.com")
    assert (job.id, job.queue) == ("welcome:7", "mail")
    async with real.pool() as pool:
        assert await db.relay().relay_pending(pool) == 1
        assert await db.relay().relay_pending(pool) == 0
        direct = await pool.enqueue(greet.options(job_id="direct:7", **options), 7,
                                    "ada@example.com")
        relayed, written = [await pool.client.hgetall(pool.keys("mail").job(i))
                            for i in (job.id, direct.id)]
        assert relayed.keys() == written.keys() == {b"j", b"a", b"s", b"e"}
        assert relayed[b"j"] == written[b"j"]  # the spec, byte for byte
        assert (relayed[b"s"], relayed[b"a"]) == (b"queued", b"0")
        assert (await redis_jobs(pool, "mail"))["stream"] == ["welcome:7", "direct:7"]
        assert await job.handle(pool).status() is asyncjobs.JobState.QUEUED
    assert await db.rows() == []  # relayed rows are deleted by default


async def test_enqueue_many_by_reference_and_by_name(db: Database, real: Backend) -> None:
    async with db.session() as session, session.begin():
        jobs = await db.outbox().enqueue_many(session, [
            asyncjobs.call(greet, 1, "a@x"), asyncjobs.call("greet", 2, "b@x")])
        assert await db.outbox().enqueue_many(session, []) == []
    async with real.pool() as pool:
        assert await db.relay().relay_pending(pool) == 2
        assert (await redis_jobs(pool))["stream"] == [j.id for j in jobs]
        info = await jobs[1].handle(pool).info()
        assert (info.task, info.args) == ("greet", [2, "b@x"])


async def test_the_default_outbox_writes_to_asyncjobs_outbox(tmp_path: Any,
                                                             real: Backend) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/default.db")
    try:
        await outbox.create_all(engine)
        await outbox.create_all(engine)  # idempotent
        async with AsyncSession(engine) as session, session.begin():
            job = await outbox.enqueue(session, greet, 1, "a@x")
            await outbox.enqueue_many(session, [asyncjobs.call(greet, 2, "b@x")])
        async with engine.begin() as conn:  # a Core connection works as well
            await outbox.enqueue(conn, greet, 3, "c@x")
        async with real.pool() as pool:
            assert await outbox.Relay(engine).relay_pending(pool) == 3
            assert (await job.handle(pool).info()).args == [1, "a@x"]
    finally:
        await engine.dispose()


async def test_a_bad_argument_fails_inside_the_transaction(db: Database) -> None:
    async def signup_with(*args: Any) -> None:
        async with db.session() as session, session.begin():
            await session.execute(sa.insert(db.users).values(id=1, email="a@x"))
            await db.outbox().enqueue(session, greet, *args)

    with pytest.raises(asyncjobs.SerializationError, match="address"):
        await signup_with(1, object())  # the transaction rolls back: no user either
    with pytest.raises(TypeError):
        await signup_with(1)
    assert await db.rows() == []
    async with db.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(db.users))).scalar() == 0


# -- rows that cannot be relayed --------------------------------------------------------------


def _row(job_id: str, **changes: Any) -> dict[str, Any]:
    spec = outbox.Outbox()._encoder.prepare(asyncjobs.call(greet, 1, "a@x"), job_id)[1].spec
    return {"queue": "default", "job_id": job_id, "spec": spec, "delay_ms": 0, "due_at_ms": 0,
            "expires_in_ms": 0, "expires_at_ms": 0, "created_at_ms": int(time.time() * 1000),
            "status": outbox.PENDING, **changes}


async def test_bad_rows_are_marked_failed_and_never_block_the_rows_behind(
        db: Database, real: Backend) -> None:
    bad = {
        "unknown": _row("b1", queue="elsewhere"),
        "name": _row("b2", queue="two words"),
        "spec": _row("b3", spec=b"\xc1 not msgpack"),
        "delay": _row("b4", delay_ms=-5),
        "job id": _row("", spec=b"\x90"),
    }
    good = [_row(f"g{i}") for i in range(5)]
    await db.execute(sa.insert(db.table), [*bad.values(), *good])
    async with real.pool() as pool:
        relay = db.relay(batch_size=2, queues=["default"])
        assert await relay.relay_pending(pool) == 10
        assert (await redis_jobs(pool))["stream"] == [f"g{i}" for i in range(5)]
        assert await relay.relay_pending(pool) == 0
    rows = {r.job_id: r for r in await db.rows()}
    assert {r.status for r in rows.values()} == {outbox.FAILED} and len(rows) == 5
    assert rows["b1"].error == "unknown queue 'elsewhere': this relay serves default"
    assert "invalid queue name 'two words'" in rows["b2"].error
    assert rows["b3"].error.startswith("its spec cannot be decoded: ")
    assert rows["b4"].error.startswith("delay_ms must be an integer from 0 to ")
    assert rows[""].error.startswith("job_id must be a non-empty str")
    assert all(r.done_at_ms for r in rows.values())


async def test_a_job_redis_refuses_fails_its_row_alone(db: Database, real: Backend) -> None:
    await db.execute(sa.insert(db.table), [_row("ok-1"), _row("taken"), _row("ok-2")])
    async with real.pool() as pool:
        await pool.client.set(pool.keys("default").job("taken"), "not a hash")
        assert await db.relay().relay_pending(pool) == 3
        assert (await redis_jobs(pool))["stream"] == ["ok-1", "ok-2"]
    [row] = await db.rows()
    assert row.job_id == "taken" and row.status == outbox.FAILED
    assert row.error.startswith("Redis refused the job: its key ")


async def test_a_row_relayed_twice_creates_one_job(db: Database, real: Backend) -> None:
    """What a relay killed between the Redis write and the marking leaves: a pending row
    whose job exists. The next relay's write is a no-op."""
    await db.execute(sa.insert(db.table), [_row("once")])
    async with real.pool() as pool:
        assert await db.relay(keep=60).relay_pending(pool) == 1
        await db.execute(sa.update(db.table).values(status=outbox.PENDING))
        assert await db.relay(keep=60).relay_pending(pool) == 1
        assert await redis_jobs(pool) == {"created": 1, "stream": ["once"], "records": 1}
    [row] = await db.rows()
    assert row.status == outbox.RELAYED and row.done_at_ms


async def test_a_full_redis_leaves_the_rows_pending(db: Database,
                                                    fresh_redis: RedisServer) -> None:
    await db.execute(sa.insert(db.table), [_row("a"), _row("b")])
    async with asyncjobs.create_pool(fresh_redis.url, retry_for=0.1) as pool:
        await pool.client.config_set("maxmemory", 1)
        with pytest.raises(Exception, match=r"(?i)maxmemory|full"):
            await db.relay().relay_pending(pool)
        assert await db.statuses() == {outbox.PENDING: 2}
        await pool.client.config_set("maxmemory", 0)
        assert await db.relay().relay_pending(pool) == 2
        assert (await redis_jobs(pool))["stream"] == ["a", "b"]


# -- time -------------------------------------------------------------------------------------


async def test_delay_counts_from_the_enqueue_on_the_database_clock(
        db: Database, real: Backend) -> None:
    async with db.session() as session, session.begin():
        waited = await db.outbox().enqueue(session, greet.options(delay=60), 1, "a@x")
        passed = await db.outbox().enqueue(session, greet.options(delay=30, expires=40), 2,
                                           "b@x")
        fresh = await db.outbox().enqueue(session, greet.options(delay=60, expires=120), 3,
                                          "c@x")
    c = db.table.c
    for job_id in (waited.id, passed.id):  # these rows waited 50 s before the relay ran
        await db.execute(sa.update(db.table).where(c.job_id == job_id)
                         .values(created_at_ms=c.created_at_ms - 50_000))
    async with real.pool() as pool:
        assert await db.relay().relay_pending(pool) == 3
        now_ms = int(time.time() * 1000)
        rec = {j.id: await pool.client.hgetall(pool.keys("default").job(j.id))
               for j in (waited, passed, fresh)}
    assert rec[waited.id][b"s"] == b"scheduled"
    assert abs(int(rec[waited.id][b"d"]) - (now_ms + 10_000)) < 2_000  # 60 - 50 s left
    assert rec[passed.id][b"s"] == b"queued"  # its delay passed while it waited
    assert rec[passed.id][b"x"] == b"1"  # and its expiry too: already past, on any clock
    assert abs(int(rec[fresh.id][b"d"]) - (now_ms + 60_000)) < 2_000
    assert abs(int(rec[fresh.id][b"x"]) - (now_ms + 120_000)) < 2_000


async def test_an_expiry_that_passed_ends_the_job_expired_never_run(
        db: Database, real: Backend) -> None:
    async with db.session() as session, session.begin():
        job = await db.outbox().enqueue(session, greet.options(expires=5), 1, "a@x")
    c = db.table.c
    await db.execute(sa.update(db.table).values(created_at_ms=c.created_at_ms - 6_000))
    async with real.pool() as pool:
        await db.relay().relay_pending(pool)
        await real.run(real.worker([greet], burst=True))
        assert await job.handle(pool).status() is asyncjobs.JobState.EXPIRED


# -- the relay at work ------------------------------------------------------------------------


async def test_the_relay_in_a_worker_runs_the_job_with_the_workers_own_state(
        db: Database, real: Backend) -> None:
    @contextlib.asynccontextmanager
    async def lifespan(worker: asyncjobs.Worker) -> AsyncIterator[dict[str, str]]:
        yield {"mine": "yes"}

    @asyncjobs.task(name="greet")
    async def state_greet(ctx: Context, user_id: int, address: str) -> str:
        return f"{ctx.state['mine']} {user_id}"

    relay = db.relay(poll=0.05)
    worker = real.worker([state_greet], lifespan=relay.wrap(lifespan))
    async with running(real, worker), real.pool() as pool:
        job = await signup(db, 5)
        handle = job.handle(pool)
        await until(lambda: exists(handle), 10, "the relay")
        assert await handle.result(timeout=10) == "yes 5"
        assert (await pool.client.get(relay.lease_key(real.prefix))).startswith(
            worker.name.encode())
    assert await db.rows() == []
    async with real.pool() as pool:  # released at shutdown
        assert await pool.client.get(relay.lease_key(real.prefix)) is None


async def test_one_relay_leads_and_another_takes_over_when_it_stops(
        db: Database, real: Backend) -> None:
    relay_a = db.relay(poll=0.05, lease_ttl=1, prefix=real.prefix, redis_url=real.url)
    relay_b = db.relay(poll=0.05, lease_ttl=1, prefix=real.prefix, redis_url=real.url)
    a = asyncio.create_task(relay_a.run(holder="a"))
    await asyncio.sleep(0.2)
    b = asyncio.create_task(relay_b.run(holder="b"))
    async with real.pool() as pool:
        key = relay_a.lease_key(real.prefix)
        try:
            first = await signup(db, 1)
            await until(lambda: exists(first.handle(pool)), 10, "relay a")
            assert (await pool.client.get(key)).startswith(b"a|")
            relay_a.stop()
            await a
            second = await signup(db, 2)
            await until(lambda: exists(second.handle(pool)), 10, "relay b")
            assert (await pool.client.get(key)).startswith(b"b|")
        finally:
            relay_a.stop()
            relay_b.stop()
            await asyncio.gather(a, b)
        assert (await redis_jobs(pool))["created"] == 2


async def test_notify_wakes_the_relay_at_once(tmp_path: Any, real: Backend) -> None:
    async with database("postgresql", tmp_path) as db:
        relay = db.relay(poll=30, redis_url=real.url, prefix=real.prefix)
        task = asyncio.create_task(relay.run())
        try:
            async with real.pool() as pool:
                await until(lambda: _leads(pool, relay, real.prefix), 5, "the lease")
                await asyncio.sleep(0.1)  # past the relay's first pass: asleep for 30 s
                started = time.monotonic()
                job = await signup(db, 1)
                await until(lambda: exists(job.handle(pool)), 5, "the relay")
                assert time.monotonic() - started < 1.0
        finally:
            relay.stop()
            await task


async def test_kept_rows_are_purged_after_their_time(db: Database, real: Backend) -> None:
    relay = db.relay(keep=0.3, poll=0.05, redis_url=real.url, prefix=real.prefix)
    task = asyncio.create_task(relay.run())
    try:
        await signup(db, 1)
        await until(lambda: _statuses_are(db, {outbox.RELAYED: 1}), 10, "a relayed row")
        await until(lambda: _statuses_are(db, {}), 10, "the purge")
    finally:
        relay.stop()
        await task


async def _leads(pool: asyncjobs.Pool, relay: outbox.Relay, prefix: str) -> bool:
    return await pool.client.get(relay.lease_key(prefix)) is not None


async def _statuses_are(db: Database, expected: dict[str, int]) -> bool:
    return await db.statuses() == expected
