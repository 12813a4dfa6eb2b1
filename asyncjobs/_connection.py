"""Opening Redis clients: from a URL (password, ACL user, db number, TLS all in the URL), or
from any factory (``asyncjobs.testing`` passes one for an in-memory fake server).

Every client gets connect and socket timeouts, so no call can hang forever; a client that
blocks (XREADGROUP BLOCK) gets a socket timeout longer than its blocking time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

DEFAULT_URL = "redis://localhost:6379/0"
URL_ENV = "ASYNCJOBS_REDIS_URL"

ClientFactory = Callable[..., Redis]
"""Called as ``factory(max_connections=..., socket_timeout=...)``; returns a new client."""


def default_url() -> str:
    """The Redis URL from ``$ASYNCJOBS_REDIS_URL``, else ``redis://localhost:6379/0``."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


def url_factory(url: str, **options: Any) -> ClientFactory:
    """A factory of clients for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""

    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        settings: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "socket_keepalive": True,
            "health_check_interval": 30,
            # asyncjobs retries on its own terms (bounded, logged); no hidden retries here.
            "retry": Retry(NoBackoff(), 0),
            **options,
            "max_connections": max_connections,
            "socket_timeout": socket_timeout,
        }
        return Redis.from_url(url, **settings)

    return make


def redact(url: str) -> str:
    """The URL without its password, for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]  # keeps IPv6 brackets and the port as written
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
