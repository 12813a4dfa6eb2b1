"""Opening Redis clients: from a URL (password, ACL user, db number, TLS all in the URL), or
from any factory (``asyncjobs.testing`` passes one for an in-memory fake server).

A ``redis+sentinel://`` URL gives a client that follows the Sentinels' master
(``sentinel``), a ``redis+cluster://`` URL a cluster client (``cluster``); the connections
and their pools' settings are ``transport``'s.

Every client gets connect and socket timeouts, so no call can hang forever; a client that
blocks (XREADGROUP BLOCK) gets a socket timeout longer than its blocking time.

A full connection pool is not an outage: a call waits for a free connection (at most the
client's socket timeout) instead of failing at once, and if none frees up in that time it
raises ``PoolExhausted``, never ``RedisUnavailable`` (redis-py reports both as a
``ConnectionError``: ``pool_exhausted()`` tells them apart at the boundary).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.connection import BlockingConnectionPool, Connection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..exceptions import ConfigurationError
from .cluster import is_cluster_url, make_cluster, parse_cluster_url
from .sentinel import is_sentinel_url, parse_sentinel_url, sentinel_factory
from .transport import TcpConnection, TlsConnection, ours, pool_settings
from .url_options import check_query

DEFAULT_URL = "redis://localhost:6379/0"
URL_ENV = "ASYNCJOBS_REDIS_URL"
_SECRET_OPTIONS = frozenset({"password", "sentinel_password"})

ClientFactory = Callable[..., Redis]
"""Called as ``factory(max_connections=..., socket_timeout=...)``; returns a new client."""


def default_url() -> str:
    """The Redis URL from ``$ASYNCJOBS_REDIS_URL``, else ``redis://localhost:6379/0``."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


class BadRedisUrl(ConfigurationError, ValueError):
    """A Redis URL that can never work: its scheme, a host or port, an option or an option's
    value. A ``ValueError`` too, as redis-py's own refusals are."""


def url_factory(url: str, **options: Any) -> ClientFactory:
    """A factory of clients for ``url`` (``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://`` or ``redis+cluster://``). A URL that can never work raises
    ``BadRedisUrl`` (a ``ConfigurationError``) here, in one line, before any connect."""
    try:
        if is_sentinel_url(url):
            return sentinel_factory(parse_sentinel_url(url), options)
        if is_cluster_url(url):
            return _cluster_factory(*parse_cluster_url(url), options)
        parsed = parse_plain_url(url)  # host, port, db, TLS...
    except ValueError as exc:
        raise BadRedisUrl(f"bad Redis URL {shown_url(url)}: {exc}") from None
    connection_class = ours(parsed.get("connection_class", Connection))

    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        settings = pool_settings(connection_class, options, parsed, max_connections,
                                 socket_timeout)
        return Redis.from_pool(BlockingConnectionPool(**settings))

    return make


_DB_PATH = re.compile(r"/[0-9]{1,9}", re.ASCII)
"""A ``redis://`` URL's path: its database number."""


def parse_plain_url(url: str) -> dict[str, Any]:
    """The connection options of a ``redis://``, ``rediss://`` or ``unix://`` URL (redis-py's
    ``parse_url``), its query's options checked first (``url_options``). Raises
    ``ValueError`` saying what is wrong (one line)."""
    scheme = url.partition("://")[0].lower()
    parts = urlsplit(url)
    check_query(parts.query, {"rediss": "tls", "unix": "unix"}.get(scheme, "tcp"))
    missing = no_server(scheme, parts.hostname, parts.path)
    if missing:
        raise ValueError(missing)
    if scheme in ("redis", "rediss") and parts.path not in ("", "/") \
            and not _DB_PATH.fullmatch(parts.path):
        # redis-py drops what is not a digit and joins the rest: /abc opened database 0,
        # /1/2 database 12
        raise ValueError(f"the URL's path names the database, a number like /0, not "
                         f"{parts.path!r:.80}")
    return dict(parse_url(url))


def no_server(scheme: str, host: str | None, path: str) -> str:
    """Why a ``redis://``, ``rediss://`` or ``unix://`` URL names no server ('' when it
    names one): redis-py takes ``redis://`` for localhost:6379, which reaches whatever
    Redis runs there (a shared one), and ``unix://`` for a socket named ''."""
    if scheme in ("redis", "rediss") and not host:
        return (f"the URL names no host: {scheme}://HOST:6379/0 (localhost is not "
                "assumed)")
    if scheme == "unix" and path in ("", "/"):
        return "the URL names no socket: unix:///path/to/redis.sock"
    return ""


def check_url(url: str) -> None:
    """Parse ``url`` as ``url_factory`` does, opening nothing; raises ``ValueError`` saying
    what is wrong (one line)."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
    elif is_cluster_url(url):
        parse_cluster_url(url)
    else:
        parse_plain_url(url)


def shown_url(url: str) -> str:
    """``url`` for an error line: without its passwords (``redact``), or only its scheme
    when it cannot even be split (a stray ``[``)."""
    try:
        return redact(url)
    except ValueError:
        return url.partition("://")[0] + "://..."


def _cluster_factory(nodes: list[tuple[str, int]], parsed: dict[str, Any],
                     options: dict[str, Any]) -> ClientFactory:
    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        # max_connections is per node; redis-py's cluster raises MaxConnectionsError at
        # once when a node's are all busy (it has no wait): the pool's calls wait and try
        # again (Pool._retrying), the worker's treat it as pool_exhausted
        settings = pool_settings(TcpConnection, options, parsed, max_connections,
                                 socket_timeout)
        return make_cluster(nodes, settings, TcpConnection, TlsConnection)

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


def tls_hint(where: str, exc: BaseException) -> str:
    """What to add to ``exc``'s text when ``where`` (a redacted URL) asks for TLS and
    connecting timed out: one likely cause, a server without TLS on that port, which takes
    the handshake's first bytes for a command it waits to see the end of and never answers
    (redis-py only says "Timeout connecting to server", as it does for a host that does not
    answer at all: the hint names the cause as a possibility); else ''."""
    if isinstance(exc, (TimeoutError, RedisTimeoutError)) \
            and where.lower().startswith("rediss") and "connecting" in str(exc):
        return (" (the URL asks for TLS: if the server on that port does not speak TLS, "
                "it never answers the handshake; for a plain port, use redis://)")
    return ""


def pool_exhausted(exc: BaseException) -> bool:
    """True when ``exc`` says every connection of the pool was busy (not that Redis is
    unreachable): redis-py raises a ``ConnectionError`` for both."""
    if isinstance(exc, MaxConnectionsError):
        return True
    return (isinstance(exc, RedisConnectionError)
            and isinstance(exc.__cause__, TimeoutError)
            and "No connection available" in str(exc))
