"""Opening Redis clients: from a URL (password, ACL user, db number, TLS all in the URL), or
from any factory (``asyncjobs.testing`` passes one for an in-memory fake server).

Every client gets connect and socket timeouts, so no call can hang forever; a client that
blocks (XREADGROUP BLOCK) gets a socket timeout longer than its blocking time.

A full connection pool is not an outage: a call waits for a free connection (at most the
client's socket timeout) instead of failing at once, and if none frees up in that time it
raises ``PoolExhausted``, never ``RedisUnavailable`` (redis-py reports both as a
``ConnectionError``: ``pool_exhausted()`` tells them apart at the boundary).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

DEFAULT_URL = "redis://localhost:6379/0"
URL_ENV = "ASYNCJOBS_REDIS_URL"

ClientFactory = Callable[..., Redis]
"""Called as ``factory(max_connections=..., socket_timeout=...)``; returns a new client."""


def default_url() -> str:
    """The Redis URL from ``$ASYNCJOBS_REDIS_URL``, else ``redis://localhost:6379/0``."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency, but stay correct without
    _hiredis_pack = None  # type: ignore[assignment]


class _Tuned:
    """Two changes to redis-py's asyncio connections, made at the boundary:

    - uvloop raises RuntimeError ("the handler is closed") for a write on a connection the
      server just closed, where asyncio raises ConnectionError (uvloop issue #506): it is
      translated, so every caller sees an ordinary connection error;
    - commands are serialised by hiredis in C, as redis-py's sync client already does;
      its asyncio client packs them in Python, the largest single cost of a busy worker.
    """

    if _hiredis_pack is not None:

        def pack_command(self, *args: Any) -> list[bytes]:
            return [_hiredis_pack(_split_name(args))]

        def pack_commands(self, commands: Any) -> list[bytes]:
            return [b"".join(_hiredis_pack(_split_name(tuple(c))) for c in commands)]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except RuntimeError as exc:
            if "handler is closed" not in str(exc):
                raise
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisConnectionError(f"connection lost: {exc}") from exc


def _split_name(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """'CONFIG GET' -> 'CONFIG', 'GET': redis-py passes some command names as one string."""
    name = args[0]
    if isinstance(name, str) and " " in name:
        return (*name.split(), *args[1:])
    if isinstance(name, bytes) and b" " in name:
        return (*name.split(), *args[1:])
    return args


class _TcpConnection(_Tuned, Connection):
    pass


class _TlsConnection(_Tuned, SSLConnection):
    pass


class _UnixConnection(_Tuned, UnixDomainSocketConnection):
    pass


_OURS: dict[type[Any], type[Any]] = {
    SSLConnection: _TlsConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


def url_factory(url: str, **options: Any) -> ClientFactory:
    """A factory of clients for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
    parsed = parse_url(url)  # host, port, db, user, password, TLS settings; raises if bad
    connection_class = _OURS.get(parsed.get("connection_class", Connection), _TcpConnection)

    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        settings: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "health_check_interval": 30,
            # One immediate retry on a fresh connection cures a stale one (after a Redis
            # restart, or an idle connection dropped by a proxy). Longer outages are retried
            # by asyncjobs itself, bounded and logged once. A command whose reply was lost
            # may run twice: every script tolerates that (job ids, ownership checks).
            "retry": Retry(NoBackoff(), 1),
            **({} if connection_class is _UnixConnection else {"socket_keepalive": True}),
            **options,
            **parsed,
            "connection_class": connection_class,
            "max_connections": max_connections,
            "socket_timeout": socket_timeout,
            "timeout": socket_timeout or 5.0,  # the longest wait for a free connection
        }
        return Redis.from_pool(BlockingConnectionPool(**settings))

    return make


def redact(url: str) -> str:
    """The URL without its password, for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]  # keeps IPv6 brackets and the port as written
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def pool_exhausted(exc: BaseException) -> bool:
    """True when ``exc`` says every connection of the pool was busy (not that Redis is
    unreachable): redis-py raises a ``ConnectionError`` for both."""
    if isinstance(exc, MaxConnectionsError):
        return True
    return (isinstance(exc, RedisConnectionError)
            and isinstance(exc.__cause__, TimeoutError)
            and "No connection available" in str(exc))
