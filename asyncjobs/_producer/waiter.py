"""Waiting for jobs to finish without polling: one pub/sub connection per pool.

``watch(channel)`` subscribes before the caller checks the job's state, so a notice sent in
between is not missed. Notices can still be lost (a dropped connection), so callers re-check
the record now and then (``Job.result`` does so every few seconds), never in a tight loop.

When the pub/sub connection drops, redis-py reconnects it in place on its next read (asking
the Sentinels first, for a Sentinel pool) and subscribes it again. When that fails too, the
waiter drops the PubSub and opens a new one from the pool, subscribed to every channel still
watched, backing off while Redis is out of reach. It does the same when, with a Sentinel
pool, the Sentinels name another master than the one the connection is on (checked after
each second without a message): a failover does not always cut a pub/sub connection, and one
that reconnected during a failover may have reached a server promoted and then demoted.
Either way every watcher is woken once the connection is back, so each re-checks at once what
it may have missed meanwhile.

On a Redis Cluster that uses sharded pub/sub (``_redis.pubsub``), the PubSub is a
``ShardedPubSub``: one connection per master, which subscribes lost channels again itself
(a slot moved, a node failed) and then says ``RESUBSCRIBED``: every watcher is woken then
too.

``close()`` (the pool's) wakes every watcher and ends the watches being set up: each raises
``PoolClosed``. It never waits for a watch being set up: it cancels it (``cuts.Cuts``: its
connection may be in a handshake no close of the connections ends), and that one finds the
waiter closed as its step ends, and closes the PubSub itself. (Closed under a subscribe, a PubSub's
connection was sent the SUBSCRIBE again by redis-py's retry, on a new socket, after the
close had released it to the pool: a subscribed connection left in the client's pool.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from .._redis.pubsub import RESUBSCRIBED, Subscriber, pubsub_for
from .._redis.sentinel import off_the_master
from ..exceptions import PoolClosed
from .cuts import Cuts

log = logging.getLogger("asyncjobs.pool")

_RETRY_S = (0.1, 0.5, 1.0, 2.0)
"""Waits between attempts to open a new pub/sub connection (the last one repeats)."""

_FAILURES = (RedisError, RedisClusterException, OSError, RuntimeError)
"""What a pub/sub call raises when its connection is gone (redis-py raises RuntimeError for
a PubSub that never got a connection), or opening one when Redis is out of reach (a
cluster's masters are asked which pub/sub to use)."""


class Waiter:
    """Routes pub/sub messages to the waiters of each channel."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: Subscriber | None = None
        self._broken = False  # the pub/sub connection failed: the reader opens a new one
        self._events: dict[bytes, set[asyncio.Event]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._leaving: set[asyncio.Task[None]] = set()  # unsubscriptions under way
        self._closed = False
        self._cuts = Cuts(self._closed_error)  # a watch subscribing, cut by the close

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    @staticmethod
    def _closed_error() -> PoolClosed:
        return PoolClosed("the pool is closed: a result cannot be waited for on it")

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever a message arrives on ``channel`` while inside the block
        (and, spuriously, when the pub/sub connection was replaced)."""
        key = channel.encode()
        event = asyncio.Event()
        self._check_open()
        async with self._lock:
            self._check_open()  # closed while this waited for the lock
            waiters = self._events.setdefault(key, set())
            waiters.add(event)
            if len(waiters) == 1:
                try:
                    with self._cuts.step():
                        await self._subscribe(key)
                except BaseException:  # cancelled (a result() timing out), or closed
                    self._events.pop(key, None)
                    raise
        try:
            yield event
        finally:
            # No await before the bookkeeping: a caller cancelled again and again (an anyio
            # cancel scope delivers it at every await) must not leave its event behind.
            waiters = self._events.get(key, set())
            waiters.discard(event)
            if not waiters:
                self._events.pop(key, None)
            if not waiters and not self._closed:
                task = asyncio.create_task(self._unsubscribe_unwatched(key))
                self._leaving.add(task)
                task.add_done_callback(self._leaving.discard)

    async def _subscribe(self, key: bytes) -> None:
        """Subscribe to ``key`` (the lock held); ``PoolClosed`` when the waiter was closed
        meanwhile (its PubSub then closed here, see the module docstring)."""
        if self._pubsub is None and not self._broken:
            await self._open()
        # a broken connection is replaced, subscribed to every key
        pubsub = self._pubsub
        if pubsub is not None and not self._broken:
            try:
                await self._subscribe_on(pubsub, key)
            finally:
                if self._closed:  # close() left the PubSub to this subscribe
                    self._pubsub = None
                    await _close(pubsub)
        self._check_open()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="asyncjobs-waiter")

    async def _open(self) -> None:
        """Open the PubSub; ``PoolClosed`` (and it is closed) if the waiter closed
        meanwhile."""
        try:
            fresh = await pubsub_for(self._client)
        except _FAILURES as exc:  # the rule could not be read: the reader tries again
            log.debug("pub/sub open failed: %s", exc)
            self._broken = True
            return
        if self._closed:
            await _close(fresh)
            self._check_open()
        self._pubsub = fresh

    async def _subscribe_on(self, pubsub: Subscriber, key: bytes) -> None:
        try:
            await pubsub.subscribe(key)
        except Exception as exc:  # the caller's periodic re-check covers the gap
            # (a PubSub closed under the subscribe may fail otherwise: redis-py writes to a
            # connection without a writer, an AttributeError on a fake Redis)
            if not isinstance(exc, _FAILURES) and not self._closed:
                raise
            log.debug("subscribe failed: %s", exc)
            self._broken = True
        else:
            self._track(pubsub)

    async def _unsubscribe_unwatched(self, key: bytes) -> None:
        """Unsubscribe from ``key`` once nobody watches it (a task of its own, so that the
        watcher who left last need not wait for it); a watcher that came meanwhile keeps
        the subscription."""
        async with self._lock:
            if key in self._events or self._pubsub is None or self._broken:
                return
            try:
                await self._pubsub.unsubscribe(key)
            except _FAILURES:
                self._broken = True

    async def _read(self) -> None:
        failures = 0
        while self._events and not self._closed:
            if self._broken and not await self._replace():
                await asyncio.sleep(_RETRY_S[min(failures, len(_RETRY_S) - 1)])
                failures += 1
                continue
            pubsub = self._pubsub
            if pubsub is None:  # a watch is opening the first one (it may take a probe)
                await asyncio.sleep(0.05)
                continue
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except _FAILURES as exc:
                log.debug("pub/sub read failed, opening a new connection: %s", exc)
                self._broken = True
                continue
            failures = 0
            if message and message.get("type") == "message":
                for event in self._events.get(message["channel"], ()):
                    event.set()
            elif message and message.get("type") == RESUBSCRIBED:
                self._wake_all()
            elif message is None and await self._misplaced(pubsub):
                self._broken = True

    async def _misplaced(self, pubsub: Subscriber) -> bool:
        """True when the Sentinels name another master than the one this PubSub is on (a
        failover it was not cut off by, or one it reconnected in the middle of)."""
        try:
            moved = await off_the_master(self._client, pubsub.connection)
        except _FAILURES as exc:
            log.debug("master check failed: %s", exc)
            return False
        if moved:
            log.debug("pub/sub connection is not on the master any more: opening a new one")
        return moved

    async def _replace(self) -> bool:
        """Swap the broken pub/sub for a new one subscribed to every watched channel, and
        wake every watcher (a notice may have been missed); False if that failed."""
        async with self._lock:
            old, self._pubsub = self._pubsub, None
            if old is not None:
                await _close(old)
            if not self._events:
                self._broken = False
                return True
            fresh: Subscriber | None = None
            try:
                fresh = await pubsub_for(self._client)
                await fresh.subscribe(*self._events)
            except BaseException as exc:  # cancelled too (a close): never left unclosed
                if fresh is not None:
                    await _close(fresh)
                if not isinstance(exc, _FAILURES):
                    raise
                log.debug("pub/sub reconnect failed: %s", exc)
                return False
            self._pubsub, self._broken = fresh, False
            self._track(fresh)
            self._wake_all()
            return True

    def _track(self, pubsub: Subscriber) -> None:
        """Be told when redis-py reconnects this PubSub's connection in place."""
        connection: Any = pubsub.connection  # None until a subscribe connected it
        if connection is not None:  # held weakly; registered once per connection
            connection.register_connect_callback(self._reconnected)

    def _reconnected(self, connection: Any) -> None:
        log.debug("pub/sub connection reconnected to %s:%s", getattr(connection, "host", "?"),
                  getattr(connection, "port", "?"))
        self._wake_all()

    def _wake_all(self) -> None:
        for waiters in self._events.values():
            for event in waiters:
                event.set()

    async def close(self) -> None:
        """Stop reading and close the pub/sub connection; every watcher is woken (its next
        read of the pool raises ``PoolClosed``), every watch still being set up raises it,
        and no new one starts. Closing again is harmless."""
        self._closed = True
        self._cuts.cut()  # its connection may be in a handshake the close would not end
        self._wake_all()
        self._events.clear()
        for task in list(self._leaving):
            task.cancel()
        await asyncio.gather(*self._leaving, return_exceptions=True)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_FAILURES):
                await self._reader
        # Held now only by a watch subscribing (the reader and the unsubscriptions ended):
        # that one closes the PubSub once its subscribe returns.
        if self._pubsub is not None and not self._lock.locked():
            await _close(self._pubsub)
            self._pubsub = None


async def _close(pubsub: Subscriber) -> None:
    with contextlib.suppress(*_FAILURES):
        await pubsub.aclose()
