"""Transactional enqueue: jobs that exist exactly when your data does.

A job enqueued before the commit can run before its row exists; one enqueued after the
commit is lost if the process dies in between. Instead, write the job into your own database
in the same transaction as the data, and let a relay move it to Redis::

    from asyncjobs import outbox

    async with session.begin():
        session.add(user)
        await outbox.enqueue(session, send_welcome_email, user.id, user.email)
    # committed: the relay moves the job to Redis; rolled back: there is no job

    relay = outbox.Relay(engine)                                 # in your worker module
    worker = asyncjobs.Worker([send_welcome_email], lifespan=relay.lifespan)

or ``asyncjobs outbox-relay --database-url ...`` on its own. SQLAlchemy 2 with asyncio
(the ``outbox`` extra): PostgreSQL through asyncpg (``FOR UPDATE SKIP LOCKED`` batches,
``LISTEN``/``NOTIFY`` wake-ups), or SQLite through aiosqlite (polling).

The job id is chosen at enqueue and travels with the row, so a relay killed between writing
to Redis and marking its rows cannot create a second job: the next relay's write of the same
id is a no-op. ``delay=`` counts from the enqueue on the database's clock (see ``_rows``).
"""

from ._producer import Outbox, OutboxJob, Session, enqueue, enqueue_many
from ._relay import Relay, database_url
from ._schema import FAILED, PENDING, RELAYED, TABLE, create_all, outbox_table

__all__ = [
    "FAILED",
    "Outbox",
    "OutboxJob",
    "PENDING",
    "RELAYED",
    "Relay",
    "Session",
    "TABLE",
    "create_all",
    "database_url",
    "enqueue",
    "enqueue_many",
    "outbox_table",
]
