"""Clients on an in-memory fake Redis (fakeredis with Lua), for tests and the demo.

Install with ``pip install "asyncjobs-redis[testing]"``.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ._connection import ClientFactory
from .exceptions import ConfigurationError


def fake_server() -> Any:
    """A new, empty in-memory server shared by the clients made for it."""
    try:
        import fakeredis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            'the in-memory Redis needs fakeredis: pip install "asyncjobs-redis[testing]"'
        ) from exc
    return fakeredis.FakeServer()


def fake_factory(server: Any = None) -> ClientFactory:
    """A client factory whose clients all talk to ``server`` (a new one by default)."""
    import fakeredis

    shared = server if server is not None else fake_server()

    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        client: Redis = fakeredis.FakeAsyncRedis(server=shared, max_connections=max_connections)
        return client

    return make
