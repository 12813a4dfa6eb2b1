"""Opening a pool: ``create_pool(url)``, awaited or used with ``async with``; the checks a new
pool makes of its Redis (it answers, it will not evict jobs) before it is handed out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .._durations import Seconds, to_seconds
from .._options import check_whole
from .._redis.cluster import is_cluster
from .._redis.connection import ClientFactory, default_url, redact, url_factory
from .._redis.health import hidden_warning, judge, read_settings
from .._redis.pubsub import sharded_pubsub
from .._redis.replication import Replication
from .._text import safe_str
from ..exceptions import ConfigurationError
from .pool import Pool

log = logging.getLogger("asyncjobs.pool")


class _PoolOpener:
    """``create_pool(...)`` result: await it, or use it with ``async with``."""

    def __init__(self, open_: Callable[[], Awaitable[Pool]]) -> None:
        self._open = open_
        self._pool: Pool | None = None

    def __await__(self) -> Generator[Any, None, Pool]:
        return self._open().__await__()

    async def __aenter__(self) -> Pool:
        self._pool = await self._open()
        return self._pool

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            await self._pool.close()


async def _check_settings(client: Redis, allow_eviction: bool) -> None:
    """Refuse a Redis that may evict jobs (see ``asyncjobs._redis.health``), and say so once
    when it hides the settings that tell (``INFO`` or ``CONFIG`` denied, as managed Redis
    services do) unless ``allow_eviction`` (the caller accepted any policy: nothing to
    check); learn which pub/sub it takes while every master answers
    (``asyncjobs._redis.pubsub``)."""
    settings = await read_settings(client)
    verdict = judge(settings, allow_eviction=allow_eviction)
    if verdict.errors:
        raise ConfigurationError(verdict.errors[0])
    hidden = hidden_warning(settings)
    if hidden and not allow_eviction:
        log.warning("create_pool: %s", hidden)
    await sharded_pubsub(client)


def create_pool(
    url: str | None = None,
    *,
    prefix: str = "asyncjobs",
    queue: str = "default",
    max_connections: int = 50,
    retry_for: float = 5.0,
    timeout: float = 5.0,
    client_factory: ClientFactory | None = None,
    check: bool = True,
    allow_eviction: bool = False,
    wait_for_room: Seconds | None = None,
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
) -> _PoolOpener:
    """Open a pool: ``pool = await create_pool(url)`` or ``async with create_pool(url) as p``.

    ``url`` defaults to ``$ASYNCJOBS_REDIS_URL``, then ``redis://localhost:6379/0``; it may
    carry a password, an ACL user, a database number, and ``rediss://`` for TLS. With
    ``check`` the pool pings Redis once and raises ``RedisUnavailable`` if it cannot, and
    ``ConfigurationError`` if Redis may evict keys (a ``maxmemory-policy`` other than
    ``noeviction`` can delete jobs) unless ``allow_eviction``.
    Each Redis call waits at most ``timeout`` seconds; a call that cannot reach Redis is
    retried for up to ``retry_for`` seconds, then raises ``RedisUnavailable``.
    ``wait_for_room``: how long an enqueue into a full queue (``Admin.set_max_length``)
    waits for room before raising ``QueueFull`` (default 0: at once).
    ``wait_replicas``: each enqueue returns only once that many replicas acknowledged it
    (Redis ``WAIT``, at most ``wait_timeout`` seconds, less than ``timeout``), else raises
    ``NotReplicated``: the job is on the master, not yet safe from a failover.
    """
    target = url or default_url()
    factory = client_factory or url_factory(target)
    to_seconds(wait_for_room, "wait_for_room")  # a bad value fails here, not when awaited
    _seconds(timeout, "timeout", above_zero=True)  # NaN or inf: a call that never ends
    _seconds(retry_for, "retry_for", above_zero=False)
    # 2 at least: once a result is awaited, one connection stays with the result notices
    check_whole("max_connections", max_connections, least=2)
    replication = Replication.of(wait_replicas, wait_timeout, timeout, prefix)

    async def open_() -> Pool:
        client = factory(max_connections=max_connections, socket_timeout=timeout)
        if replication is not None and is_cluster(client):
            await client.aclose()
            raise ConfigurationError(
                "wait_replicas is not supported on a Redis Cluster (WAIT counts the "
                "replicas of one master, for one connection's writes)")
        pool = Pool(client, prefix=prefix, queue=queue, retry_for=retry_for,
                    description=redact(target) if client_factory is None else "custom client",
                    wait_for_room=wait_for_room, replication=replication)
        if check:
            try:
                await pool._retrying(client.ping)
                await _check_settings(client, allow_eviction)
            except ResponseError as exc:
                await client.aclose()
                if "DB index is out of range" in str(exc):  # SELECT of the URL's database
                    raise ConfigurationError(
                        f"Redis has no database of the number the URL names "
                        f"({redact(target) if client_factory is None else 'custom client'}"
                        f"): {safe_str(exc, 200)}") from None
                raise
            except BaseException:
                await client.aclose()
                raise
        return pool

    return _PoolOpener(open_)


def _seconds(value: object, what: str, *, above_zero: bool) -> None:
    """A pool's duration option: a finite number of seconds, 0 or more (above 0 with
    ``above_zero``); ``ConfigurationError`` naming it otherwise."""
    try:
        secs = to_seconds(value, what)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None
    if secs is None or (above_zero and secs <= 0):
        raise ConfigurationError(f"{what} must be a number of seconds above 0, not "
                                 f"{value!r:.80}")


__all__ = ["create_pool"]
