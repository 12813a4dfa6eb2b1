"""The relay's statements on the outbox table: claim a batch, mark it, purge old rows.

PostgreSQL claims with ``SELECT ... FOR UPDATE SKIP LOCKED``: relays running at once take
different rows, and a relay that dies mid-batch releases its rows with its connection. SQLite
has no row locks (``FOR UPDATE`` compiles to nothing there): relays may read the same rows,
and the job id makes the second write a no-op in Redis. So there a row is marked by its id
*and* its job id: SQLite gives a new row the id of the newest row once it is deleted, and a
relay that read the old row must not delete (or fail) the new one. SQLite text that is not UTF-8
(a row written by another program) is read with its bad bytes as lone surrogates, which
``_rows`` refuses, instead of failing the whole claim.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from .._text import clean, safe_str
from ..exceptions import ConfigurationError
from ._rows import Row
from ._schema import FAILED, PENDING, RELAYED, now_ms

MAX_ERROR = 2000
"""A failed row's reason is cut to this many characters."""
_PURGE_BATCH = 10_000


class UnusableDatabase(ConfigurationError):
    """The database URL can never work: its driver rejects it on every connect (a query
    argument it does not know, or a value of the wrong kind). Retrying cannot help."""


class ConnectFailed(Exception):
    """Connecting raised a ``TypeError`` or ``ValueError`` that is not the URL's doing: the
    driver takes the URL's own arguments (a connect hook, a creator or ``connect_args`` of
    yours raised it). The relay logs it and retries."""


async def connect(engine: AsyncEngine) -> AsyncConnection:
    """A connection of ``engine``'s pool, started. An outage raises as usual (the caller
    retries). A ``TypeError`` or ``ValueError`` (asyncpg's "connect() got an unexpected
    keyword argument", from a URL's ``?sslmode=...``; its ``ClientConfigurationError``, from
    ``?ssl=bogus``) is ``UnusableDatabase``, in one line, only if the driver refuses the
    URL's own arguments again on a connect of its own, which no pool event, creator or
    ``connect_args`` takes part in; if the driver takes them, it is ``ConnectFailed``."""
    conn = engine.connect()
    try:
        await conn.start()
    except (TypeError, ValueError, sa_exc.DBAPIError) as exc:
        if _refusal(exc) is None:
            raise
        refused = await _url_refusal(engine)
        if refused is not None:
            where = engine.url.render_as_string(hide_password=True)
            raise UnusableDatabase(
                f"the database URL {where} cannot be used: its driver "
                f"{engine.url.drivername} refuses it ({clean(safe_str(refused, 500))})") from None
        if isinstance(exc, sa_exc.DBAPIError):
            raise
        raise ConnectFailed(
            f"connecting to the database raised {type(exc).__name__}: {clean(safe_str(exc, 500))} "
            "(not the URL's doing: its driver takes the URL; a connect hook, creator or "
            "connect_args of yours?)") from exc
    return conn


def _refusal(exc: BaseException) -> BaseException | None:
    """The ``TypeError`` or ``ValueError`` that ``exc`` is, or that the driver raised under
    it (SQLAlchemy's ``DBAPIError`` and the driver adapter's errors wrap asyncpg's
    ``ClientConfigurationError``, a ValueError); None if there is none."""
    seen: BaseException | None = exc
    for _ in range(4):  # the exception, the adapter's, the driver's
        if seen is None or isinstance(seen, TypeError | ValueError):
            return seen
        seen = seen.orig if isinstance(seen, sa_exc.DBAPIError) else seen.__cause__
    return None


async def _url_refusal(engine: AsyncEngine) -> BaseException | None:
    """The driver's refusal of the URL's own connect arguments, tried on a connection of
    its own (closed at once); None if the driver takes them, or fails otherwise (down)."""
    dialect = engine.sync_engine.dialect
    try:
        cargs, cparams = dialect.create_connect_args(engine.url)
        raw = await greenlet_spawn(dialect.connect, *cargs, **cparams)
    except Exception as exc:
        return _refusal(exc)
    with contextlib.suppress(Exception):
        await greenlet_spawn(raw.close)
    return None


@contextlib.asynccontextmanager
async def connected(engine: AsyncEngine, *, begin: bool) -> AsyncIterator[AsyncConnection]:
    """``engine.connect()`` (or ``engine.begin()``, with ``begin``) through ``connect``."""
    conn = await connect(engine)
    try:
        if begin:
            async with conn.begin():
                yield conn
        else:
            yield conn
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Claimed:
    """A batch read from the table, with the database's clock at the read."""

    rows: list[Row]
    now_ms: int


@dataclass(slots=True)
class Outcome:
    """What became of a batch: rows relayed (or found in Redis already) and rows failed."""

    relayed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    job_ids: dict[int, str | None] = field(default_factory=dict)
    """Each row's job id as read (None: not text), to mark that row and no other."""

    def read(self, row: Row) -> None:
        """Note the job id ``row`` was read with."""
        job_id = row.job_id
        self.job_ids[row.row_id] = job_id if isinstance(job_id, str) and _encodes(job_id) \
            else None


class OutboxStore:
    """The relay's statements on one outbox table."""

    def __init__(self, table: sa.Table, batch_size: int) -> None:
        self.table = table
        t = table.c
        self._claim = (
            sa.select(t.id, t.queue, t.job_id, t.spec, t.delay_ms, t.due_at_ms,
                      t.expires_in_ms, t.expires_at_ms, t.created_at_ms,
                      now_ms().label("now_ms"))
            .where(t.status == PENDING).order_by(t.id).limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        # A job id that is not text (garbage) cannot be compared: that row is found by its
        # id alone (no relay relays it, so its id is never freed by another relay).
        read_id = sa.bindparam("read_job_id", type_=t.job_id.type)
        self._fail = (sa.update(table)
                      .where(t.id == sa.bindparam("row_id"), t.status == PENDING,
                             t.job_id == sa.func.coalesce(read_id, t.job_id))
                      .values(status=FAILED, error=sa.bindparam("reason"), done_at_ms=now_ms()))

    async def claim(self, conn: AsyncConnection, skip: Collection[str] = ()) -> Claimed:
        """Up to a batch of pending rows, oldest first (locked until the transaction ends,
        on PostgreSQL), leaving out the rows of the queues in ``skip`` (full ones)."""
        query = self._claim
        if skip:
            query = query.where(self.table.c.queue.not_in(sorted(skip)))
        rows, now = [], 0
        async with _lenient_text(conn):
            for r in await conn.execute(query):
                rows.append(Row(*r[:9]))
                now = r[9]
        return Claimed(rows, int(now))

    async def mark(self, conn: AsyncConnection, outcome: Outcome, keep: bool) -> None:
        """Delete the relayed rows (or, with ``keep``, mark them relayed with the time) and
        mark the failed ones with their reason."""
        t = self.table.c
        if outcome.relayed:
            where = t.id.in_(outcome.relayed)
            if conn.dialect.name == "sqlite":  # read in another transaction, unlocked: its
                # id may be another row's by now (a relayed row's job id is always text)
                where = sa.tuple_(t.id, t.job_id).in_(
                    [(row_id, outcome.job_ids[row_id]) for row_id in outcome.relayed])
            if keep:
                await conn.execute(sa.update(self.table).where(where)
                                   .values(status=RELAYED, done_at_ms=now_ms()))
            else:
                await conn.execute(sa.delete(self.table).where(where))
        if outcome.failed:
            await conn.execute(self._fail, _reasons(outcome))

    async def purge(self, conn: AsyncConnection, older_than_ms: int) -> int:
        """Delete up to a bounded batch of relayed rows done more than ``older_than_ms``
        ago; returns how many."""
        t = self.table.c
        old = (sa.select(t.id).where(t.status == RELAYED,
                                     t.done_at_ms < now_ms() - older_than_ms)
               .limit(_PURGE_BATCH).scalar_subquery())
        result = await conn.execute(sa.delete(self.table).where(t.id.in_(old)))
        return int(result.rowcount)

    async def count(self, conn: AsyncConnection) -> dict[str, int]:
        """Rows by status (for tests, the CLI and health checks)."""
        t = self.table.c
        result = await conn.execute(sa.select(t.status, sa.func.count()).group_by(t.status))
        return {str(status): int(n) for status, n in result}


def _reasons(outcome: Outcome) -> Sequence[dict[str, object]]:
    return [{"row_id": row_id, "reason": reason[:MAX_ERROR],
             "read_job_id": outcome.job_ids.get(row_id)}
            for row_id, reason in outcome.failed.items()]


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _surrogates(data: bytes) -> str:
    """SQLite text as read by the claim: bytes that are not UTF-8 become lone surrogates."""
    return data.decode("utf-8", "surrogateescape")


@contextlib.asynccontextmanager
async def _lenient_text(conn: AsyncConnection) -> AsyncIterator[None]:
    """On SQLite (aiosqlite), read text that is not UTF-8 as ``_surrogates`` does instead of
    raising (Python's sqlite3 raises for the whole statement, so one such row failed every
    claim: the relay retried for ever and no row behind it moved). Elsewhere a no-op: the
    database checks the encoding of the text it stores."""
    if conn.dialect.name != "sqlite":
        yield
        return
    driver: Any = (await conn.get_raw_connection()).driver_connection
    factory = getattr(driver, "text_factory", None)
    if factory is None:
        yield
        return
    driver.text_factory = _surrogates
    try:
        yield
    finally:
        driver.text_factory = factory
