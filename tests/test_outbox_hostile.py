"""The outbox relay against hostile input: database URLs that can never work, a job Redis
refuses at the protocol level, a full queue beside others, a queue name no worker can serve.
Bad input gets one clear error and breaks nothing; rows are never lost or stuck."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiosqlite
import asyncpg
import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import asyncjobs
from asyncjobs import outbox
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._scheduling.leader import Lease
from asyncjobs.outbox._db import OutboxStore
from asyncjobs.outbox._loop import RelayLoop

from .conftest import Backend
from .procs import run_cli
from .test_outbox import (
    POSTGRES_URL,
    Database,
    _row,
    database,
    greet,
    need_postgres,
    redis_jobs,
)

UNUSABLE_DRIVERS = [
    ("postgresql+psycopg2://u@127.0.0.1/db", "its driver is not installed"),  # not installed
    ("sqlite+pysqlite:///x.db", "its driver is not async"),
    ("postgresql+nosuchdriver://u@127.0.0.1/db", "SQLAlchemy has no such driver"),
]


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Database]:
    """The test's database: SQLite, then PostgreSQL."""
    async with database(request.param, tmp_path) as opened:
        yield opened


def _refused_url() -> str:
    """The test database with a query argument asyncpg refuses on every connect."""
    return (sa.make_url(POSTGRES_URL).set(drivername="postgresql", query={"sslmode": "bogus"})
            .render_as_string(hide_password=False))


# -- database URLs that can never work -------------------------------------------------------


@pytest.mark.parametrize(("url", "reason"), UNUSABLE_DRIVERS)
def test_a_driver_that_cannot_be_used_is_a_configuration_error(url: str, reason: str) -> None:
    with pytest.raises(asyncjobs.ConfigurationError, match=reason) as caught:
        outbox.Relay(url)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.slow
def test_the_command_refuses_an_unusable_driver_in_one_line() -> None:
    for url, reason in UNUSABLE_DRIVERS:
        done = run_cli("outbox-relay", "--database-url", url, "--no-uvloop")
        assert done.returncode == 2, (url, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("asyncjobs: error: "), done.stderr
        assert reason in lines[0]


@pytest.mark.asyncio
async def test_a_url_its_driver_refuses_stops_the_relay_instead_of_retrying(
        real: Backend) -> None:
    need_postgres()
    relay = outbox.Relay(_refused_url(), lease=False)
    async with real.pool() as pool:
        with pytest.raises(asyncjobs.ConfigurationError,
                           match=r"cannot be used: .*unexpected keyword argument 'sslmode'"):
            await asyncio.wait_for(relay.run(pool=pool), 10)


@pytest.mark.asyncio
async def test_a_database_that_is_down_is_still_retried(
        real: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "asyncjobs.outbox")
    relay = outbox.Relay("postgresql://postgres@127.0.0.1:1/nothing", lease=False)
    async with real.pool() as pool:
        task = asyncio.create_task(relay.run(pool=pool))
        await asyncio.sleep(1.0)
        assert not task.done()
        relay.stop()
        await asyncio.wait_for(task, 10)
    assert "the database unavailable" in caplog.text


@pytest.mark.asyncio
async def test_a_url_its_driver_refuses_stops_the_relay_in_a_worker_with_one_line(
        real: Backend, caplog: pytest.LogCaptureFixture) -> None:
    need_postgres()
    relay = outbox.Relay(_refused_url(), redis_url=real.url, prefix=real.prefix)
    caplog.set_level(logging.INFO, "asyncjobs.outbox")
    async with relay.lifespan(real.worker([greet], burst=True)):
        for _ in range(200):
            if "outbox relay stopped" in caplog.text:
                break
            await asyncio.sleep(0.05)
    stopped = [r for r in caplog.records if "outbox relay stopped" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].levelno == logging.ERROR
    assert "unexpected keyword argument 'sslmode'" in stopped[0].getMessage()
    assert "internal error" not in caplog.text and not any(r.exc_info for r in caplog.records)


@pytest.mark.slow
def test_the_command_stops_on_a_url_its_driver_refuses_in_one_line(
        redis_server: RedisServer) -> None:
    need_postgres()
    done = run_cli("outbox-relay", "--database-url", _refused_url(), "--no-uvloop",
                   "--prefix", "refused", env={"ASYNCJOBS_REDIS_URL": redis_server.url},
                   timeout_s=30)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("asyncjobs: error: "), done.stderr
    assert "unexpected keyword argument 'sslmode'" in errors[0]


REFUSED_QUERIES = ["sslmode=bogus", "ssl=bogus", "command_timeout=abc"]


@pytest.mark.asyncio
@pytest.mark.parametrize("query", REFUSED_QUERIES)
async def test_every_argument_asyncpg_refuses_stops_the_relay(real: Backend, query: str) -> None:
    """An unknown argument (TypeError), a value asyncpg's own check refuses (its
    ClientConfigurationError, under SQLAlchemy's InterfaceError) or one of the wrong kind:
    none was ever going to work."""
    need_postgres()
    name, _, value = query.partition("=")
    url = sa.make_url(_refused_url()).set(query={name: value})
    relay = outbox.Relay(url.render_as_string(hide_password=False), lease=False)
    async with real.pool() as pool:
        with pytest.raises(asyncjobs.ConfigurationError, match=r"cannot be used: ") as caught:
            await asyncio.wait_for(relay.run(pool=pool), 10)
    assert len(str(caught.value).splitlines()) == 1


def _failing_hook(db: Database, how: str, times: int) -> list[int]:
    """Make ``db``'s engine raise a TypeError or ValueError from code of the user's on its
    next ``times`` connects (a ``connect`` listener, or an ``async_creator`` replacing the
    engine); returns the list the hook appends to on each call (the test empties it to
    disarm the hook)."""
    calls: list[int] = []
    if how == "listener":
        @sa.event.listens_for(db.engine.sync_engine, "connect")
        def hook(*_: Any) -> None:
            if calls == [0]:  # disarmed
                return
            calls.append(1)
            if len(calls) <= times:
                raise TypeError("a bug in the user's connect hook")
        return calls
    url = db.engine.url

    async def creator() -> Any:
        calls.append(1)
        if len(calls) <= times:
            raise ValueError("a bug in the user's creator")
        if url.get_backend_name() == "sqlite":
            return await aiosqlite.connect(url.database or "")
        return await asyncpg.connect(host=url.host, port=url.port, user=url.username,
                                     password=url.password, database=url.database)

    db.engine = create_async_engine(url, async_creator=creator)
    return calls


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["listener", "creator"])
async def test_a_connect_hook_of_the_users_that_raises_is_retried_not_blamed_on_the_url(
        db: Database, real: Backend, caplog: pytest.LogCaptureFixture, how: str) -> None:
    """A TypeError or ValueError raised by the user's code while connecting is not the
    driver refusing the URL: the relay logs it for what it is and retries."""
    await db.execute(sa.insert(db.table), [_row("after-the-hook")])
    original = db.engine
    await original.dispose()  # a pooled connection would never call the hook
    calls = _failing_hook(db, how, times=3)
    caplog.set_level(logging.INFO, "asyncjobs.outbox")
    try:
        relay = db.relay(lease=False, poll=0.05)
        async with real.pool() as pool:
            task = asyncio.create_task(relay.run(pool=pool))
            try:
                for _ in range(200):
                    if task.done() or (await redis_jobs(pool))["stream"]:
                        break
                    await asyncio.sleep(0.05)
                assert not task.done(), task.exception()
                assert (await redis_jobs(pool))["stream"] == ["after-the-hook"]
            finally:
                relay.stop()
                await asyncio.wait_for(task, 10)
    finally:
        called, calls[:] = len(calls), [0]
        if db.engine is not original:
            await db.engine.dispose()
            db.engine = original
    assert called > 3
    assert "cannot be used" not in caplog.text
    raised = [r.getMessage() for r in caplog.records if "connecting to the database raised"
              in r.getMessage()]
    assert len(raised) >= 3 and "a bug in the user's" in raised[0], caplog.text
    assert "not the URL's doing" in raised[0]


# -- rows that hold up no other ----------------------------------------------------------------


def limit_read_before_it_was_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay reads proto-max-bulk-len once a minute: as if it had read it before the
    limit (1 MB here) was lowered, so that Redis itself refuses the job. Redis's real
    refusal races its closing of the connection (while the rest of the value is still
    being sent, a reset can lose the reply, and the write then looks like an outage: CI
    saw it), so the refusal is played here as Redis makes it: the script calls before the
    one holding the job (500 jobs each) are run, then "Protocol error"."""
    from redis.exceptions import ResponseError

    from asyncjobs._producer.pool import Pool

    async def stale(self: Pool) -> int:
        return 512 * 1024 * 1024

    write = Pool.write_jobs

    async def refusing(self: Pool, queue: str, jobs: Any, *,
                       count_refused: bool = True) -> dict[int, str]:
        for at, job in enumerate(jobs):
            if len(job.spec) > 1024 * 1024:
                if at >= 500:
                    await write(self, queue, jobs[: at // 500 * 500],
                                count_refused=count_refused)
                raise ResponseError("Protocol error: invalid bulk length")
        return await write(self, queue, jobs, count_refused=count_refused)

    monkeypatch.setattr(Pool, "_largest_value", stale)
    monkeypatch.setattr(Pool, "write_jobs", refusing)


@pytest.mark.asyncio
async def test_a_job_redis_refuses_at_the_protocol_level_fails_alone(
        db: Database, fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    limit_read_before_it_was_lowered(monkeypatch)
    big = outbox.Outbox()._encoder.prepare(asyncjobs.call(greet, 1, "x" * 2_000_000), "big")
    await db.execute(sa.insert(db.table),
                     [_row("ok-1"), _row("big", spec=big[1].spec), _row("ok-2")])
    async with asyncjobs.create_pool(fresh_redis.url) as pool:
        await pool.client.config_set("proto-max-bulk-len", str(1024 * 1024))
        assert await asyncio.wait_for(db.relay().relay_pending(pool), 30) == 3
        assert await redis_jobs(pool) == {"created": 2, "stream": ["ok-1", "ok-2"],
                                          "records": 2}
    [row] = await db.rows()
    assert (row.job_id, row.status) == ("big", outbox.FAILED)
    assert row.error.startswith("Redis refused the job: ")


@pytest.mark.asyncio
async def test_a_job_larger_than_redis_takes_fails_alone_before_it_is_sent(
        db: Database, fresh_redis: RedisServer) -> None:
    """Far over ``proto-max-bulk-len``, Redis would close the connection while the job is
    being sent, which looks like an outage (the batch would wait for ever): the relay
    reads the limit and fails such a row before sending it."""
    big = outbox.Outbox()._encoder.prepare(asyncjobs.call(greet, 1, "x" * 40_000_000), "big")
    await db.execute(sa.insert(db.table),
                     [_row("ok-1"), _row("big", spec=big[1].spec), _row("ok-2")])
    async with asyncjobs.create_pool(fresh_redis.url, retry_for=0.5) as pool:
        await pool.client.config_set("proto-max-bulk-len", str(1024 * 1024))
        assert await asyncio.wait_for(db.relay().relay_pending(pool), 60) == 3
        assert await redis_jobs(pool) == {"created": 2, "stream": ["ok-1", "ok-2"],
                                          "records": 2}
    [row] = await db.rows()
    assert (row.job_id, row.status) == ("big", outbox.FAILED)
    assert row.error.startswith("the job is larger than Redis takes: ")
    assert row.error.endswith("over its proto-max-bulk-len of 1,048,576")


@pytest.mark.asyncio
async def test_a_replica_after_a_failover_fails_no_row(db: Database,
                                                       fresh_redis: RedisServer) -> None:
    """A relay pointed at a replica (a failover it has not followed yet): every write is
    refused with READONLY, which is not the rows' fault; they stay pending."""
    with RedisServer() as replica:
        async with asyncjobs.create_pool(replica.url) as pool:
            host, port = fresh_redis.url.removeprefix("redis://").split("/")[0].split(":")
            await pool.client.replicaof(host, int(port))
            await db.execute(sa.insert(db.table), [_row("a"), _row("b")])
            with pytest.raises(Exception, match="read only replica"):
                await db.relay(lease=False).relay_pending(pool)
            assert await db.statuses() == {outbox.PENDING: 2}


@pytest.mark.asyncio
async def test_a_key_of_ours_of_the_wrong_type_fails_no_row(db: Database,
                                                            fresh_redis: RedisServer) -> None:
    """The registry of queue names holding something else: Redis refuses the whole write,
    for no fault of the rows'; they stay pending (and are relayed once it is repaired)."""
    await db.execute(sa.insert(db.table), [_row("a"), _row("b")])
    async with asyncjobs.create_pool(fresh_redis.url) as pool:
        await pool.client.set(pool.global_keys.queues, "garbage")
        with pytest.raises(Exception, match="WRONGTYPE"):
            await db.relay(lease=False).relay_pending(pool)
        assert await db.statuses() == {outbox.PENDING: 2}
        await pool.client.delete(pool.global_keys.queues)
        assert await db.relay().relay_pending(pool) == 2


@pytest.mark.asyncio
async def test_an_outage_fails_no_row(db: Database, fresh_redis: RedisServer) -> None:
    """A write that loses its connection while Redis does not answer either is an outage:
    the rows stay pending, none is blamed."""
    await db.execute(sa.insert(db.table), [_row("a"), _row("b")])
    async with asyncjobs.create_pool(fresh_redis.url, retry_for=0.3) as pool:
        await pool.client.ping()
        fresh_redis.stop()
        with pytest.raises(asyncjobs.RedisUnavailable):
            await db.relay(lease=False).relay_pending(pool)
        assert await db.statuses() == {outbox.PENDING: 2}
        fresh_redis.start()
        assert await db.relay().relay_pending(pool) == 2
        assert (await redis_jobs(pool))["stream"] == ["a", "b"]


@pytest.mark.asyncio
async def test_a_job_redis_refuses_in_a_big_batch_never_creates_the_others_twice(
        db: Database, fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """600 jobs of one queue are two enqueue scripts in one pipeline: the first is written,
    the second refused; relayed again one by one, the first's jobs are found, not created."""
    limit_read_before_it_was_lowered(monkeypatch)
    big = outbox.Outbox()._encoder.prepare(asyncjobs.call(greet, 1, "x" * 2_000_000), "big")
    good = [f"g{i}" for i in range(600)]
    await db.execute(sa.insert(db.table),
                     [*(_row(j) for j in good[:550]), _row("big", spec=big[1].spec),
                      *(_row(j) for j in good[550:])])
    async with asyncjobs.create_pool(fresh_redis.url) as pool:
        await pool.client.config_set("proto-max-bulk-len", str(1024 * 1024))
        assert await asyncio.wait_for(db.relay().relay_pending(pool), 60) == 601
        found = await redis_jobs(pool)
    assert found["created"] == found["records"] == 600
    assert sorted(found["stream"]) == sorted(good)
    assert [(r.job_id, r.status) for r in await db.rows()] == [("big", outbox.FAILED)]


@pytest.mark.asyncio
async def test_a_full_queue_holds_up_no_other_queue(
        db: Database, real: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "asyncjobs.outbox")
    await db.execute(sa.insert(db.table), [
        _row("full-1", queue="full"), _row("full-2", queue="full"),
        _row("other-1", queue="other"), _row("full-3", queue="full"),
        _row("other-2", queue="other")])
    async with real.pool() as pool:
        await pool.admin.set_max_length("full", 1)
        await pool.enqueue(greet.options(queue="full", job_id="already"), 0, "a@x")
        relay = db.relay(batch_size=2)  # the first batch is all the full queue's
        assert await relay.relay_pending(pool) == 2
        assert (await redis_jobs(pool, "other"))["stream"] == ["other-1", "other-2"]
        assert (await redis_jobs(pool, "full"))["stream"] == ["already"]
        assert sorted(r.job_id for r in await db.rows()) == ["full-1", "full-2", "full-3"]
        assert await db.statuses() == {outbox.PENDING: 3}
        assert "queue 'full' is full (max 1 jobs)" in caplog.text
        assert "unavailable" not in caplog.text

        await pool.admin.set_max_length("full", None)  # room again: the rows follow, once
        assert await relay.relay_pending(pool) == 3
        found = await redis_jobs(pool, "full")
    assert found["stream"] == ["already", "full-1", "full-2", "full-3"]
    assert found["created"] == 4
    assert await db.rows() == []


@pytest.mark.asyncio
async def test_a_running_relay_retries_a_full_queue_and_relays_the_others_meanwhile(
        db: Database, real: Backend) -> None:
    async with real.pool() as pool:
        await pool.admin.set_max_length("full", 1)
        await pool.enqueue(greet.options(queue="full", job_id="already"), 0, "a@x")
        await db.execute(sa.insert(db.table), [_row("full-1", queue="full"),
                                               _row("other-1", queue="other")])
        relay = db.relay(poll=0.05, redis_url=real.url, prefix=real.prefix, lease=False)
        task = asyncio.create_task(relay.run())
        try:
            for _ in range(200):
                if (await redis_jobs(pool, "other"))["stream"]:
                    break
                await asyncio.sleep(0.05)
            assert (await redis_jobs(pool, "other"))["stream"] == ["other-1"]
            await db.execute(sa.insert(db.table), [_row("other-2", queue="other")])
            for _ in range(200):
                if len((await redis_jobs(pool, "other"))["stream"]) == 2:
                    break
                await asyncio.sleep(0.05)
            assert (await redis_jobs(pool, "other"))["stream"] == ["other-1", "other-2"]
            for _ in range(200):  # the relay marks a row sent once its job is enqueued
                if await db.statuses() == {outbox.PENDING: 1}:
                    break
                await asyncio.sleep(0.05)
            assert await db.statuses() == {outbox.PENDING: 1}  # full-1 alone waits
            await pool.admin.set_max_length("full", None)
            for _ in range(200):
                if await db.statuses() == {}:
                    break
                await asyncio.sleep(0.05)
            assert (await redis_jobs(pool, "full"))["stream"] == ["already", "full-1"]
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)


def _count_claims_and_renewals(monkeypatch: pytest.MonkeyPatch
                               ) -> tuple[list[list[str]], list[float]]:
    """Record each claim of a batch (the queues it leaves out) and each renewal of a lease."""
    claims: list[list[str]] = []
    renewals: list[float] = []
    claim, renew = OutboxStore.claim, Lease.renew

    async def counted_claim(self: OutboxStore, conn: Any, skip: Any = ()) -> Any:
        claims.append(sorted(skip))
        return await claim(self, conn, skip)

    async def counted_renew(self: Lease) -> bool:
        renewals.append(self.ttl_s)
        return await renew(self)

    monkeypatch.setattr(OutboxStore, "claim", counted_claim)
    monkeypatch.setattr(Lease, "renew", counted_renew)
    return claims, renewals


@pytest.mark.asyncio
async def test_a_leading_relay_reads_the_table_at_its_poll_interval_not_at_each_renewal(
        db: Database, real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """``poll=30`` and a lease renewed every 0.1 s: the relay read the table (and tried a
    full queue's rows again) at every renewal, 300 times as often as asked.

    A term that begins reads the table at once (rows may have waited for a leader), so a
    loaded machine that stalls the loop past the 0.3 s lease adds a read per new term; the
    reads are counted against the terms, not against the renewals."""
    claims, renewals = _count_claims_and_renewals(monkeypatch)
    terms: list[bool] = []
    acquire = Lease.acquire

    async def counted_acquire(self: Lease) -> bool:
        granted = await acquire(self)
        if granted:
            terms.append(granted)
        return granted

    monkeypatch.setattr(Lease, "acquire", counted_acquire)
    async with real.pool() as pool:
        await pool.admin.set_max_length("full", 1)
        await pool.enqueue(greet.options(queue="full", job_id="already"), 0, "a@x")
        await db.execute(sa.insert(db.table), [_row("full-1", queue="full"),
                                               _row("other-1", queue="other")])
        relay = db.relay(poll=30, lease_ttl=0.3)
        task = asyncio.create_task(relay.run(pool=pool))
        try:
            for _ in range(400):
                if len(renewals) >= 10 * max(1, len(terms)) or task.done():
                    break
                await asyncio.sleep(0.05)
            assert len(renewals) >= 10, task
            assert (await redis_jobs(pool, "other"))["stream"] == ["other-1"]
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        # a term may have begun just before the stop, with no renewal yet
        assert len(renewals) >= 5 * len(terms), (renewals, terms)
        assert claims[0] == []  # the first read, of both rows
        # one read per term (the last one may have been stopped before its read); none at
        # the renewals
        assert len(terms) - 1 <= len(claims) <= len(terms), (claims, terms)
        assert await db.statuses() == {outbox.PENDING: 1}


@pytest.mark.asyncio
async def test_a_full_queue_never_wakes_the_relay_sooner_than_its_poll(
        db: Database, real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full queue's pause (0.5 s, doubling to 5 s) only keeps its rows out of the
    batches read before it ends; the relay still sleeps its whole ``poll``."""
    claims, _ = _count_claims_and_renewals(monkeypatch)
    sleeps: list[float] = []
    sleep = RelayLoop._sleep

    async def counted_sleep(self: RelayLoop, event: asyncio.Event, seconds: float) -> None:
        if event is self.wake:
            sleeps.append(seconds)
            self.stopped.set()  # one sleep is enough to know its length
            return
        await sleep(self, event, seconds)

    monkeypatch.setattr(RelayLoop, "_sleep", counted_sleep)
    async with real.pool() as pool:
        await pool.admin.set_max_length("full", 1)
        await pool.enqueue(greet.options(queue="full", job_id="already"), 0, "a@x")
        await db.execute(sa.insert(db.table), [_row("full-1", queue="full")])
        await asyncio.wait_for(db.relay(poll=30, lease=False).run(pool=pool), 15)
    assert claims == [[]] and len(sleeps) == 1 and 29 < sleeps[0] <= 30, (claims, sleeps)
    assert await db.statuses() == {outbox.PENDING: 1}


# -- queue names no worker can serve ----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_row_for_a_queue_no_worker_can_serve_ends_failed(db: Database,
                                                                 real: Backend) -> None:
    unservable = "q" * 200  # valid alone, but 'q' * 200 + '@high' is not
    with pytest.raises(asyncjobs.ConfigurationError):
        real.worker([greet], queues=[unservable])
    rows: list[dict[str, Any]] = [_row("bad", queue=unservable),
                                  _row("low", queue="q" * 196 + "@low"),
                                  _row("high", queue="q" * 195 + "@high")]
    await db.execute(sa.insert(db.table), rows)
    async with real.pool() as pool:
        assert await db.relay().relay_pending(pool) == 3
        assert (await redis_jobs(pool, "q" * 195 + "@high"))["stream"] == ["high"]
        assert await redis_jobs(pool, unservable) == {"created": 0, "stream": [],
                                                      "records": 0}
    failed = {r.job_id: r for r in await db.rows()}
    assert set(failed) == {"bad", "low"}
    assert all(r.status == outbox.FAILED for r in failed.values())
    assert "no producer or worker can use it" in failed["bad"].error
