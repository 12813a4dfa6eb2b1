"""Clients on an in-memory fake Redis (fakeredis with Lua), for tests and the demo.

fakeredis and lupa come with the ``testing`` extra (``pip install -e ".[testing]"`` in a
clone); without them every function here raises ``ConfigurationError`` saying so.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from redis.asyncio import Redis

from ..exceptions import ConfigurationError
from .connection import ClientFactory

MISSING = ('the in-memory Redis needs fakeredis and lupa: install the "testing" extra '
           '(pip install -e ".[testing]" in a clone of asyncjobs)')


def _fakeredis() -> ModuleType:
    """The fakeredis module, once it is known that it can run Lua scripts."""
    try:
        import fakeredis
        import lupa  # noqa: F401  (fakeredis runs the scripts with it)
    except ImportError as exc:
        raise ConfigurationError(MISSING) from exc
    return fakeredis


def available() -> bool:
    """Whether the in-memory Redis can be used here."""
    try:
        _fakeredis()
    except ConfigurationError:
        return False
    return True


def fake_server() -> Any:
    """A new, empty in-memory server shared by the clients made for it."""
    return _fakeredis().FakeServer()


def fake_factory(server: Any = None) -> ClientFactory:
    """A client factory whose clients all talk to ``server`` (a new one by default)."""
    fakeredis = _fakeredis()
    shared = server if server is not None else fakeredis.FakeServer()

    def make(*, max_connections: int, socket_timeout: float | None) -> Redis:
        client: Redis = fakeredis.FakeAsyncRedis(server=shared, max_connections=max_connections)
        return client

    return make
