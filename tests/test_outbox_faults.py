"""The outbox relay under injected faults, at exact points: a relay whose batch is overtaken
by another relay, garbage the database driver cannot even read, keys of ours of the wrong
type, a relay killed (or its database connection killed) between writing Redis and marking
its rows, Redis lost mid-batch, a lease lost mid-batch, an unknown task, a poison row in a
running relay, a database clock that differs from Redis's. Real PostgreSQL and real Redis;
each test can fail. Jobs are counted in Redis by job id: none lost, none twice."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import asyncjobs
from asyncjobs import outbox
from asyncjobs._producer.pool import Pool
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._scheduling.leader import Lease
from asyncjobs.outbox._db import Claimed, OutboxStore, Outcome
from asyncjobs.outbox._loop import RelayLoop, _unavailable
from asyncjobs.outbox._wake import Listener, ListenLost

from .conftest import Backend
from .test_outbox import (
    POSTGRES_URL,
    Database,
    _row,
    database,
    greet,
    redis_jobs,
    signup,
    until,
)

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Database]:
    """The test's database: SQLite, then PostgreSQL."""
    async with database(request.param, tmp_path) as opened:
        yield opened


@pytest_asyncio.fixture
async def sqlite_db(tmp_path: Any) -> AsyncIterator[Database]:
    async with database("sqlite", tmp_path) as opened:
        yield opened


@pytest_asyncio.fixture
async def pg_db(tmp_path: Any) -> AsyncIterator[Database]:
    async with database("postgresql", tmp_path) as opened:
        yield opened


def pause_after_the_write(monkeypatch: pytest.MonkeyPatch
                          ) -> tuple[asyncio.Event, asyncio.Event]:
    """The first batch moved to Redis stops before its rows are marked: ``written`` is set
    then, and it goes on once ``go`` is set. Later batches go straight through."""
    written, go = asyncio.Event(), asyncio.Event()
    move = RelayLoop._move
    calls = 0

    async def paused(self: RelayLoop, claimed: Claimed) -> Outcome:
        nonlocal calls
        calls += 1
        first = calls == 1
        outcome = await move(self, claimed)
        if first:
            written.set()
            await go.wait()
        return outcome

    monkeypatch.setattr(RelayLoop, "_move", paused)
    return written, go


def assert_each_once(found: dict[str, Any], expected: list[str]) -> None:
    assert found["created"] == len(expected), ("created", found, expected)
    assert sorted(found["stream"]) == sorted(expected), ("stream", found, expected)
    assert found["records"] == len(expected)


# -- two relays: one overtaken mid-batch ------------------------------------------------------


@pytest.mark.parametrize("verdict", ["relayed", "failed"])
async def test_a_relay_overtaken_mid_batch_never_marks_a_row_that_took_its_rows_id(
        db: Database, real: Backend, monkeypatch: pytest.MonkeyPatch, verdict: str) -> None:
    """Relay A writes its batch to Redis and stalls before marking it (a slow network, a
    lease that changed hands meanwhile); relay B relays the same rows and deletes them; a
    new job is committed. On SQLite the table is empty again, so the new row gets the id
    of a row A holds (SQLite reuses the largest rowid when it was deleted): A's marking
    must not delete it, or a committed job is lost without a trace; nor mark it failed
    with the reason A found for the old row (A serves other queues than B)."""
    written, go = pause_after_the_write(monkeypatch)
    first = await signup(db, 1)
    async with real.pool() as pool:
        stale_relay = db.relay(**({"queues": ["elsewhere"]} if verdict == "failed" else {}))
        stale = asyncio.create_task(stale_relay.relay_pending(pool))
        await asyncio.wait_for(written.wait(), 10)
        await db.relay().relay_pending(pool)  # B (on PostgreSQL: A's rows are locked)
        second = await signup(db, 2)
        go.set()
        await asyncio.wait_for(stale, 10)
        await db.relay().relay_pending(pool)
        if db.kind == "postgresql" and verdict == "failed":
            # A held the row's lock: B never saw it, and A's verdict stands.
            assert_each_once(await redis_jobs(pool), [second.id])
            assert [(r.job_id, r.status) for r in await db.rows()] == [
                (first.id, outbox.FAILED)]
        else:
            assert_each_once(await redis_jobs(pool), [first.id, second.id])
            assert await db.rows() == []


# -- garbage the driver cannot read ----------------------------------------------------------


async def test_text_that_is_not_utf8_in_a_sqlite_row_fails_that_row_alone(
        sqlite_db: Database, real: Backend) -> None:
    """A row written by another program, with bytes that are not UTF-8 in a text column:
    Python's sqlite3 cannot even read it ("Could not decode to UTF-8"), which failed every
    claim: the relay retried for ever and no row behind it moved."""
    db = sqlite_db
    await db.execute(sa.insert(db.table), [_row("ok-1")])
    spec = _row("x")["spec"]
    for column in ("queue", "job_id"):
        values = {"queue": "'default'", "job_id": f"'bad-{column}'",
                  column: "CAST(x'66ff00' AS TEXT)"}
        await db.execute(sa.text(
            "INSERT INTO asyncjobs_outbox (queue, job_id, spec, created_at_ms, status) "
            f"VALUES ({values['queue']}, {values['job_id']}, :spec, 0, 'pending')"),
            {"spec": spec})
    await db.execute(sa.insert(db.table), [_row("ok-2")])
    async with real.pool() as pool:
        assert await asyncio.wait_for(db.relay().relay_pending(pool), 10) == 4
        assert (await redis_jobs(pool))["stream"] == ["ok-1", "ok-2"]
    failed = [(r.status, r.error) for r in await _raw_rows(db)]
    assert len(failed) == 2 and all(status == outbox.FAILED for status, _ in failed)
    assert "invalid queue name" in failed[0][1] and "not valid text" in failed[0][1]
    assert "not valid text" in failed[1][1]


async def _raw_rows(db: Database) -> list[Any]:
    """The rows' status and error (the columns Python can read whatever the row holds)."""
    async with db.engine.connect() as conn:
        return list(await conn.execute(sa.select(db.table.c.status, db.table.c.error)
                                       .order_by(db.table.c.id)))


# -- keys of ours of the wrong type -----------------------------------------------------------


async def test_a_stream_of_the_wrong_type_fails_no_row(db: Database,
                                                       fresh_redis: RedisServer) -> None:
    """The queue's stream holding a string: Redis refuses every write to that queue, for
    no fault of the rows': they stay pending (the README: 'a key of ours of the wrong type
    ... leaves the batch pending'), and are relayed once it is repaired."""
    await db.execute(sa.insert(db.table), [_row("a"), _row("b")])
    async with asyncjobs.create_pool(fresh_redis.url) as pool:
        await pool.client.set(pool.keys("default").stream, "garbage")
        with pytest.raises(Exception, match="WRONGTYPE"):
            await db.relay(lease=False).relay_pending(pool)
        assert await db.statuses() == {outbox.PENDING: 2}
        await pool.client.delete(pool.keys("default").stream)
        assert await db.relay().relay_pending(pool) == 2
        assert_each_once(await redis_jobs(pool), ["a", "b"])


async def test_a_key_of_ours_of_the_wrong_type_is_logged_once_not_at_every_retry(
        db: Database, fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The README: a Redis that refuses every write for now ('a key of ours of the wrong
    type') is 'logged once, and its end once'. It was an 'internal error' with a traceback
    at every retry."""
    caplog.set_level(logging.INFO, "asyncjobs.outbox")
    failures = count_failures(monkeypatch)
    await db.execute(sa.insert(db.table), [_row("a")])
    async with asyncjobs.create_pool(fresh_redis.url) as pool:
        await pool.client.set(pool.global_keys.queues, "garbage")
        relay = db.relay(lease=False, poll=0.05)
        task = asyncio.create_task(relay.run(pool=pool))
        try:
            await until(lambda: _at_least(failures, 4), 20, "four failed batches")
            await pool.client.delete(pool.global_keys.queues)
            await until(lambda: _statuses_are(db, {}), 20, "the relay after the repair")
            await until(lambda: _logged(caplog, "working again"), 10, "the end logged")
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        assert_each_once(await redis_jobs(pool), ["a"])
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(r.exc_info for r in loud), [r.getMessage() for r in loud]
    assert len(loud) == 2, [r.getMessage() for r in loud]  # the outage, then its end
    assert "redis unavailable" in loud[0].getMessage()
    assert "WRONGTYPE" in loud[0].getMessage()


def count_failures(monkeypatch: pytest.MonkeyPatch) -> list[Exception]:
    """Record each failure the relay loop handles (and retries)."""
    failures: list[Exception] = []
    failed = RelayLoop._failed

    async def counted(self: RelayLoop, exc: Exception) -> None:
        failures.append(exc)
        await failed(self, exc)

    monkeypatch.setattr(RelayLoop, "_failed", counted)
    return failures


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _statuses_are(db: Database, expected: dict[str, int]) -> bool:
    return await db.statuses() == expected


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


# -- killed between the write and the marking ------------------------------------------------


class Killed(BaseException):
    """Stands for the process dying at the point it is raised (not an Exception: nothing
    on the way out handles it)."""


async def test_a_relay_killed_between_the_write_and_the_marking_creates_each_job_once(
        db: Database, real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    async with db.session() as session, session.begin():
        jobs = await db.outbox().enqueue_many(
            session, [asyncjobs.call(greet, i, f"{i}@x") for i in range(30)])
    mark = OutboxStore.mark

    async def dies(self: OutboxStore, conn: Any, outcome: Outcome, keep: bool) -> None:
        raise Killed

    monkeypatch.setattr(OutboxStore, "mark", dies)
    async with real.pool() as pool:
        with pytest.raises(Killed):
            await db.relay(batch_size=10).relay_pending(pool)
        assert (await redis_jobs(pool))["created"] == 10  # the first batch: in Redis
        assert await db.statuses() == {outbox.PENDING: 30}
        monkeypatch.setattr(OutboxStore, "mark", mark)
        assert await db.relay(batch_size=10).relay_pending(pool) == 30
        assert_each_once(await redis_jobs(pool), [j.id for j in jobs])
    assert await db.rows() == []


async def test_the_database_connection_killed_mid_batch_is_an_outage_retried(
        pg_db: Database, real: Backend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL terminates the relay's connection after the batch is in Redis, before its
    rows are marked (a database failover, an admin's pg_terminate_backend): the locks go
    with it, the running relay logs an outage (no traceback), writes the batch again (a
    no-op) and goes on."""
    db = pg_db
    caplog.set_level(logging.INFO, "asyncjobs.outbox")
    failures = count_failures(monkeypatch)
    mark = OutboxStore.mark
    killed = 0

    async def killed_once(self: OutboxStore, conn: Any, outcome: Outcome, keep: bool) -> None:
        nonlocal killed
        if not killed:
            killed += 1
            async with db.engine.connect() as other:
                pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar()
                await other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await mark(self, conn, outcome, keep)

    monkeypatch.setattr(OutboxStore, "mark", killed_once)
    expected = [(await signup(db, n)).id for n in range(5)]
    async with real.pool() as pool:
        relay = db.relay(lease=False, poll=0.05)
        task = asyncio.create_task(relay.run(pool=pool))
        try:
            await until(lambda: _statuses_are(db, {}), 20, "the relay after the kill")
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        assert_each_once(await redis_jobs(pool), expected)
    assert killed == 1 and len(failures) == 1, failures
    assert "the database unavailable" in caplog.text
    assert "internal error" not in caplog.text
    assert not any(r.exc_info for r in caplog.records)


async def test_listen_on_a_pooled_connection_the_server_closed_is_an_outage(
        pg_db: Database) -> None:
    """PostgreSQL terminated a connection idle in the pool (a restart, an admin's
    pg_terminate_backend); the relay's listener is handed it next: asyncpg refuses LISTEN in
    its own words ("connection is closed"), which SQLAlchemy never wraps. That is an outage
    (retried, logged as one: it was an "internal error" with a traceback), and the dead
    connection leaves the pool (it went back, and failed the next claim too)."""
    engine = pg_db.engine
    async with engine.connect() as conn:  # now idle in the pool
        pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar()
    killer = create_async_engine(POSTGRES_URL)
    try:
        async with killer.connect() as other:
            await other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await killer.dispose()
    await asyncio.sleep(0.2)  # the pooled connection hears its end
    listener = Listener(engine, "aj_probe", asyncio.Event())
    with pytest.raises(ListenLost) as lost:
        await listener.open()
    assert _unavailable(lost.value) == "the database"
    assert not listener.listening
    await listener.open()  # a new connection, not the dead one back from the pool
    assert listener.listening
    await listener.close()
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar() != pid


# -- Redis lost mid-batch ---------------------------------------------------------------------


async def test_redis_lost_between_two_queues_of_a_batch_leaves_it_all_pending(
        db: Database, real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's first queue is written, then Redis goes away for the second: no row is
    marked (neither relayed nor failed), and the next pass creates only what is missing."""
    await db.execute(sa.insert(db.table), [_row("a1", queue="a"), _row("b1", queue="b"),
                                           _row("a2", queue="a"), _row("b2", queue="b")])
    write = Pool.write_jobs
    calls: list[str] = []

    async def lost_at_b(self: Pool, queue: str, jobs: Any, **kw: Any) -> dict[int, str]:
        calls.append(queue)
        if queue == "b" and calls.count("b") == 1:
            raise asyncjobs.RedisUnavailable("injected: Redis went away")
        return await write(self, queue, jobs, **kw)

    monkeypatch.setattr(Pool, "write_jobs", lost_at_b)
    async with real.pool() as pool:
        with pytest.raises(asyncjobs.RedisUnavailable):
            await db.relay().relay_pending(pool)
        assert await db.statuses() == {outbox.PENDING: 4}
        assert await db.relay().relay_pending(pool) == 4
        assert_each_once(await redis_jobs(pool, "a"), ["a1", "a2"])
        assert_each_once(await redis_jobs(pool, "b"), ["b1", "b2"])
    assert calls == ["a", "b", "a", "b"]


# -- the lease ----------------------------------------------------------------------------------


async def test_a_relay_that_loses_its_lease_mid_batch_stops_after_that_batch(
        db: Database, real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another relay takes the lease while this one is writing its first batch (this one's
    lease expired meanwhile): it finishes that batch, starts no other, and another relay
    relays the rest, each job once."""
    expected = [f"j{i}" for i in range(6)]
    await db.execute(sa.insert(db.table), [_row(j) for j in expected])
    other = "other|" + "0" * 32  # a holder's value: left alone
    moves = 0
    move, renew, acquire = RelayLoop._move, Lease.renew, Lease.acquire
    renewals: list[bool] = []
    acquired: list[bool] = []

    async def overtaken(self: RelayLoop, claimed: Claimed) -> Outcome:
        nonlocal moves
        moves += 1
        outcome = await move(self, claimed)
        if moves == 1:
            assert self.lease is not None
            await self.pool.client.set(self.lease.key, other, px=60_000)
            self.lease.renew_at = 0.0  # renewed before the next batch
        return outcome

    async def counted_renew(self: Lease) -> bool:
        renewals.append(await renew(self))
        return renewals[-1]

    async def counted_acquire(self: Lease) -> bool:
        acquired.append(await acquire(self))
        return acquired[-1]

    monkeypatch.setattr(RelayLoop, "_move", overtaken)
    monkeypatch.setattr(Lease, "renew", counted_renew)
    monkeypatch.setattr(Lease, "acquire", counted_acquire)
    async with real.pool() as pool:
        relay = db.relay(batch_size=2, poll=30, lease_ttl=5)
        task = asyncio.create_task(relay.run(pool=pool))
        try:
            await until(lambda: _at_least(acquired, 2), 10, "a second try for the lease")
            assert acquired == [True, False] and renewals == [False], (acquired, renewals)
            assert moves == 1
            assert (await redis_jobs(pool))["created"] == 2
            assert await db.statuses() == {outbox.PENDING: 4}
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        assert await pool.client.get(relay.lease_key(pool.prefix)) == other.encode()
        assert await db.relay().relay_pending(pool) == 4
        assert_each_once(await redis_jobs(pool), expected)


# -- a task no worker knows ---------------------------------------------------------------------


async def test_a_row_whose_task_is_unknown_ends_dead_lettered_with_its_reason(
        db: Database, real: Backend) -> None:
    """The relay cannot know the workers' tasks: it moves the job, and the worker that takes
    it dead-letters it at once, visibly, with the reason."""
    async with db.session() as session, session.begin():
        job = await db.outbox().enqueue(session, "no.such.task", 1)
    async with real.pool() as pool:
        assert await db.relay().relay_pending(pool) == 1
        await real.run(real.worker([greet], burst=True))
        info = await job.handle(pool).info()
        assert info.state is asyncjobs.JobState.FAILED
        assert "unknown task 'no.such.task'" in info.errors[-1].message
        with pytest.raises(asyncjobs.JobFailed):
            await job.handle(pool).result(timeout=5)
    assert await db.rows() == []


# -- a poison row in a running relay: no spin -------------------------------------------------


async def test_a_poison_row_is_failed_once_and_the_relay_never_spins(
        db: Database, real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    claims = count_calls(monkeypatch, OutboxStore, "claim")
    writes = count_calls(monkeypatch, Pool, "write_jobs")
    failures = count_failures(monkeypatch)
    await db.execute(sa.insert(db.table), [
        _row("good-1"), _row("poison", spec=b"\xc1" * 10), _row("deep", spec=b"\x91" * 100_000),
        _row("bad-queue", queue="two words"), _row("late", delay_ms=10**15), _row("good-2")])
    async with real.pool() as pool:
        relay = db.relay(lease=False, poll=0.1, batch_size=2)
        task = asyncio.create_task(relay.run(pool=pool))
        try:
            await until(lambda: _statuses_are(db, {outbox.FAILED: 4}), 10, "the relay")
            settled = len(claims)
            await asyncio.sleep(1.0)
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        assert_each_once(await redis_jobs(pool), ["good-1", "good-2"])
    assert not failures
    # Idle: one read of the table per poll (0.1 s), nothing written, nothing retried.
    assert len(claims) - settled <= 12, (settled, len(claims))
    assert len(writes) == 2, writes  # good-1 (batch 1), good-2 (batch 3)
    errors = {r.job_id: r.error for r in await db.rows()}
    assert set(errors) == {"poison", "deep", "bad-queue", "late"}


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[float]:
    """Record the time of each call of ``owner.name`` (an async method)."""
    calls: list[float] = []
    original: Callable[..., Awaitable[Any]] = getattr(owner, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return await original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


# -- clocks ---------------------------------------------------------------------------------------


async def test_delays_and_expiries_count_on_the_database_clock_whatever_redis_says(
        db: Database, real: Backend) -> None:
    """The database's clock an hour behind at insert (then stepped forward), or an hour
    ahead (then stepped back): a relative delay or expiry is never stretched or cut by the
    difference with anyone's clock; what is left is counted from Redis's own time."""
    async with db.session() as session, session.begin():
        ahead = await db.outbox().enqueue(session, greet.options(delay=60), 1, "a@x")
        behind = await db.outbox().enqueue(session, greet.options(expires=600), 2, "b@x")
    c = db.table.c
    hour = 3_600_000
    await db.execute(sa.update(db.table).where(c.job_id == ahead.id)
                     .values(created_at_ms=c.created_at_ms + hour))  # no time waited
    await db.execute(sa.update(db.table).where(c.job_id == behind.id)
                     .values(created_at_ms=c.created_at_ms - hour))  # waited over 600 s
    async with real.pool() as pool:
        assert await db.relay().relay_pending(pool) == 2
        seconds, micros = await pool.client.time()
        redis_now = seconds * 1000 + micros // 1000
        rec = {j.id: await pool.client.hgetall(pool.keys("default").job(j.id))
               for j in (ahead, behind)}
    assert rec[ahead.id][b"s"] == b"scheduled"
    assert abs(int(rec[ahead.id][b"d"]) - (redis_now + 60_000)) < 2_000
    assert rec[behind.id][b"s"] == b"queued"
    assert rec[behind.id][b"x"] == b"1"  # an expiry already past, on any clock: ends expired
