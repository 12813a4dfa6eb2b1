"""The throwaway redis-server (``asyncjobs demo``, the test suites): a port taken between
``free_port`` and the server's bind is not a failed start, and a restart keeps its port.

Seen in a full run under pytest-xdist: a cluster node's port was taken by another process
first, the session's cluster never started, and 139 cluster tests errored."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from asyncjobs._redis import embedded
from asyncjobs._redis.embedded import RedisServer, free_port

from .conftest import need_redis_server


def _ephemeral_start() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        return int(f.read().split()[0])


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.real_redis
def test_a_port_taken_before_the_bind_is_replaced(
        taken: int, monkeypatch: pytest.MonkeyPatch) -> None:
    need_redis_server()
    picks = iter([taken, free_port()])
    monkeypatch.setattr(embedded, "free_port", lambda: next(picks))
    with RedisServer() as server:
        assert server.port != taken
        assert server.ping()


@pytest.mark.real_redis
def test_a_port_given_is_kept_and_its_loss_is_reported(taken: int) -> None:
    need_redis_server()
    server = RedisServer(port=taken)
    try:
        with pytest.raises(RuntimeError, match="Address already in use"):
            server.start()
        assert server.port == taken
    finally:
        server.close()


@pytest.mark.real_redis
def test_a_restart_keeps_its_port() -> None:
    need_redis_server()
    with RedisServer() as server:
        port = server.port
        server.stop()
        with socket.socket() as sock:  # someone takes the port while it is down
            sock.bind(("127.0.0.1", port))
            sock.listen()
            with pytest.raises(RuntimeError, match="Address already in use"):
                server.start()
        server.start()
        assert server.port == port and server.ping()


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    top = _ephemeral_start()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # random, not one port handed to every caller
    if top > 11_000:  # room below the range (Linux's default starts it at 32768)
        assert all(10_000 <= p < top for p in ports), ports
