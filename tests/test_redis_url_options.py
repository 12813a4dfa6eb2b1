"""A Redis URL whose options can never work (``?ssl=bogus``, ``?ssl_cert_reqs=bogus``,
``?socket_timeout=abc``, ``?protocol=9``...) is a ``ConfigurationError`` at once, in one line
naming the option, at every entry point: ``create_pool``, the worker, the outbox relay, the
dashboard and every command taking a URL (exit 2). Before, redis-py passed such options on:
some failed on the first command with a TypeError, some on every connect (an outage,
retried for ever), some were taken (``?socket_timeout=nan``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import asyncjobs
from asyncjobs import outbox
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs.dashboard import create_app

from .procs import run_cli
from .test_cli_errors import assert_one_line_error

# What each kind of URL is, on a server that is up (the session's) or nowhere at all.
BASES = {
    "redis": "redis://127.0.0.1:{port}/0",
    "rediss": "rediss://127.0.0.1:{port}/0",
    "unix": "unix:///tmp/asyncjobs-no-such.sock",
    "cluster": "redis+cluster://127.0.0.1:{port}",
    "rediss+cluster": "rediss+cluster://127.0.0.1:{port}",
    "sentinel": "redis+sentinel://127.0.0.1:{port}/mymaster/0",
}
# A garbage value of each kind, with the option the error must name.
GARBAGE = {
    "ssl=bogus": "ssl",
    "socket_timeout=abc": "socket_timeout",
    "socket_timeout=nan": "socket_timeout",
    "socket_connect_timeout=-1": "socket_connect_timeout",
    "health_check_interval=x": "health_check_interval",
    "socket_keepalive=maybe": "socket_keepalive",
    "protocol=9": "protocol",
    "client_name=two%20words": "client_name",
    "decode_responses=yes": "decode_responses",
    "encoding=nosuch": "encoding",
    "db=abc": "db",
    "nosuch=1": "nosuch",
}
TLS_GARBAGE = {
    "ssl_cert_reqs=bogus": "ssl_cert_reqs",
    "ssl_min_version=99": "ssl_min_version",
    "ssl_check_hostname=x": "ssl_check_hostname",
    "ssl_ciphers=NO-SUCH-CIPHER": "ssl_ciphers",
    "ssl_include_verify_flags=NOPE": "ssl_include_verify_flags",
}


def _url(kind: str, query: str, port: int = 1) -> str:
    base = BASES[kind].format(port=port)
    return f"{base}{'&' if '?' in base else '?'}{query}"


def _cases() -> list[Any]:
    cases = []
    for kind in BASES:
        garbage = {**GARBAGE, **(TLS_GARBAGE if kind.startswith("rediss") else {})}
        if kind == "rediss+cluster":
            garbage.pop("ssl=bogus")  # a cluster URL may say ssl=true; bogus is its value
            garbage["ssl=bogus"] = "ssl"
        cases += [pytest.param(kind, query, name, id=f"{kind}-{query}")
                  for query, name in garbage.items()]
    cases += [pytest.param("redis", query, "needs TLS", id=f"redis-{query}")
              for query in TLS_GARBAGE]
    cases += [pytest.param("cluster", "retry_on_timeout=true", "retry_on_timeout",
                           id="cluster-retry_on_timeout"),
              pytest.param("cluster", "db=3", "one database", id="cluster-db"),
              pytest.param("unix", "socket_keepalive=true", "unix socket", id="unix-keepalive")]
    return cases


def _names(message: str, name: str) -> None:
    assert "\n" not in message
    assert f"'{name}'" in message or name in message, message


@pytest.mark.parametrize(("kind", "query", "name"), _cases())
def test_a_url_option_that_can_never_work_is_a_configuration_error(
        kind: str, query: str, name: str) -> None:
    with pytest.raises(asyncjobs.ConfigurationError) as caught:
        url_factory(_url(kind, query))
    _names(str(caught.value), name)


@pytest.mark.parametrize("url", [
    "redis://h/0?socket_timeout=2.5&socket_connect_timeout=1&client_name=api-1"
    "&health_check_interval=10&socket_keepalive=true&retry_on_timeout=no&protocol=3"
    "&decode_responses=false&encoding=latin-1&db=2&max_connections=5&timeout=1",
    "rediss://h/0?ssl_cert_reqs=none&ssl_min_version=771&ssl_check_hostname=false"
    "&ssl_ca_certs=/ca.pem&ssl_ciphers=HIGH&ssl_include_verify_flags=VERIFY_X509_STRICT",
    "unix:///tmp/r.sock?db=1&socket_timeout=3",
    "redis+cluster://h:7000?socket_timeout=3&ssl=false&client_name=x&socket_keepalive=1",
    "rediss+cluster://h:7000?ssl_cert_reqs=required&ssl_min_version=772",
    "redis+sentinel://h/mymaster/0?socket_timeout=2&sentinel_password=pw&client_name=x",
    "redis://h/0?socket_timeout=",  # no value: left out, as redis-py leaves it out
])
def test_good_url_options_are_still_taken(url: str) -> None:
    url_factory(url)


@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["ssl=bogus", "protocol=9", "client_name=two%20words",
                                   "socket_timeout=nan", "nosuch=1"])
async def test_create_pool_refuses_at_once_instead_of_retrying(
        redis_server: RedisServer, query: str) -> None:
    """On a server that is up: ``protocol=9`` was an outage retried for ``retry_for``,
    ``ssl=bogus`` a TypeError, ``socket_timeout=nan`` a pool made."""
    for kind in ("redis", "cluster"):
        url = _url(kind, query, redis_server.port)
        with pytest.raises(asyncjobs.ConfigurationError) as caught:
            await asyncio.wait_for(asyncjobs.create_pool(url, retry_for=60), 5)
        _names(str(caught.value), query.partition("=")[0])


@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["ssl=bogus", "protocol=9", "health_check_interval=x"])
async def test_the_worker_refuses_at_once(redis_server: RedisServer, query: str) -> None:
    url = _url("redis", query, redis_server.port)
    with pytest.raises(asyncjobs.ConfigurationError, match=query.partition("=")[0]):
        asyncjobs.Worker([], redis_url=url)
    worker = asyncjobs.Worker([], burst=True)
    with pytest.raises(asyncjobs.ConfigurationError, match=query.partition("=")[0]):
        await asyncio.wait_for(worker.run(redis_url=url), 5)


@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["ssl=bogus", "protocol=9", "socket_timeout=abc"])
async def test_the_outbox_relay_refuses_at_once(
        redis_server: RedisServer, query: str, tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = _url("redis", query, redis_server.port)
    database = f"sqlite:///{tmp_path}/box.db"
    with pytest.raises(asyncjobs.ConfigurationError, match=query.partition("=")[0]):
        outbox.Relay(database, redis_url=url)
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", url)  # the relay's default Redis
    relay = outbox.Relay(database, lease=False)
    with pytest.raises(asyncjobs.ConfigurationError, match=query.partition("=")[0]):
        await asyncio.wait_for(relay.run(), 5)


@pytest.mark.parametrize("query", ["ssl=bogus", "protocol=9", "socket_keepalive=maybe"])
def test_the_dashboard_refuses_when_made(query: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _url("redis", query)
    with pytest.raises(asyncjobs.ConfigurationError, match=query.partition("=")[0]):
        create_app(redis_url=url)
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", url)
    with pytest.raises(asyncjobs.ConfigurationError, match=query.partition("=")[0]):
        create_app()


CLI_COMMANDS = {
    "info": ["info"],
    "worker": ["worker", "tests.apps.basic:worker"],
    "outbox-relay": ["outbox-relay", "--database-url", "sqlite:///unused.db"],
    "dashboard": ["dashboard"],
    "queue-limit": ["queue-limit", "default"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", CLI_COMMANDS)
def test_every_command_refuses_in_one_line(command: str, redis_server: RedisServer) -> None:
    for query in ("ssl=bogus", "protocol=9"):
        url = _url("redis", query, redis_server.port)
        assert_one_line_error([*CLI_COMMANDS[command], "--redis-url", url],
                              says=f"'{query.partition('=')[0]}'")


@pytest.mark.slow
def test_the_command_refuses_cluster_and_sentinel_urls_and_the_environments(
        redis_server: RedisServer) -> None:
    for kind in ("cluster", "sentinel", "rediss"):
        assert_one_line_error(["info", "--redis-url", _url(kind, "socket_timeout=nan")],
                              says="'socket_timeout'")
    line = assert_one_line_error(
        ["info"], env={"ASYNCJOBS_REDIS_URL": _url("redis", "ssl=bogus", redis_server.port)})
    assert "'ssl'" in line


@pytest.mark.slow
def test_a_good_url_with_options_still_works_at_the_command(redis_server: RedisServer) -> None:
    url = _url("redis", "socket_timeout=5&client_name=ajtest&health_check_interval=10",
               redis_server.port)
    done = run_cli("info", "--redis-url", url, timeout_s=30)
    assert done.returncode == 0, done.stderr
