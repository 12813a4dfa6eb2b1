"""Enqueue inside the application's transaction: ``await outbox.enqueue(session, task, ...)``.

The job is encoded exactly as ``Pool.enqueue`` encodes it (``Pool.prepare``: same checks,
same ``SerializationError``, same job id rules) and inserted into the outbox table through
the caller's session or connection. Nothing is committed here and nothing reaches Redis:
the row becomes visible to the relay when, and only if, the caller's transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, ParamSpec, TypeVar, cast, overload

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .._producer.handle import Job
from .._producer.pool import Pool
from .._redis.kept import new_job_ids
from .._task import AsyncFn, Call, SyncFn, Task, call
from ._schema import PENDING, TABLE, channel, now_ms

P = ParamSpec("P")
R = TypeVar("R")

Session = AsyncSession | AsyncConnection
"""Where the insert goes: the caller's ``AsyncSession`` or ``AsyncConnection``."""


@dataclass(frozen=True, slots=True)
class OutboxJob(Generic[R]):
    """A job written to the outbox: its id and queue (known before the commit)."""

    id: str
    queue: str
    result_type: Any = Any

    def handle(self, pool: Pool) -> Job[R]:
        """The job's handle on ``pool`` (status, result...): the job exists in Redis once the
        transaction committed and the relay moved it (until then it is ``JobNotFound``)."""
        return Job(pool, self.id, self.queue, self.result_type)


class _NoRedis:
    """The client of the outbox's encoding pool: it encodes jobs and never talks to Redis."""

    def __getattr__(self, name: str) -> NoReturn:
        raise RuntimeError("the outbox's encoder has no Redis connection")


class Outbox:
    """Writes jobs into an outbox table inside your transactions.

    ``table`` is the outbox table (``outbox_table(...)``; the default ``asyncjobs_outbox``
    otherwise); ``queue`` is the default queue, as in ``create_pool``. With ``notify``
    (PostgreSQL) each insert also sends a NOTIFY at commit, so the relay starts at once
    instead of at its next poll.
    """

    def __init__(self, table: sa.Table = TABLE, *, queue: str = "default",
                 notify: bool = True) -> None:
        self.table = table
        self.notify = notify
        self._encoder = Pool(cast(Redis, _NoRedis()), queue=queue, owns_client=False,
                             description="outbox encoder")
        created = now_ms(channel(table) if notify else None)
        self._insert = sa.insert(table).values(created_at_ms=created, status=PENDING)

    @property
    def header_providers(self) -> list[Callable[[], Mapping[str, str]]]:
        """Called at each enqueue; their headers travel with the job (e.g. trace context)."""
        return self._encoder.header_providers

    # fmt: off
    @overload
    async def enqueue(self, session: Session, task: Task[P, R], /, *args: P.args,
                      **kwargs: P.kwargs) -> OutboxJob[R]: ...
    @overload
    async def enqueue(self, session: Session, task: AsyncFn[P, R], /, *args: P.args,
                      **kwargs: P.kwargs) -> OutboxJob[R]: ...
    @overload
    async def enqueue(self, session: Session, task: SyncFn[P, R], /, *args: P.args,
                      **kwargs: P.kwargs) -> OutboxJob[R]: ...
    @overload
    async def enqueue(self, session: Session, task: str, /, *args: Any,
                      **kwargs: Any) -> OutboxJob[Any]: ...
    # fmt: on
    async def enqueue(self, session: Session, task: Any, /, *args: Any,
                      **kwargs: Any) -> OutboxJob[Any]:
        """Write one job into the outbox in ``session``'s transaction; it reaches Redis only
        if that transaction commits. ``task`` and its arguments are given as to
        ``Pool.enqueue`` (per-job options with ``task.options(...)``), checked by mypy, and
        encoded here: a bad argument raises ``SerializationError`` before anything is
        written, inside your transaction."""
        (job,) = await self.enqueue_many(session, [call(task, *args, **kwargs)])
        return job

    async def enqueue_many(self, session: Session,
                           calls: Iterable[Call[Any]]) -> list[OutboxJob[Any]]:
        """Write many jobs in one statement; every argument is encoded first."""
        batch = list(calls)
        ids = new_job_ids(len(batch))
        prepared = [self._encoder.prepare(c, job_id) for c, job_id in zip(batch, ids,
                                                                           strict=True)]
        if prepared:
            rows = [{"queue": queue, "job_id": new.id, "spec": new.spec,
                     "delay_ms": new.delay_ms, "due_at_ms": new.due_at_ms,
                     "expires_in_ms": new.expires_in_ms, "expires_at_ms": new.expires_at_ms}
                    for queue, new, _ in prepared]
            await session.execute(self._insert, rows)
        return [OutboxJob(new.id, queue, rtype) for queue, new, rtype in prepared]


_default = Outbox()

# fmt: off
@overload
async def enqueue(session: Session, task: Task[P, R], /, *args: P.args,
                  **kwargs: P.kwargs) -> OutboxJob[R]: ...
@overload
async def enqueue(session: Session, task: AsyncFn[P, R], /, *args: P.args,
                  **kwargs: P.kwargs) -> OutboxJob[R]: ...
@overload
async def enqueue(session: Session, task: SyncFn[P, R], /, *args: P.args,
                  **kwargs: P.kwargs) -> OutboxJob[R]: ...
@overload
async def enqueue(session: Session, task: str, /, *args: Any,
                  **kwargs: Any) -> OutboxJob[Any]: ...
# fmt: on
async def enqueue(session: Session, task: Any, /, *args: Any, **kwargs: Any) -> OutboxJob[Any]:
    """``Outbox().enqueue``: into the default table ``asyncjobs_outbox``, default queue
    ``default``, with NOTIFY on PostgreSQL."""
    return await _default.enqueue(session, task, *args, **kwargs)


async def enqueue_many(session: Session, calls: Iterable[Call[Any]]) -> list[OutboxJob[Any]]:
    """``Outbox().enqueue_many``: many jobs into the default table in one statement."""
    return await _default.enqueue_many(session, calls)
