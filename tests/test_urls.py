"""Redis URLs with a password, an ACL user, a database number and TLS, for the pool and the
worker alike (each against a real redis-server configured for it)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio

import asyncjobs
from asyncjobs._redis.embedded import RedisServer

from .conftest import IN_CI, need_redis_server

pytestmark = pytest.mark.asyncio


@asyncjobs.task
async def mul(ctx: asyncjobs.Context, a: int, b: int) -> int:
    return a * b


async def round_trip(url: str) -> None:
    async with asyncjobs.create_pool(url, prefix="urls") as pool:
        job = await pool.enqueue(mul, 6, 7)
        await asyncjobs.Worker([mul], burst=True, prefix="urls").run(redis_url=url)
        assert await job.result(timeout=5) == 42


@pytest.fixture
def server_with(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    need_redis_server()
    with RedisServer(extra_args=tuple(request.param)) as server:
        yield server


@pytest.mark.parametrize("server_with", [["--requirepass", "s3cr3t"]], indirect=True)
async def test_password_in_url(server_with: RedisServer) -> None:
    await round_trip(f"redis://:s3cr3t@127.0.0.1:{server_with.port}/0")
    with pytest.raises(asyncjobs.AsyncJobsError):
        await asyncjobs.Worker([mul], burst=True).run(redis_url=server_with.url)


@pytest.mark.parametrize(
    "server_with",
    [["--user", "default", "off", "--user", "alice", "on", ">wonder", "~*", "&*", "+@all"]],
    indirect=True,
)
async def test_acl_user_in_url(server_with: RedisServer) -> None:
    await round_trip(f"redis://alice:wonder@127.0.0.1:{server_with.port}/0")


async def test_database_number_in_url(fresh_redis: RedisServer) -> None:
    await round_trip(f"redis://127.0.0.1:{fresh_redis.port}/3")
    db3 = redis.asyncio.Redis(port=fresh_redis.port, db=3)
    db0 = redis.asyncio.Redis(port=fresh_redis.port, db=0)
    try:
        assert await db3.exists("urls:queues") == 1
        assert await db0.dbsize() == 0
    finally:
        await db3.aclose()
        await db0.aclose()


class TlsRedisServer(RedisServer):
    """A redis-server that only speaks TLS, with a self-signed certificate."""

    def __init__(self) -> None:
        super().__init__()
        self.cert = self.directory / "cert.pem"
        self.key = self.directory / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(self.key), "-out", str(self.cert), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )

    def arguments(self) -> list[str]:
        args = super().arguments()
        args[args.index("--port") + 1] = "0"
        return [*args, "--tls-port", str(self.port), "--tls-cert-file", str(self.cert),
                "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.cert),
                "--tls-auth-clients", "no"]

    def ping(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.cert))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _openssl() -> None:
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("openssl is needed to make a certificate for the TLS test")
        pytest.skip("openssl not on PATH")


async def test_tls_rediss_url() -> None:
    need_redis_server()
    _openssl()
    with TlsRedisServer() as server:
        cafile = Path(server.cert)
        await round_trip(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={cafile}")
        with pytest.raises(asyncjobs.AsyncJobsError):  # plain text to a TLS port fails cleanly
            async with asyncjobs.create_pool(f"redis://127.0.0.1:{server.port}/0", retry_for=0.5):
                pass


async def test_unix_socket_url(tmp_path: Path) -> None:
    need_redis_server()
    socket_path = tmp_path / "redis.sock"
    with RedisServer(extra_args=("--unixsocket", str(socket_path))):
        await round_trip(f"unix://{socket_path}?db=2")
