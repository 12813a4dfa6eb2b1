"""Waiting for jobs to finish without polling: one pub/sub connection per pool.

``watch(channel)`` subscribes before the caller checks the job's state, so a notice sent in
between is not missed. Notices can still be lost (a dropped connection), so callers re-check
the record now and then (``Job.result`` does so every few seconds), never in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

log = logging.getLogger("asyncjobs.pool")


class Waiter:
    """Routes pub/sub messages to the waiters of each channel."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._events: dict[bytes, set[asyncio.Event]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever a message arrives on ``channel`` while inside the block."""
        key = channel.encode()
        event = asyncio.Event()
        async with self._lock:
            waiters = self._events.setdefault(key, set())
            waiters.add(event)
            if len(waiters) == 1:
                await self._subscribe(key)
        try:
            yield event
        finally:
            async with self._lock:
                waiters = self._events.get(key, set())
                waiters.discard(event)
                if not waiters:
                    self._events.pop(key, None)
                    await self._unsubscribe(key)

    async def _subscribe(self, key: bytes) -> None:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._pubsub.subscribe(key)
        except (RedisError, OSError) as exc:  # the caller's periodic re-check covers this
            log.debug("subscribe failed: %s", exc)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="asyncjobs-waiter")

    async def _unsubscribe(self, key: bytes) -> None:
        if self._pubsub is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe(key)

    async def _read(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        while self._events:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                log.debug("pub/sub read failed, retrying: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if message and message.get("type") == "message":
                for event in self._events.get(message["channel"], ()):
                    event.set()

    async def close(self) -> None:
        """Stop reading and close the pub/sub connection."""
        self._events.clear()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await cast(Any, self._pubsub).aclose()
