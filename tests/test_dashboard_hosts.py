"""The standalone dashboard answers only to its addresses and the host names it knows: a web
page that rebinds its own name to 127.0.0.1 (DNS rebinding) reaches the dashboard with that
name in ``Host`` and is refused, pages and actions alike, before any CSRF check could be
fooled (the page would be the dashboard's origin then, token included)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from asyncjobs._redis.embedded import RedisServer, free_port
from asyncjobs.dashboard import create_app
from asyncjobs.dashboard._security import KnownHosts, host_name, is_address
from asyncjobs.testing import Harness

from .procs import ROOT, run_cli


def test_host_names_and_addresses_are_told_apart() -> None:
    assert host_name("Evil.Example:8080") == "evil.example"
    assert host_name("[::1]:8080") == "[::1]"
    assert host_name("[::1") == ""
    assert host_name("") == ""
    assert [is_address(n) for n in ("127.0.0.1", "10.0.0.5", "[::1]", "[fe80::1]")] == [True] * 4
    assert [is_address(n) for n in ("localhost", "evil.example", "127.0.0.1.nip.io", "",
                                    "[evil]")] == [False] * 5


@pytest.mark.asyncio
async def test_a_rebound_name_is_refused_and_addresses_and_known_names_pass() -> None:
    harness = Harness()
    app = KnownHosts(create_app(harness.pool), ["localhost", "dash.example"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://x") as http:

        async def status(host: str, path: str = "/") -> int:
            return (await http.get(path, headers={"host": host})).status_code

        for host in ("127.0.0.1:8080", "[::1]:8080", "10.0.0.5", "localhost:8080",
                     "DASH.example", "dash.example:443"):
            assert await status(host) == 200, host
        for host in ("evil.example:8080", "evil.example", "dash.example.evil.example",
                     "localhost.evil.example", ""):
            assert await status(host) == 400, host
        refused = await http.post("/actions/purge", headers={"host": "evil.example"},
                                  json={"queue": "default", "ids": [], "confirm": True})
        assert refused.status_code == 400
        assert "--allowed-host" in refused.text
    anyone = KnownHosts(create_app(harness.pool), ["*"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=anyone),
                                 base_url="http://x") as http:
        assert (await http.get("/", headers={"host": "evil.example"})).status_code == 200
    await harness.close()


@pytest.fixture
def dashboard_command(fresh_redis: RedisServer) -> Iterator[int]:
    """``asyncjobs dashboard`` on a free port with ``--allowed-host dash.example``, once it
    answers: its port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "dashboard", "--redis-url", fresh_redis.url,
         "--port", str(port), "--allowed-host", "dash.example", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "no dashboard"
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_the_command_refuses_a_name_it_does_not_know(dashboard_command: int) -> None:
    url = f"http://127.0.0.1:{dashboard_command}/"
    port = dashboard_command

    def status(host: str) -> int:
        return httpx.get(url, headers={"host": host}, timeout=5).status_code

    assert status(f"127.0.0.1:{port}") == 200
    assert status(f"localhost:{port}") == 200
    assert status(f"{socket.gethostname()}:{port}") == 200
    assert status(f"dash.example:{port}") == 200
    assert status(f"evil.example:{port}") == 400


def test_the_command_refuses_an_allowed_host_with_spaces() -> None:
    bad = run_cli("dashboard", "--allowed-host", "a b", "--redis-url", "redis://x:1/0")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("asyncjobs: error: --allowed-host takes a host name (or *), "
                                  "without spaces")
