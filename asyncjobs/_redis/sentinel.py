"""Redis Sentinel: the ``redis+sentinel://`` URL and clients that follow a failover.

The URL names Sentinels and a service instead of a server (the form of the
``Redis-Sentinel-Url`` package and Prefect: ``redis+sentinel://[user:password@]host[:port]
[,host2[:port2]...]/service[/db][?options]``, Sentinels on 26379 unless given). Each client
asks the Sentinels for the service's master whenever it opens a connection, and checks with
ROLE that the server is a master before using it; after a failover, a connection to the old
master breaks (Sentinel closes its clients, or it refuses writes with READONLY, which
redis-py turns into a connection error) and the next one goes to the new master. The
callers' ordinary retries on connection errors are all it takes to follow a failover.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from redis.asyncio import Redis
from redis.asyncio.connection import BlockingConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._text import clean, safe_str
from .addresses import parse_address
from .transport import Tuned, pool_settings
from .url_options import check_option

SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379
_SENTINEL_TIMEOUT_S = 2.0
"""Connect and read timeout on the Sentinels: each is asked in turn until one answers."""
_MASTER_RECHECK_S = 1.0


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    master: dict[str, Any] = field(default_factory=dict)
    """Options of the connections to the master (db, username, password, timeouts...)."""
    sentinel: dict[str, Any] = field(default_factory=dict)
    """Options of the connections to the Sentinels (``sentinel_username``/``_password``)."""


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` is a ``redis+sentinel://`` URL."""
    return url[: len(SENTINEL_SCHEME)].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[user:password@]host[:port][,host2[:port2]...]/service[/db][?opts]``.

    The user and password are the master's (as in a ``redis://`` URL); the Sentinels'
    own are the ``sentinel_username`` and ``sentinel_password`` options. Other options are
    redis-py's URL options for the master's connections. Raises ``ValueError`` saying what
    is wrong (one line)."""
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SENTINEL_SCHEME} URL")
    rest = url[len(SENTINEL_SCHEME):].partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    sentinels = tuple(parse_address(h, default_port=SENTINEL_PORT, what="Sentinel",
                                    example="host:26379,host2:26379")
                      for h in hosts.split(","))
    names = path.split("/") if path else []
    if not names or not names[0] or len(names) > 2:
        raise ValueError("expected the service name after the Sentinels, and at most a "
                         "database number after it: redis+sentinel://host:26379/mymaster/0")
    options = dict(parse_qsl(query, keep_blank_values=True))
    sentinel = {key: options.pop(f"sentinel_{key}") for key in ("username", "password")
                if f"sentinel_{key}" in options}
    if any(key.startswith("ssl") for key in options):
        raise ValueError("TLS through Sentinel is not supported yet")
    for key, value in options.items():
        if value:  # an option with no value is left out, as redis-py leaves it out
            check_option(key, value, "sentinel")
    db = names[1] if len(names) == 2 else ""
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"bad database number {db!r}: a whole number, 0 or more")
    user = f"{userinfo}@" if userinfo else ""
    master: dict[str, Any] = dict(
        parse_url(f"redis://{user}sentinel-master/{db}?{urlencode(options)}"))
    for key in ("host", "port"):
        master.pop(key, None)
    return SentinelTarget(sentinels, unquote(names[0]), master, sentinel)


def no_master(service: str, tried: list[tuple[str, str]]) -> str:
    """The error line when no Sentinel named ``service``'s master: each Sentinel asked
    (``host:port``) and what it answered, short (redis-py's says it with the repr of each
    Sentinel's client: 1,500 characters for one)."""
    each = "; ".join(f"{where}: {safe_str(why, 200)}" for where, why in tried[:5])
    more = f"; and {len(tried) - 5} more" if len(tried) > 5 else ""
    said = f": no Sentinel named it (tried {each}{more})" if tried else ""
    return clean(f"No master found for {safe_str(service, 100)!r}{said}")


class _Sentinels(Sentinel):
    """redis-py's Sentinel manager, whose ``MasterNotFoundError`` names the Sentinels
    tried and what each said, in a short line (``no_master``)."""

    async def discover_master(self, service_name: str) -> Any:
        tried: list[tuple[str, str]] = []
        for number, sentinel in enumerate(self.sentinels):
            kwargs = sentinel.connection_pool.connection_kwargs
            where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            try:
                masters: Any = await sentinel.sentinel_masters()
            except (RedisConnectionError, ResponseError, RedisTimeoutError) as exc:
                tried.append((where, safe_str(exc, 200) or type(exc).__name__))
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                # the one that answered is asked first next time (as redis-py does)
                self.sentinels[0], self.sentinels[number] = sentinel, self.sentinels[0]
                ip = state["ip"] if self._force_master_ip is None else self._force_master_ip
                return ip, state["port"]
            tried.append((where, f"knows no master {service_name!r} in a good state"))
        raise MasterNotFoundError(no_master(service_name, tried))


class _SentinelConnection(Tuned, SentinelManagedConnection):
    """A connection to the master the Sentinels name, refused unless ROLE says master:
    a Sentinel that has not yet heard of a failover can still name the old master.

    redis-py (8.1) reconnects a dropped connection, when a command is sent on it, to the
    address it had (``send_packed_command`` calls ``connect_check_health``): here every
    reconnection asks the Sentinels first, or a client would go back to the old master.
    One task at a time connects it, the Sentinels' answer included (``Tuned``): a pub/sub
    connection cut by a failover is reconnected by the waiter's reader while a ``result()``
    subscribes on it.
    """

    async def connect(self) -> None:
        connect = super().connect  # asks the Sentinels, then connect_to
        await self._connect_alone(connect)

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        await self.connect()

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


def sentinel_factory(target: SentinelTarget, options: dict[str, Any]
                     ) -> Callable[..., Redis]:
    """A factory of clients of ``target``'s master (``url_factory``'s, for a Sentinel URL)."""
    sentinel_settings = {
        "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
        "socket_timeout": _SENTINEL_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),  # a Sentinel that does not answer: ask the next
        **target.sentinel,
    }

    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        settings = pool_settings(_SentinelConnection, options, target.master, max_connections,
                             socket_timeout)
        manager = _Sentinels(
            list(target.sentinels), sentinel_kwargs=dict(sentinel_settings))
        client: _SentinelClient = manager.master_for(
            target.service, redis_class=_SentinelClient, connection_pool_class=_SentinelPool,
            **settings)
        client.manager = manager
        return client

    return make
