"""Redis refusing the client itself (``asyncjobs._redis.access``): an ACL user without a
command, a wrong or missing password, a database number the server does not have. Each is
one line naming what to fix (exit 2, a configuration error) from every command, the worker
and the outbox relay, and a ``ConfigurationError`` in Python, never redis-py's error, a
traceback or an outage retried for seconds. Also: a Sentinel URL whose Sentinels are out of
reach says so in a short line; a URL without a host (``redis://``) or a socket
(``unix://``) is refused before anything connects; the relay says "working again" only once
the database works again."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

import asyncjobs
from asyncjobs._redis import access
from asyncjobs._redis.access import CommandDenied, LoginRefused, NoSuchDatabase, denial
from asyncjobs._redis.connection import BadRedisUrl, check_url, no_server, url_factory
from asyncjobs._redis.embedded import RedisServer, free_port
from asyncjobs._redis.refusals import refused, reply_code
from asyncjobs._redis.sentinel import no_master
from asyncjobs.exceptions import ConfigurationError, RedisUnavailable

from .conftest import need_redis_server
from .procs import ROOT, run_cli

WHERE = "127.0.0.1:6390"


# -- pure decisions ------------------------------------------------------------------------

def test_a_command_the_user_may_not_run_is_named_with_its_grant() -> None:
    exc = NoPermissionError("this user has no permissions to run the 'evalsha' command")
    denied = denial(exc, user="ro", password=True, db=0, where=WHERE)
    assert isinstance(denied, CommandDenied)
    assert str(denied).startswith("Redis user 'ro' may not run EVALSHA")
    assert "ACL SETUSER ro +evalsha" in str(denied) and "README" in str(denied)
    sub = access.permission_denied(None, "this user has no permissions to run the "
                                         "'config|get' command")
    assert "user 'default' may not run CONFIG GET" in str(sub)
    keys = access.permission_denied("ro", "this user has no permissions to access one of "
                                          "the keys used as arguments")
    assert "may not use the keys" in str(keys) and "~<prefix>:*" in str(keys)
    channels = access.permission_denied("ro", "this user has no permissions to access one "
                                              "of the channels used as arguments")
    assert "pub/sub channels" in str(channels) and "&<prefix>:*" in str(channels)


def test_a_denied_command_is_still_redis_pys_refusal_whatever_a_pipeline_adds() -> None:
    """Code that tells a refused command from an outage (the dashboard's 403, a worker's
    per-queue reads) sees NOPERM as before; the line stays ours after redis-py's pipeline
    rewrites the error's arguments ("Command # 1 (...) of pipeline caused error: ...")."""
    denied = access.permission_denied("ro", "this user has no permissions to run the "
                                            "'time' command")
    assert isinstance(denied, NoPermissionError) and isinstance(denied, ConfigurationError)
    assert refused(denied) and reply_code(denied)[0] == "NOPERM"
    line = str(denied)
    denied.args = (f"Command # 5 (TIME) of pipeline caused error: {denied.args[0]}",)
    assert str(denied) == line


def test_authentication_failures_are_configuration_errors_not_outages() -> None:
    wrong = denial(AuthenticationError("invalid username-password pair or user is "
                                       "disabled."), user=None, password=True, db=0,
                   where=WHERE)
    assert isinstance(wrong, LoginRefused) and isinstance(wrong, ConfigurationError)
    assert not isinstance(wrong, RedisConnectionError | OSError)  # not retried as an outage
    assert "refused the URL's password" in str(wrong) and WHERE in str(wrong)
    for reply in ("Authentication required.",
                  "HELLO must be called with the client already authenticated, otherwise "
                  "the HELLO <proto> AUTH <user> <pass> option can be used"):
        needed = denial(AuthenticationError(reply), user=None, password=False, db=0,
                        where=WHERE)
        assert isinstance(needed, LoginRefused)
        assert "needs a password and the URL gives none" in str(needed), reply


def test_a_database_out_of_range_is_named_and_other_errors_are_left_alone() -> None:
    missing = denial(ResponseError("DB index is out of range"), user=None, password=False,
                     db=99, where=WHERE)
    assert isinstance(missing, NoSuchDatabase) and not isinstance(missing, RedisError)
    assert str(missing).startswith("Redis has no database of the number the URL names (99")
    for other in (ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
                  ResponseError("NOSCRIPT No matching script"), RedisConnectionError("x")):
        assert denial(other, user=None, password=False, db=0, where=WHERE) is None
    assert denial(missing, user=None, password=False, db=0, where=WHERE) is None


def test_no_master_is_a_short_line_naming_each_sentinel() -> None:
    line = no_master("m", [("127.0.0.1:1", "Error 111 connecting to 127.0.0.1:1. "
                                           "Connection refused."),
                           ("10.0.0.2:26379", "knows no master 'm' in a good state")])
    assert line.startswith("No master found for 'm': no Sentinel named it (tried ")
    assert "127.0.0.1:1: Error 111" in line and "10.0.0.2:26379" in line
    assert "<redis" not in line and len(line) < 300
    assert len(no_master("m", [("h:1", "x" * 5000)] * 10)) < 1300


@pytest.mark.parametrize("url", ["redis://", "rediss://", "redis:///0", "redis://:pw@/0",
                                 "unix://", "unix:///", "unix://?db=1"])
def test_a_url_naming_no_server_is_refused_before_any_connect(url: str) -> None:
    with pytest.raises(ValueError, match=r"names no (host|socket)"):
        check_url(url)
    with pytest.raises(BadRedisUrl, match=r"names no (host|socket)"):
        url_factory(url)
    assert no_server("redis", "localhost", "/0") == ""
    assert no_server("unix", None, "/run/redis.sock") == ""


@pytest.mark.asyncio
async def test_sentinels_out_of_reach_raise_a_short_line(unused_tcp_port: int) -> None:
    client = url_factory(f"redis+sentinel://127.0.0.1:{unused_tcp_port}/m/0")(
        max_connections=2, socket_timeout=1.0)
    try:
        with pytest.raises(RedisConnectionError) as caught:
            await client.ping()
    finally:
        await client.aclose()
    line = str(caught.value)
    assert f"127.0.0.1:{unused_tcp_port}" in line and "No master found for 'm'" in line
    assert "<redis" not in line and len(line) < 400, line


def test_a_unix_url_without_a_path_is_one_line_at_once() -> None:
    began = time.monotonic()
    done = run_cli("info", "--redis-url", "unix://", timeout_s=30)
    assert done.returncode == 2, done.stderr
    assert "names no socket" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - began < 4.0  # not a 5 s retry


# -- a real Redis: an ACL user without asyncjobs' commands ------------------------------------

@pytest_asyncio.fixture
async def read_only_url(fresh_redis: RedisServer) -> AsyncIterator[str]:
    """A user that may read and connect, nothing else (the tester's ``ro``)."""
    admin = aioredis.Redis.from_url(fresh_redis.url)
    try:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "ro", "on", ">pw", "~*", "+@read", "+@connection")
    finally:
        await admin.aclose()
    yield fresh_redis.url.replace("redis://", "redis://ro:pw@")


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("asyncjobs: error:")]


@pytest.mark.parametrize("command", [["info"], ["check"], ["enqueue", "t"],
                                     ["queue-limit", "q", "5"],
                                     ["worker", "tests.apps.basic:worker", "--burst"]])
@pytest.mark.asyncio
async def test_an_acl_user_without_a_command_is_one_line_exit_2(
        read_only_url: str, command: list[str]) -> None:
    done = await asyncio.to_thread(run_cli, *command, "--redis-url", read_only_url,
                                   timeout_s=30)
    lines = _error_lines(done)
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Redis user 'ro' may not run " in lines[0], done.stderr
    assert "grant it (ACL SETUSER ro +" in lines[0]


@pytest.mark.asyncio
async def test_an_acl_user_without_a_command_is_a_configuration_error_in_python(
        read_only_url: str) -> None:
    async with asyncjobs.create_pool(read_only_url, prefix="acl", retry_for=0.5) as pool:
        with pytest.raises(ConfigurationError, match="Redis user 'ro' may not run") as err:
            await pool.enqueue("t")
    assert isinstance(err.value, NoPermissionError)  # still redis-py's, for its refusals


@pytest.mark.asyncio
async def test_a_worker_whose_user_loses_a_command_logs_it_and_retries(
        fresh_redis: RedisServer, tmp_path: Path) -> None:
    """Revoked while it runs: each loop logs one named error line and tries again with a
    growing pause; no 'internal error' with a traceback."""
    admin = aioredis.Redis.from_url(fresh_redis.url)
    await admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "rw", "on", ">pw", "~*", "&*", "+@all")
    url = fresh_redis.url.replace("redis://", "redis://rw:pw@")
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "asyncjobs", "worker", "tests.apps.basic:worker",
             "--redis-url", url, "--prefix", "revoked"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 8
        while b" ready: " not in log_path.read_bytes():
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
            await asyncio.sleep(0.05)
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "rw", "-evalsha", "-xreadgroup")
        await asyncio.sleep(3.5)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
        await admin.aclose()
    text = log_path.read_text()
    named = [line for line in text.splitlines()
             if "cannot go on: Redis user 'rw' may not run" in line]
    assert named, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert len(named) < 12, text  # a pause between tries, not a spin


# -- a real Redis with a password ------------------------------------------------------------

@pytest.fixture(scope="module")
def locked() -> Iterator[RedisServer]:
    need_redis_server()
    with RedisServer(extra_args=("--requirepass", "secret")) as server:
        yield server


@pytest.mark.parametrize(("password", "says"), [
    ("wrong", "refused the URL's password"), ("", "needs a password and the URL gives none"),
])
@pytest.mark.parametrize("command", [["info"], ["enqueue", "t"],
                                     ["worker", "tests.apps.basic:worker", "--burst"]])
@pytest.mark.asyncio
async def test_an_authentication_failure_is_one_line_at_once(
        locked: RedisServer, password: str, says: str, command: list[str]) -> None:
    url = locked.url.replace("redis://", f"redis://:{password}@") if password else locked.url
    began = time.monotonic()
    done = await asyncio.to_thread(run_cli, *command, "--redis-url", url, timeout_s=30)
    lines = _error_lines(done)
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "unavailable" not in lines[0] and "cannot reach" not in lines[0]
    assert time.monotonic() - began < 4.5  # no 5 s of retrying an "outage"


@pytest.mark.parametrize("password", ["wrong", ""])
@pytest.mark.asyncio
async def test_an_authentication_failure_is_a_configuration_error_in_python(
        locked: RedisServer, password: str) -> None:
    url = locked.url.replace("redis://", f"redis://:{password}@") if password else locked.url
    began = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        await asyncjobs.create_pool(url, retry_for=3.0)
    assert not isinstance(caught.value, RedisUnavailable | RedisError)
    assert time.monotonic() - began < 2.0


# -- a database number the server does not have ----------------------------------------------

NO_DATABASE = "Redis has no database of the number the URL names"


@pytest.mark.parametrize("extra", [[], ["--processes", "2"]])
def test_a_worker_on_a_database_the_server_lacks_is_one_line_exit_2(
        redis_server: RedisServer, extra: list[str]) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/99"
    done = run_cli("worker", "tests.apps.basic:worker", "--burst", *extra,
                   "--redis-url", url, timeout_s=30)
    lines = _error_lines(done)
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and NO_DATABASE in lines[0], done.stderr


def test_the_relay_on_a_database_the_server_lacks_stops_with_one_line(
        redis_server: RedisServer, tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    url = redis_server.url.rsplit("/", 1)[0] + "/99"
    done = run_cli("outbox-relay", "--database-url", f"sqlite:///{tmp_path / 'x.db'}",
                   "--redis-url", url, timeout_s=20)
    lines = _error_lines(done)
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and NO_DATABASE in lines[0], done.stderr
    assert "internal error" not in done.stderr


# -- the relay's "working again" ---------------------------------------------------------------

@pytest.mark.asyncio
async def test_the_relay_is_not_working_again_while_the_database_refuses(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Was: its own lease, dropped at the failure but still in Redis, made the next step
    find "another relay leads": Redis answered, so "working again after 0.2 s", every 5 s,
    though the database still refused every connection."""
    pytest.importorskip("asyncpg")
    from asyncjobs.outbox import Relay

    relay = Relay(f"postgresql://u@127.0.0.1:{free_port()}/db", redis_url=redis_server.url,
                  prefix=f"relay{time.monotonic_ns()}")
    caplog.set_level(logging.INFO, logger="asyncjobs.outbox")
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(2.0)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
    said = [r.getMessage() for r in caplog.records if r.name == "asyncjobs.outbox"]
    assert any("the database unavailable" in line for line in said), said
    assert not any("working again" in line for line in said), said
