"""``outbox.Outbox(table, queue=..., notify=...)`` and ``Outbox.header_providers``, as the
README documents them: another table and default queue, a NOTIFY at commit (or none) that
wakes the leading relay, and header providers that work like the pool's (called at each
enqueue, overridden by a job's own headers, seen as ``ctx.headers``).

SQLite and PostgreSQL (``notify`` on PostgreSQL only: SQLite has no NOTIFY); real Redis.
The databases are made and dropped by ``tests/test_outbox.py``'s ``database``."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

import asyncjobs
from asyncjobs import Context, outbox

from .conftest import Backend
from .records import exists
from .test_outbox import Database, _leads, database, greet, redis_jobs, signup, until

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Database]:
    """The test's database: SQLite, then PostgreSQL."""
    async with database(request.param, tmp_path) as opened:
        yield opened


@asyncjobs.task(name="ob_headers", timeout=30)
async def headers_seen(ctx: Context, n: int) -> dict[str, str]:
    return ctx.headers


# -- another table, another default queue ---------------------------------------------------


async def test_an_outbox_on_another_table_with_its_own_queue(db: Database,
                                                             real: Backend) -> None:
    """``Outbox(table, queue="emails")``: rows go into that table, and the jobs of tasks
    that name no queue land on ``emails`` when relayed (a job's own queue still wins)."""
    mail_table = outbox.outbox_table(db.table.metadata, name="mail_outbox")
    await outbox.create_all(db.engine, mail_table)
    box = outbox.Outbox(mail_table, queue="emails")
    async with db.session() as session, session.begin():
        job = await box.enqueue(session, greet, 1, "a@x")
        own = await box.enqueue(session, greet.options(queue="mail"), 2, "b@x")
    assert (job.queue, own.queue) == ("emails", "mail")
    async with db.engine.connect() as conn:
        rows = list(await conn.execute(sa.select(mail_table.c.queue, mail_table.c.job_id)
                                       .order_by(mail_table.c.id)))
    assert [tuple(r) for r in rows] == [("emails", job.id), ("mail", own.id)]
    assert await db.rows() == []  # nothing in the default table

    relay = outbox.Relay(db.engine, table=mail_table)
    async with real.pool() as pool:
        assert await relay.relay_pending(pool) == 2
        assert (await redis_jobs(pool, "emails"))["stream"] == [job.id]
        assert (await redis_jobs(pool, "mail"))["stream"] == [own.id]
        assert (await redis_jobs(pool, "default"))["stream"] == []
        await real.run(real.worker([greet], queues=["emails"], burst=True))
        assert await job.handle(pool).result(timeout=5) == "hello 1 <a@x>"
        assert await own.handle(pool).status() is asyncjobs.JobState.QUEUED  # not served


# -- header providers -----------------------------------------------------------------------


async def test_header_providers_travel_with_the_relayed_job(db: Database,
                                                            real: Backend) -> None:
    """Like ``pool.header_providers``: called at each enqueue (a context variable read then),
    a job's own ``headers=`` wins on a clash, and the worker's ``ctx.headers`` has them."""
    tenant = contextvars.ContextVar("tenant", default="acme")
    box = db.outbox()
    assert box.header_providers == []
    box.header_providers.append(lambda: {"traceparent": "00-abc-def-01",
                                         "tenant": tenant.get()})
    async with db.session() as session, session.begin():
        first = await box.enqueue(session, headers_seen, 1)
        tenant.set("globex")
        second = await box.enqueue(session, headers_seen, 2)
        own = await box.enqueue(session, headers_seen.options(headers={"tenant": "mine"}), 3)
    plain = db.outbox()  # providers belong to one Outbox
    async with db.session() as session, session.begin():
        bare = await plain.enqueue(session, headers_seen, 4)
    async with real.pool() as pool:
        assert await db.relay().relay_pending(pool) == 4
        await real.run(real.worker([headers_seen], burst=True))
        seen = [await j.handle(pool).result(timeout=5) for j in (first, second, own, bare)]
    assert seen == [{"traceparent": "00-abc-def-01", "tenant": "acme"},
                    {"traceparent": "00-abc-def-01", "tenant": "globex"},
                    {"traceparent": "00-abc-def-01", "tenant": "mine"},
                    {}]


async def test_a_header_provider_giving_non_text_fails_inside_the_transaction(
        db: Database) -> None:
    """As with the pool (README: a header from the providers that is not text is a
    ``SerializationError``): raised before anything is written, the transaction rolls back."""
    box = db.outbox()
    box.header_providers.append(lambda: {"n": 1})  # type: ignore[dict-item]

    async def signup_with_bad_headers() -> None:
        async with db.session() as session, session.begin():
            await session.execute(sa.insert(db.users).values(id=1, email="a@x"))
            await box.enqueue(session, headers_seen, 1)

    with pytest.raises(asyncjobs.SerializationError, match="header"):
        await signup_with_bad_headers()
    assert await db.rows() == []
    async with db.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(db.users))
                ).scalar() == 0


# -- notify ---------------------------------------------------------------------------------


async def test_notify_false_leaves_the_row_to_the_poll_and_notify_true_wakes_the_relay(
        tmp_path: Any, real: Backend) -> None:
    """PostgreSQL: a leading relay polling every 30 s is woken at once by a commit through
    ``Outbox(notify=True)``; a commit through ``Outbox(notify=False)`` sends no notice, so
    its row waits (here, until the next notified commit)."""
    async with database("postgresql", tmp_path) as pg:
        relay = pg.relay(poll=30, redis_url=real.url, prefix=real.prefix)
        task = asyncio.create_task(relay.run())
        try:
            async with real.pool() as pool:
                await until(lambda: _leads(pool, relay, real.prefix), 5, "the lease")
                await asyncio.sleep(0.1)  # past the relay's first pass: asleep for 30 s
                quiet = await signup(pg, 1, pg.outbox(notify=False))
                await asyncio.sleep(1.2)  # the relay, notified, starts well within 1 s
                assert not await exists(quiet.handle(pool))
                assert await pg.statuses() == {outbox.PENDING: 1}
                started = time.monotonic()
                loud = await signup(pg, 2, pg.outbox(notify=True))
                await until(lambda: exists(loud.handle(pool)), 5, "the relay")
                assert time.monotonic() - started < 1.0
                assert await exists(quiet.handle(pool))  # the same pass took both rows
        finally:
            relay.stop()
            await task
