"""The connections asyncjobs opens, and the settings of their pools.

Three changes to redis-py's asyncio connections, made at the boundary (``Tuned``): a write
on a connection that was closed meanwhile is an ordinary connection error whatever the event
loop, commands are packed by hiredis in C, and one task at a time connects a connection that
several share. ``pool_settings`` gives every pool connect and socket timeouts, so no call can
hang forever, and a wait for a free connection instead of a failure at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .access import denial

try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency, but stay correct without
    _hiredis_pack = None  # type: ignore[assignment]


class Tuned:
    """Four changes to redis-py's asyncio connections, made at the boundary:

    - uvloop raises RuntimeError ("the handler is closed") for a write on a connection the
      server just closed, where asyncio raises ConnectionError (uvloop issue #506): it is
      translated, so every caller sees an ordinary connection error;
    - commands are serialised by hiredis in C, as redis-py's sync client already does;
      its asyncio client packs them in Python, the largest single cost of a busy worker;
    - one task at a time connects the connection (``_connect_alone``). A pub/sub
      connection is used by several tasks at once: the waiter's reader reconnects it after
      a drop (a failover) while a ``result()`` subscribes on it, and redis-py (8.1) lets
      both open a socket, the second replacing the first in the connection: the first was
      never closed (a ResourceWarning, and a socket left subscribed on the server). Here
      the second waits, and finds the connection connected, handshake and all;
    - Redis refusing the client itself (a wrong or missing password, an ACL user without
      a command, a database number it does not have) raises ``access``'s
      ``RedisAccessDenied``, a ``ConfigurationError`` saying what to fix, not redis-py's
      error (an ``AuthenticationError`` is a ``ConnectionError``: an outage, retried).
    """

    _connect_lock: asyncio.Lock | None = None
    _connecting: asyncio.Task[Any] | None = None
    """The task connecting, while it is (the connect callbacks, a PubSub subscribing again,
    run in it, and use the connection before the connect returns)."""

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        connect = super().connect_check_health  # type: ignore[misc]
        await self._connect_alone(lambda: connect(check_health, retry_socket_connect))

    async def _connect_alone(self, connect: Callable[[], Awaitable[None]]) -> None:
        """``connect()`` unless the connection is connected, in one task at a time: another
        task's call waits until that connect ended (and then finds it connected)."""
        current = asyncio.current_task()
        if self._connecting is not None and self._connecting is current:
            if not self.is_connected:  # type: ignore[attr-defined]
                # within its own connect: a Sentinel connection's connect_to, or a
                # connect callback (a PubSub subscribing again) finding it cut again
                await connect()
            return
        if self._connecting is None and self.is_connected:  # type: ignore[attr-defined]
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self.is_connected:  # type: ignore[attr-defined]
                return
            self._connecting = current
            try:
                await connect()
            finally:
                self._connecting = None

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (ResponseError, AuthenticationError) as exc:
            denied = denial(exc, user=getattr(self, "username", None),
                            password=bool(getattr(self, "password", None)
                                          or getattr(self, "credential_provider", None)),
                            db=getattr(self, "db", None), where=self._where())
            if denied is None:
                raise
            if not isinstance(denied, ResponseError):
                # not read as a command's reply (a pipeline stops at it): the replies
                # still due would answer the next caller's commands
                await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise denied from exc

    def _where(self) -> str:
        """The server, for an error line: ``host:port``, or a Unix socket's path."""
        path = getattr(self, "path", None)
        if path:
            return str(path)
        return f"{getattr(self, 'host', '?')}:{getattr(self, 'port', '?')}"

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


class TcpConnection(Tuned, Connection):
    pass


class TlsConnection(Tuned, SSLConnection):
    pass


class UnixConnection(Tuned, UnixDomainSocketConnection):
    pass


_OURS: dict[type[Any], type[Any]] = {
    SSLConnection: TlsConnection,
    UnixDomainSocketConnection: UnixConnection,
}


def ours(connection_class: type[Any]) -> type[Any]:
    """Our subclass of one of redis-py's connection classes (TCP for any other)."""
    return _OURS.get(connection_class, TcpConnection)


def pool_settings(connection_class: type[Any], options: dict[str, Any], parsed: dict[str, Any],
              max_connections: int, socket_timeout: float | None) -> dict[str, Any]:
    """The connection pool's settings: ours, then the caller's, then the URL's."""
    return {
        # a connect waits no longer than a command may (create_pool's ``timeout``)
        "socket_connect_timeout": min(5.0, socket_timeout or 5.0),
        "health_check_interval": 30,
        # One immediate retry on a fresh connection cures a stale one (after a Redis
        # restart, or an idle connection dropped by a proxy). Longer outages are retried
        # by asyncjobs itself, bounded and logged once. A command whose reply was lost
        # may run twice: every script tolerates that (job ids, ownership checks).
        "retry": Retry(NoBackoff(), 1),
        **({} if connection_class is UnixConnection else {"socket_keepalive": True}),
        **options,
        **parsed,
        "connection_class": connection_class,
        "max_connections": max_connections,
        "socket_timeout": socket_timeout,
        "timeout": socket_timeout or 5.0,  # the longest wait for a free connection
    }
