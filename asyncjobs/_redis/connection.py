"""Opening Redis clients: from a URL (password, ACL user, db number, TLS all in the URL), or
from any factory (``asyncjobs.testing`` passes one for an in-memory fake server).

A ``redis+sentinel://`` URL names Sentinels and a service instead of a server (the form of
the ``Redis-Sentinel-Url`` package and Prefect: ``redis+sentinel://[user:password@]host[:port]
[,host2[:port2]...]/service[/db][?options]``, Sentinels on 26379 unless given). Each client
asks the Sentinels for the service's master whenever it opens a connection, and checks with
ROLE that the server is a master before using it; after a failover, a connection to the old
master breaks (Sentinel closes its clients, or it refuses writes with READONLY, which
redis-py turns into a connection error) and the next one goes to the new master. The
callers' ordinary retries on connection errors are all it takes to follow a failover.

Every client gets connect and socket timeouts, so no call can hang forever; a client that
blocks (XREADGROUP BLOCK) gets a socket timeout longer than its blocking time.

A full connection pool is not an outage: a call waits for a free connection (at most the
client's socket timeout) instead of failing at once, and if none frees up in that time it
raises ``PoolExhausted``, never ``RedisUnavailable`` (redis-py reports both as a
``ConnectionError``: ``pool_exhausted()`` tells them apart at the boundary).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .cluster import is_cluster_url, make_cluster, parse_cluster_url

DEFAULT_URL = "redis://localhost:6379/0"
URL_ENV = "ASYNCJOBS_REDIS_URL"
SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379
_SENTINEL_TIMEOUT_S = 2.0
"""Connect and read timeout on the Sentinels: each is asked in turn until one answers."""
_MASTER_RECHECK_S = 1.0
_SECRET_OPTIONS = frozenset({"password", "sentinel_password"})

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
        except (AttributeError, TypeError) as exc:
            # redis-py (8.1) writes without checking that the connection is still open: one
            # that another task closed meanwhile (redis-py's cluster client drops a failed
            # node's connections in the background) fails with "'NoneType' object has no
            # attribute 'writelines'" (no writer any more) or, on Python 3.13, "'NoneType'
            # object is not callable" (inside the closed transport)
            writer = getattr(self, "_writer", None)
            if writer is not None and not writer.transport.is_closing():
                raise
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisConnectionError("connection lost: closed while in use") from exc


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
    """A factory of clients for ``url`` (``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://`` or ``redis+cluster://``)."""
    if _is_sentinel(url):
        return _sentinel_factory(parse_sentinel_url(url), options)
    if is_cluster_url(url):
        return _cluster_factory(*parse_cluster_url(url), options)
    parsed: dict[str, Any] = dict(parse_url(url))  # host, port, db, TLS...; raises if bad
    connection_class = _OURS.get(parsed.get("connection_class", Connection), _TcpConnection)

    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        settings = _settings(connection_class, options, parsed, max_connections, socket_timeout)
        return Redis.from_pool(BlockingConnectionPool(**settings))

    return make


def _settings(connection_class: type[Any], options: dict[str, Any], parsed: dict[str, Any],
              max_connections: int, socket_timeout: float | None) -> dict[str, Any]:
    """The connection pool's settings: ours, then the caller's, then the URL's."""
    return {
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


def _cluster_factory(nodes: list[tuple[str, int]], parsed: dict[str, Any],
                     options: dict[str, Any]) -> ClientFactory:
    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        # max_connections is per node; redis-py's cluster raises MaxConnectionsError at
        # once when a node's are all busy (it has no wait): the pool's calls wait and try
        # again (Pool._retrying), the worker's treat it as pool_exhausted
        settings = _settings(_TcpConnection, options, parsed, max_connections,
                             socket_timeout)
        return make_cluster(nodes, settings, _TcpConnection, _TlsConnection)

    return make


# --- Sentinel ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    master: dict[str, Any] = field(default_factory=dict)
    """Options of the connections to the master (db, username, password, timeouts...)."""
    sentinel: dict[str, Any] = field(default_factory=dict)
    """Options of the connections to the Sentinels (``sentinel_username``/``_password``)."""


def _is_sentinel(url: str) -> bool:
    return url[: len(SENTINEL_SCHEME)].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[user:password@]host[:port][,host2[:port2]...]/service[/db][?opts]``.

    The user and password are the master's (as in a ``redis://`` URL); the Sentinels'
    own are the ``sentinel_username`` and ``sentinel_password`` options. Other options are
    redis-py's URL options for the master's connections. Raises ``ValueError`` saying what
    is wrong (one line)."""
    if not _is_sentinel(url):
        raise ValueError(f"not a {SENTINEL_SCHEME} URL")
    rest = url[len(SENTINEL_SCHEME):].partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    sentinels = tuple(_sentinel_address(h) for h in hosts.split(","))
    names = path.split("/") if path else []
    if not names or not names[0] or len(names) > 2:
        raise ValueError("expected the service name after the Sentinels, and at most a "
                         "database number after it: redis+sentinel://host:26379/mymaster/0")
    options = dict(parse_qsl(query, keep_blank_values=True))
    sentinel = {key: options.pop(f"sentinel_{key}") for key in ("username", "password")
                if f"sentinel_{key}" in options}
    if any(key.startswith("ssl") for key in options):
        raise ValueError("TLS through Sentinel is not supported yet")
    db = names[1] if len(names) == 2 else ""
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"bad database number {db!r}: a whole number, 0 or more")
    user = f"{userinfo}@" if userinfo else ""
    master: dict[str, Any] = dict(
        parse_url(f"redis://{user}sentinel-master/{db}?{urlencode(options)}"))
    for key in ("host", "port"):
        master.pop(key, None)
    return SentinelTarget(sentinels, unquote(names[0]), master, sentinel)


def _sentinel_address(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[ipv6]:port`` as (host, port)."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"bad Sentinel address {text!r}")
        port = port[1:]
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError("a Sentinel address has no host: list them as host:26379,host2:26379")
    if not port:
        return unquote(host), SENTINEL_PORT
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port {port!r} for Sentinel {host!r}")
    return unquote(host), int(port)


class _SentinelConnection(_Tuned, SentinelManagedConnection):
    """A connection to the master the Sentinels name, refused unless ROLE says master:
    a Sentinel that has not yet heard of a failover can still name the old master.

    redis-py (8.1) reconnects a dropped connection, when a command is sent on it, to the
    address it had (``send_packed_command`` calls ``connect_check_health``): here every
    reconnection asks the Sentinels first, or a client would go back to the old master.
    """

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]  # asks the Sentinels

    async def connect_to(self, address: tuple[str, int]) -> None:
        self.host, self.port = address
        await super().connect_check_health(check_health=self.connection_pool.check_connection,
                                           retry_socket_connect=False)

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health)
        if not self.connection_pool.is_master:  # pragma: no cover - replicas are not used
            return
        await self.send_command("ROLE", check_health=False)
        reply = await self.read_response()
        role = reply[0] if isinstance(reply, list | tuple) and reply else reply
        if role not in (b"master", "master"):
            raise RedisConnectionError(
                f"{self.host}:{self.port} is not the master of "
                f"{self.connection_pool.service_name!r} (a failover is under way)")


class _SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, waiting for a free connection like every asyncjobs pool,
    that also asks the Sentinels for the master at most every ``_MASTER_RECHECK_S`` while
    it is used: an old master that is still up keeps taking writes until Sentinel demotes
    it (about 10 s after a ``SENTINEL FAILOVER``), and every write it takes then is lost."""

    _recheck_at = 0.0

    async def get_connection(self, *_: Any, **__: Any) -> Any:
        await self._recheck_master()
        connection: Any = await super().get_connection()  # type: ignore[no-untyped-call]
        if self.master_address is not None and \
                (connection.host, connection.port) != self.master_address:
            try:  # a connection to the old master: to the new one instead
                await connection.disconnect()
                await connection.connect()
            except BaseException:
                await self.release(connection)
                raise
        return connection

    async def _recheck_master(self) -> None:
        now = time.monotonic()
        if now < self._recheck_at:
            return
        self._recheck_at = now + _MASTER_RECHECK_S
        # Sentinels out of reach say nothing about the master: its connections will.
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            await self.get_master_address()  # type: ignore[no-untyped-call]


class _SentinelClient(Redis):
    """A client of the service's master that also closes its Sentinel connections."""

    manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.manager is not None:
                await self.manager.aclose()


async def off_the_master(client: Redis, connection: Any) -> bool:
    """True when ``client`` is a Sentinel client whose Sentinels now name a master other than
    the server ``connection`` (one held outside the pool, like a pub/sub connection) is on:
    it should be replaced. The Sentinels are asked at most every ``_MASTER_RECHECK_S``; a
    plain client, or Sentinels out of reach, say False."""
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    if not isinstance(pool, _SentinelPool) or connection is None:
        return False
    await pool._recheck_master()
    master = pool.master_address
    if master is None:
        return False
    return (str(connection.host), int(connection.port)) != (str(master[0]), int(master[1]))


def _sentinel_factory(target: SentinelTarget, options: dict[str, Any]) -> ClientFactory:
    sentinel_settings = {
        "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
        "socket_timeout": _SENTINEL_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),  # a Sentinel that does not answer: ask the next
        **target.sentinel,
    }

    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        settings = _settings(_SentinelConnection, options, target.master, max_connections,
                             socket_timeout)
        manager = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=dict(sentinel_settings))
        client: _SentinelClient = manager.master_for(
            target.service, redis_class=_SentinelClient, connection_pool_class=_SentinelPool,
            **settings)
        client.manager = manager
        return client

    return make


def redact(url: str) -> str:
    """The URL without its passwords (the user info's, and ``password`` or
    ``sentinel_password`` options), for logs and banners."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")  # keeps IPv6 brackets and ports
    user, colon, _password = userinfo.partition(":")
    netloc = f"{user}:***@{host}" if colon else parts.netloc
    options = parse_qsl(parts.query, keep_blank_values=True)
    if netloc == parts.netloc and not any(k in _SECRET_OPTIONS for k, _ in options):
        return url
    query = "&".join(f"{quote(k, safe='')}=***" if k in _SECRET_OPTIONS else
                     f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in options)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def pool_exhausted(exc: BaseException) -> bool:
    """True when ``exc`` says every connection of the pool was busy (not that Redis is
    unreachable): redis-py raises a ``ConnectionError`` for both."""
    if isinstance(exc, MaxConnectionsError):
        return True
    return (isinstance(exc, RedisConnectionError)
            and isinstance(exc.__cause__, TimeoutError)
            and "No connection available" in str(exc))
