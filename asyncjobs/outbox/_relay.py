"""The relay: moves committed outbox rows to Redis. Run it inside your workers
(``Worker([...], lifespan=relay.lifespan)``) or on its own (``asyncjobs outbox-relay``).

Every relay that uses the lease (the default) competes for one Redis lease per outbox,
``<prefix>:outbox:<name>:leader``, so exactly one of them moves rows at a time, whichever
mix of workers and stand-alone relays runs. Without the lease, relays share the rows
(PostgreSQL's ``SKIP LOCKED``) and still never create a job twice (dedup by job id).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import anyio
import sqlalchemy as sa
from anyio.abc import TaskStatus
from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .._durations import Seconds, to_seconds
from .._options import check_whole
from .._producer.opening import create_pool
from .._producer.pool import Pool
from .._redis.connection import url_factory
from .._redis.keys import check_name
from .._scheduling.leader import MAX_TTL_S as MAX_LEASE_TTL_S
from .._tasks import cancel_and_wait
from .._text import first_line
from ..exceptions import ConfigurationError
from ._db import OutboxStore
from ._loop import RelayLoop, Settings, log
from ._schema import TABLE

if TYPE_CHECKING:
    from .._worker.worker import Worker

Lifespan = Callable[["Worker"], AbstractAsyncContextManager[Any]]
_DRIVERS = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
            "sqlite": "sqlite+aiosqlite"}
_STOP_WAIT_S = 10.0  # at a worker's shutdown, for the batch in hand to finish
MIN_POLL_S = 0.01
"""The shortest ``poll`` a relay accepts: a shorter one reads the table in a loop."""
MIN_LEASE_TTL_S = 0.1
"""The shortest ``lease_ttl`` a relay accepts (as a worker's): Redis sets leases in whole
milliseconds, and a lease renewed more often than this is mostly round trips."""


def database_url(url: str) -> sa.URL:
    """``url`` parsed, with the async driver filled in (``postgresql://`` becomes
    ``postgresql+asyncpg://``, ``sqlite://`` becomes ``sqlite+aiosqlite://``); raises
    ``ConfigurationError`` for anything but PostgreSQL and SQLite."""
    try:
        parsed = sa.make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        shown = f"{url.partition('://')[0]}://..." if "://" in url else repr(url[:40])
        raise ConfigurationError(f"{shown} is not a database URL: use "
                                 "postgresql://user@host/db or sqlite:///path.db") from None
    backend = parsed.drivername.partition("+")[0]
    if backend not in _DRIVERS:
        raise ConfigurationError(f"asyncjobs.outbox supports PostgreSQL and SQLite, not "
                                 f"{backend!r}")
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=_DRIVERS[backend])
    return parsed


def _engine(url: sa.URL) -> AsyncEngine:
    """An async engine on ``url`` (no connection yet); a driver that is not installed,
    unknown, or not async is a ``ConfigurationError``, in one line."""
    shown = f"{url.drivername}://..."
    try:
        return create_async_engine(url)
    except ImportError as exc:
        why = f"its driver is not installed ({exc})"
    except NoSuchModuleError:
        why = "SQLAlchemy has no such driver"
    except InvalidRequestError:  # "The asyncio extension requires an async driver"
        why = "its driver is not async"
    except (ArgumentError, TypeError, ValueError) as exc:
        why = first_line(exc)
    raise ConfigurationError(
        f"{shown} cannot be used: {why} (postgresql://user@host/db uses asyncpg, "
        "sqlite:///path.db aiosqlite)")


class Relay:
    """Moves committed outbox rows to Redis, in batches, with their job ids.

    ``database`` is your ``AsyncEngine`` or a URL; ``table`` the outbox table. Redis is the
    worker's (in ``lifespan``) or ``redis_url`` (default ``$ASYNCJOBS_REDIS_URL``), under
    ``prefix``. ``keep`` keeps relayed rows that long (0: delete them at once); ``poll`` is
    the fallback poll interval (default 1 s with PostgreSQL's NOTIFY, 0.05 s without);
    ``queues``, when given, are the only queues rows may name (others fail). With
    ``lease`` (the default) one relay at a time moves rows, among every process relaying
    this outbox (``name``, default the table's full name) under this prefix.
    ``batch_size``: rows per batch, a whole number from 1 to 10,000; ``poll``: at least
    0.01 s; ``lease_ttl``: the lease's expiry, 0.1 s to 1 h. A value out of range is a
    ``ConfigurationError`` here.
    """

    def __init__(self, database: AsyncEngine | str, *, table: sa.Table = TABLE,
                 redis_url: str | None = None, prefix: str | None = None,
                 batch_size: int = 1000, keep: Seconds = 0.0, poll: Seconds | None = None,
                 queues: Collection[str] | None = None, lease: bool = True,
                 lease_ttl: Seconds = 5.0, name: str | None = None) -> None:
        check_whole("batch_size", batch_size, most=10_000)
        if poll is not None and (to_seconds(poll, "poll") or 0.0) < MIN_POLL_S:
            # (a positive but tiny poll read the table in a loop)
            raise ConfigurationError(f"poll must be at least {MIN_POLL_S:g} s, got {poll!r:.80}")
        lease_ttl_s = to_seconds(lease_ttl, "lease_ttl") or 0.0
        if not MIN_LEASE_TTL_S <= lease_ttl_s <= MAX_LEASE_TTL_S:  # Redis takes whole ms
            raise ConfigurationError(f"lease_ttl must be between {MIN_LEASE_TTL_S:g} s and 1 h, "
                                     f"got {lease_ttl!r:.80}")
        self._own_engine = isinstance(database, str)
        self.engine = (_engine(database_url(database))
                       if isinstance(database, str) else database)
        self.table = table
        if redis_url is not None:
            url_factory(redis_url)  # a URL that can never work: ConfigurationError here
        self.redis_url = redis_url
        self.prefix = check_name("prefix", prefix) if prefix is not None else None
        self.name = name or table.fullname
        self.lease = lease
        self._settings = Settings(
            store=OutboxStore(table, batch_size), batch_size=batch_size,
            keep_ms=round((to_seconds(keep, "keep") or 0.0) * 1000),
            poll_s=to_seconds(poll, "poll"),
            queues=frozenset(check_name("queue name", q) for q in queues) if queues else None,
            lease_key=None, lease_ttl_s=lease_ttl_s,
        )
        self._running: set[asyncio.Event] = set()

    def lease_key(self, prefix: str) -> str:
        """The Redis key of this outbox's leader lease under ``prefix``."""
        return f"{prefix}:outbox:{self.name}:leader"

    def stop(self) -> None:
        """Ask every ``run`` of this relay to finish its batch and return."""
        for stopped in self._running:
            stopped.set()

    async def run(self, *, pool: Pool | None = None, holder: str = "",
                  task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Relay until ``stop()`` (or cancellation: a batch cut short is written again by
        the next relay, never twice in Redis). ``pool``: write through it instead of
        opening one on ``redis_url``. Outages of Redis or the database are logged and
        retried; a database URL that can never work (its driver refuses it on every
        connect: ``?sslmode=bogus``) raises ``ConfigurationError``."""
        await self._run(pool, self.prefix or "asyncjobs", holder, asyncio.Event(),
                        task_status)

    async def _run(self, pool: Pool | None, prefix: str, holder: str,
                   stopped: asyncio.Event, task_status: TaskStatus[None]) -> None:
        self._running.add(stopped)
        try:
            async with self._pool(pool, prefix) as writer:
                loop = self._loop(writer, holder, stopped)
                log.info("outbox relay ready: table %s on %s -> redis %s, prefix %s%s",
                         self.table.fullname, self._where(), writer.description or "given pool",
                         writer.prefix, "" if self.lease else ", no lease")
                task_status.started()
                await loop.run()
        finally:
            self._running.discard(stopped)
            if self._own_engine:
                await self.engine.dispose()

    async def relay_pending(self, pool: Pool) -> int:
        """Relay every row pending now, without the lease, and return how many rows were
        handled (relayed or failed). For scripts and tests; errors are raised."""
        return await self._loop(pool, "", asyncio.Event(), lease=False).drain()

    def lifespan(self, worker: Worker) -> AbstractAsyncContextManager[None]:
        """A worker lifespan that runs this relay beside the worker (``Worker([...],
        lifespan=relay.lifespan)``), on the worker's Redis and prefix; ``wrap`` combines
        it with a lifespan of your own."""
        return self._beside(worker)

    def wrap(self, lifespan: Lifespan | None) -> Lifespan:
        """Your worker lifespan with this relay running inside it: the relay starts once
        yours has opened its resources (an engine it may share) and stops before yours
        closes them; what yours yields is still ``ctx.state``."""

        @contextlib.asynccontextmanager
        async def both(worker: Worker) -> AsyncIterator[Any]:
            if lifespan is None:
                async with self._beside(worker):
                    yield None
                return
            async with lifespan(worker) as state, self._beside(worker):
                yield state

        return both

    @contextlib.asynccontextmanager
    async def _beside(self, worker: Worker) -> AsyncIterator[None]:
        prefix = self.prefix or worker.config.prefix
        pool: Pool | None = worker.pool  # the running worker's own connection

        if self.redis_url is not None or (pool is not None and pool.prefix != prefix):
            pool = None  # Redis or a prefix of the relay's own
        stopped = asyncio.Event()

        async def relay() -> None:
            try:
                await self._run(pool, prefix, worker.name, stopped, anyio.TASK_STATUS_IGNORED)
            except ConfigurationError as exc:  # retrying cannot help: say so, once
                log.error("outbox relay stopped: %s", exc)

        task = asyncio.create_task(relay(), name="asyncjobs-outbox-relay")
        try:
            yield None
        finally:
            stopped.set()
            await asyncio.wait([task], timeout=_STOP_WAIT_S)
            await cancel_and_wait(task)

    def _loop(self, pool: Pool, holder: str, stopped: asyncio.Event, *,
              lease: bool | None = None) -> RelayLoop:
        use_lease = self.lease if lease is None else lease
        settings = dataclasses.replace(
            self._settings, lease_key=self.lease_key(pool.prefix) if use_lease else None)
        return RelayLoop(settings, self.engine, pool, holder, stopped)

    @contextlib.asynccontextmanager
    async def _pool(self, given: Pool | None, prefix: str) -> AsyncIterator[Pool]:
        if given is not None:
            yield given
            return
        async with create_pool(self.redis_url, prefix=prefix, check=False) as pool:
            yield pool

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)
