"""What wakes the relay: a PostgreSQL NOTIFY (with asyncpg), else its poll interval.

The listener holds one connection of the engine's pool while the relay leads. Notifications
can be lost (a dropped connection, a producer with ``notify=False``), so the relay also
polls, slowly when it listens and quickly when it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._db import connect

log = logging.getLogger("asyncjobs.outbox")


class ListenLost(ConnectionError):
    """The connection LISTEN was to use was closed by the server: an outage."""


class Listener:
    """LISTEN on the outbox's channel; every notification sets ``event``."""

    def __init__(self, engine: AsyncEngine, channel: str, event: asyncio.Event) -> None:
        self.engine = engine
        self.channel = channel
        self.event = event
        self.supported = engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    @property
    def listening(self) -> bool:
        """True while notifications can arrive."""
        return self._driver is not None and not self._driver.is_closed()

    async def open(self) -> None:
        """Start listening (a no-op where NOTIFY is not supported, or when listening)."""
        if not self.supported or self.listening:
            return
        await self.close()
        conn = await connect(self.engine)
        driver: Any = None
        try:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            await driver.add_listener(self.channel, self._notified)
        except BaseException as exc:
            # The pool handed over a connection the server had already closed (the
            # database restarted, or terminated it): asyncpg says so in its own words,
            # which SQLAlchemy never sees. It must not go back to the pool, and it is an
            # outage, retried, not a bug.
            lost = driver is not None and driver.is_closed()
            with contextlib.suppress(Exception):
                if lost:
                    await conn.invalidate()
                await conn.close()
            if lost and isinstance(exc, Exception):
                raise ListenLost(f"the database closed the connection LISTEN was to use: "
                                 f"{type(exc).__name__}: {exc}") from exc
            raise
        self._conn, self._driver = conn, driver
        self.event.set()  # rows committed before LISTEN sent no notice we could hear

    async def close(self) -> None:
        """Stop listening and give the connection back (never raises)."""
        conn, driver = self._conn, self._driver
        self._conn = self._driver = None
        if driver is not None and not driver.is_closed():
            with contextlib.suppress(Exception):
                await driver.remove_listener(self.channel, self._notified)
        if conn is not None:
            with contextlib.suppress(Exception):
                if driver is None or driver.is_closed():
                    await conn.invalidate()  # a dead connection goes nowhere near the pool
                await conn.close()

    def _notified(self, *_: object) -> None:
        self.event.set()
