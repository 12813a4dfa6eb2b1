"""The outbox table, its database clock, and its NOTIFY channel. No I/O but ``create_all``.

One row is one job written inside the application's transaction: what ``Pool.prepare``
produced (queue, job id, encoded spec, delay, due time and expiry in ms) plus the database's
clock at insert (``created_at_ms``), so the relay can tell how long the row waited. Rows are
``pending`` until the relay moves them to Redis; then they are deleted, or kept as
``relayed`` for a while; a row the relay cannot move is ``failed``, with the reason in
``error``, and stays until someone deletes it.

Times are integers in ms on the database's clock (``now_ms()``): PostgreSQL's
``clock_timestamp()``, SQLite's ``julianday('now')``; they compile per dialect, so one table
definition serves both.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

DEFAULT_NAME = "asyncjobs_outbox"
"""The outbox table's name unless you choose another."""

PENDING = "pending"
"""A row waiting for the relay (committed, or still inside its transaction)."""
RELAYED = "relayed"
"""A row the relay moved to Redis (kept only with ``Relay(keep=...)``)."""
FAILED = "failed"
"""A row the relay could not move; ``error`` says why."""

_CHANNEL_CHARS = re.compile(r"[^A-Za-z0-9_.]")
_MAX_CHANNEL = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1)


def outbox_table(metadata: sa.MetaData | None = None, *, name: str = DEFAULT_NAME,
                 schema: str | None = None) -> sa.Table:
    """The outbox table, defined on ``metadata`` (yours, so Alembic's autogenerate sees it;
    a new ``MetaData`` if None). Create it with a migration or ``create_all``."""
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: the rowid
    return sa.Table(
        name, metadata if metadata is not None else sa.MetaData(),
        sa.Column("id", id_type, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("job_id", sa.String(1024), nullable=False),
        sa.Column("spec", sa.LargeBinary(), nullable=False),
        sa.Column("delay_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("due_at_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_in_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default=PENDING),
        sa.Column("done_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Index(f"{name}_pending", "id", postgresql_where=sa.text(f"status = '{PENDING}'"),
                 sqlite_where=sa.text(f"status = '{PENDING}'")),
        schema=schema,
        comment="asyncjobs transactional outbox: jobs waiting to be relayed to Redis",
    )


TABLE = outbox_table()
"""The default outbox table (``asyncjobs_outbox``, on a ``MetaData`` of its own)."""


async def create_all(engine: AsyncEngine, table: sa.Table = TABLE) -> None:
    """Create the outbox table and its index unless they exist (the schema must exist)."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: table.create(sync, checkfirst=True))


def channel(table: sa.Table) -> str:
    """The PostgreSQL NOTIFY channel of an outbox table: its full name, in characters that
    need no quoting anywhere (and at most 63 of them)."""
    return _CHANNEL_CHARS.sub("_", f"asyncjobs.{table.fullname}")[:_MAX_CHANNEL]


class now_ms(sa.sql.expression.FunctionElement[int]):
    """The database's clock in ms since the epoch, as a BIGINT. With ``notify`` (PostgreSQL),
    evaluating it also sends a NOTIFY on that channel, delivered when the transaction
    commits (and collapsed into one per transaction): the insert wakes the relay without a
    round trip of its own."""

    type = sa.BigInteger()
    inherit_cache = True

    def __init__(self, notify: str | None = None) -> None:
        if notify is not None and (_CHANNEL_CHARS.search(notify) or not notify):
            raise ValueError(f"bad NOTIFY channel {notify!r}: use channel(table)")
        # The channel is a clause, so it is part of the statement's cache key.
        super().__init__(*([sa.literal_column(f"'{notify}'")] if notify else []))


_PG_NOW = "CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)"


@compiles(now_ms, "postgresql")
def _now_postgresql(element: now_ms, compiler: SQLCompiler, **kw: Any) -> str:
    clauses = list(element.clauses)
    if not clauses:
        return _PG_NOW
    return f"(SELECT {_PG_NOW} FROM pg_notify({compiler.process(clauses[0], **kw)}, ''))"


@compiles(now_ms, "sqlite")
def _now_sqlite(element: now_ms, compiler: SQLCompiler, **kw: Any) -> str:
    return "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


@compiles(now_ms)
def _now_other(element: now_ms, compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(f"asyncjobs.outbox supports PostgreSQL and SQLite, not "
                       f"{compiler.dialect.name}")
