"""Small pure pieces: times, states, record parsing, the loader, URLs, JSON logs, slots, outages."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from asyncjobs._cli.loader import load
from asyncjobs._cli.logs import JsonFormatter
from asyncjobs._codec import encode_errors, encode_progress, encode_spec, encode_value
from asyncjobs._model import ErrorInfo, JobSpec, JobState, Progress, from_ms, to_ms
from asyncjobs._producer.handle import parse_record
from asyncjobs._redis.addresses import parse_address
from asyncjobs._redis.connection import redact, url_factory
from asyncjobs._worker.runtime import Outage, Slots
from asyncjobs.exceptions import ConfigurationError

NEW_YEAR_2024 = datetime(2024, 1, 1, tzinfo=UTC)
NEW_YEAR_2024_MS = 1_704_067_200_000  # date -d 2024-01-01T00:00:00Z +%s, times 1000

# --- to_ms / from_ms -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "ms"),
    [
        pytest.param(datetime(1970, 1, 1, tzinfo=UTC), 0, id="epoch"),
        pytest.param(NEW_YEAR_2024, NEW_YEAR_2024_MS, id="utc"),
        pytest.param(datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))),
                     NEW_YEAR_2024_MS, id="plus-two-hours"),
        pytest.param(NEW_YEAR_2024 + timedelta(milliseconds=1), NEW_YEAR_2024_MS + 1, id="one-ms"),
    ],
)
def test_to_ms_and_back(moment: datetime, ms: int) -> None:
    assert to_ms(moment) == ms
    back = from_ms(ms)
    assert back == moment
    assert back.tzinfo is UTC


def test_to_ms_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        to_ms(datetime(2024, 1, 1))


@pytest.mark.parametrize(
    ("state", "final"),
    [
        (JobState.SCHEDULED, False), (JobState.QUEUED, False), (JobState.RUNNING, False),
        (JobState.COMPLETE, True), (JobState.FAILED, True), (JobState.ABORTED, True),
        (JobState.EXPIRED, True),
    ],
    ids=str,
)
def test_job_state_is_final(state: JobState, final: bool) -> None:
    assert state.is_final is final


# --- parse_record ----------------------------------------------------------------------------

ERRORS = [
    ErrorInfo("builtins.ValueError", "bad", "Traceback ...", 1, NEW_YEAR_2024_MS),
    ErrorInfo("Timeout", "too slow", "", 2, NEW_YEAR_2024_MS + 1000),
]


def test_parse_record_reads_every_field() -> None:
    spec = JobSpec("send", [1, "x"], {"note": "hi"}, timeout_s=30.0, max_tries=5,
                   headers={"trace": "t1"})
    raw = {
        b"j": encode_spec(spec), b"s": b"failed", b"a": b"2",
        b"q": b"1704067200000", b"d": b"1704067201000", b"st": b"1704067202000",
        b"et": b"1704067203000", b"x": b"1704067260000", b"w": b"host-1.42",
        b"h": encode_errors(ERRORS), b"p": encode_progress(Progress(0.5, "half", 7)),
        b"dl": b"timed out on try 2 of 2",
    }
    info = parse_record("job-1", "emails", raw)
    assert (info.id, info.queue, info.task) == ("job-1", "emails", "send")
    assert (info.args, info.kwargs) == ([1, "x"], {"note": "hi"})
    assert info.state is JobState.FAILED
    assert info.attempts == 2
    assert info.enqueued_at == NEW_YEAR_2024
    assert info.scheduled_for == NEW_YEAR_2024 + timedelta(seconds=1)
    assert info.started_at == NEW_YEAR_2024 + timedelta(seconds=2)
    assert info.ended_at == NEW_YEAR_2024 + timedelta(seconds=3)
    assert info.expires_at == NEW_YEAR_2024 + timedelta(minutes=1)
    assert info.worker == "host-1.42"
    assert info.errors == tuple(ERRORS)
    assert info.error == ERRORS[-1]
    assert info.progress == Progress(0.5, "half", 7)
    assert info.dead_letter_reason == "timed out on try 2 of 2"
    assert (info.timeout_s, info.max_tries, info.headers) == (30.0, 5, {"trace": "t1"})
    assert info.result is None


def test_parse_record_of_a_complete_job_has_its_result() -> None:
    raw = {b"j": encode_spec(JobSpec("add", [1, 2])), b"s": b"complete", b"a": b"1",
           b"r": encode_value({"sum": 3, "items": [1, 2]})}
    info = parse_record("j2", "default", raw)
    assert info.state is JobState.COMPLETE
    assert info.result == {"sum": 3, "items": [1, 2]}
    assert (info.errors, info.error, info.progress) == ((), None, None)
    assert (info.worker, info.dead_letter_reason, info.started_at) == (None, None, None)


@pytest.mark.parametrize(
    "spec_field",
    [{b"j": b"\xc1 not msgpack"}, {b"j": encode_value({"not": "a spec"})}, {}],
    ids=["garbage", "wrong-shape", "missing"],
)
def test_parse_record_with_an_undecodable_spec(spec_field: dict[bytes, bytes]) -> None:
    raw = {**spec_field, b"s": b"queued", b"q": b"1704067200000"}
    info = parse_record("j3", "default", raw)
    assert info.task == "<undecodable>"
    assert (info.args, info.kwargs, info.headers) == ([], {}, {})
    assert (info.timeout_s, info.max_tries) == (None, None)
    assert info.state is JobState.QUEUED
    assert info.enqueued_at == NEW_YEAR_2024


# --- the loader ------------------------------------------------------------------------------

_counter = iter(range(10**6))


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; modules created in it are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("ajtest_")]:
        del sys.modules[name]


def write_module(directory: Path, source: str) -> str:
    name = f"ajtest_mod_{next(_counter)}_{directory.name.replace('-', '_')}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_load_returns_the_attribute(module_dir: Path) -> None:
    name = write_module(module_dir, """
        class App:
            worker = "the worker"
        answer = 42
    """)
    assert load(f"{name}:answer") == 42
    assert load(f"{name}:App.worker") == "the worker"


def test_load_from_a_package(module_dir: Path) -> None:
    package = module_dir / "ajtest_pkg_loader"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text("worker = 'pkg worker'\n")
    assert load("ajtest_pkg_loader.jobs:worker") == "pkg worker"


@pytest.mark.parametrize(
    "path",
    ["ajtest_no_such_module:worker", "ajtest_no_such_pkg.jobs:worker"],
    ids=["module", "package"],
)
def test_load_missing_module(module_dir: Path, path: str) -> None:
    module = path.split(":")[0]
    with pytest.raises(ConfigurationError, match=f"cannot import '{module}': no such module"):
        load(path)


def test_load_missing_attribute(module_dir: Path) -> None:
    name = write_module(module_dir, "worker = 1\n")
    with pytest.raises(ConfigurationError,
                       match=f"module '{name}' has no attribute 'wroker'"):
        load(f"{name}:wroker")


def test_load_missing_nested_attribute(module_dir: Path) -> None:
    name = write_module(module_dir, "class A:\n    pass\n")
    with pytest.raises(ConfigurationError, match=r"has no attribute 'A\.b'"):
        load(f"{name}:A.b")


@pytest.mark.parametrize(
    "path", ["", "module_only", ":worker", "module:", ":"],
    ids=["empty", "no-colon", "no-module", "no-attribute", "colon-only"],
)
def test_load_malformed_path(path: str) -> None:
    with pytest.raises(ConfigurationError,
                       match=f"expected 'package.module:attribute', got '{path}'"):
        load(path)


def test_load_does_not_hide_a_broken_import_inside_the_module(module_dir: Path) -> None:
    name = write_module(module_dir, "import ajtest_missing_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="ajtest_missing_dependency"):
        load(f"{name}:worker")


def test_load_does_not_hide_a_missing_dependency_named_like_a_prefix(module_dir: Path) -> None:
    (module_dir / "ajtest_app_worker.py").write_text("import ajtest_app\n")
    with pytest.raises(ModuleNotFoundError, match="ajtest_app"):
        load("ajtest_app_worker:worker")


# --- redact / url_factory --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("redis://user:pass@host:6379/0", "redis://user:***@host:6379/0",
                     id="user-and-password"),
        pytest.param("redis://:pass@host/2", "redis://:***@host/2", id="password-only"),
        pytest.param("rediss://alice:s3cr%40t@cache.example.com:6380/1?ssl_cert_reqs=none",
                     "rediss://alice:***@cache.example.com:6380/1?ssl_cert_reqs=none",
                     id="rediss-with-query"),
        pytest.param("redis://localhost:6379/0", "redis://localhost:6379/0", id="no-password"),
        pytest.param("redis://alice@host/0", "redis://alice@host/0", id="user-only"),
        pytest.param("unix:///tmp/redis.sock", "unix:///tmp/redis.sock", id="unix"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_redact_keeps_ipv6_brackets() -> None:
    assert redact("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


@pytest.mark.parametrize(
    ("url", "connection_class", "expected"),
    [
        pytest.param("redis://alice:s3cret@example.com:6380/3", Connection,
                     {"username": "alice", "password": "s3cret", "host": "example.com",
                      "port": 6380, "db": 3}, id="redis"),
        pytest.param("rediss://:tls-pass@secure.example.com/5", SSLConnection,
                     {"password": "tls-pass", "host": "secure.example.com", "db": 5},
                     id="rediss"),
        pytest.param("unix:///tmp/ajtest.sock?db=2", UnixDomainSocketConnection,
                     {"path": "/tmp/ajtest.sock", "db": 2}, id="unix"),
    ],
)
def test_url_factory_builds_clients_from_the_url(
    url: str, connection_class: type, expected: dict[str, object]
) -> None:
    client = url_factory(url)(max_connections=7, socket_timeout=2.5)
    pool = client.connection_pool
    assert issubclass(pool.connection_class, connection_class)
    assert pool.max_connections == 7
    kwargs = pool.connection_kwargs
    assert {key: kwargs.get(key) for key in expected} == expected
    assert kwargs["socket_timeout"] == 2.5
    assert kwargs["socket_connect_timeout"] == 2.5  # no longer than a command may wait


def test_url_factory_passes_extra_options() -> None:
    client = url_factory("redis://host/0", client_name="ajtest")(max_connections=1,
                                                                 socket_timeout=None)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["client_name"] == "ajtest"
    assert kwargs["socket_timeout"] is None
    assert "password" not in kwargs or kwargs["password"] is None


# --- JsonFormatter ---------------------------------------------------------------------------


def format_record(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("asyncjobs.worker", logging.INFO, __file__, 1,
                               "job %s done", ("j1",), None)
    record.created = NEW_YEAR_2024.timestamp() + 0.25
    record.__dict__.update(extra)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_json_formatter_basic_fields() -> None:
    assert format_record() == {
        "time": "2024-01-01T00:00:00.250+00:00", "level": "info",
        "logger": "asyncjobs.worker", "message": "job j1 done",
    }


def test_json_formatter_includes_job_fields() -> None:
    out = format_record(job_id="j1", task="send", queue="emails", attempt=2, duration_s=0.5,
                        outcome="ok", unrelated="no")
    assert {k: out[k] for k in ("job_id", "task", "queue", "attempt", "duration_s", "outcome")} \
        == {"job_id": "j1", "task": "send", "queue": "emails", "attempt": 2,
            "duration_s": 0.5, "outcome": "ok"}
    assert "unrelated" not in out


def test_json_formatter_stringifies_odd_values_and_adds_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info)
    record.job_id = Path("odd")
    out = json.loads(JsonFormatter().format(record))
    assert out["job_id"] == "odd"
    assert out["level"] == "error"
    assert "ValueError: boom" in out["exception"]


# --- Slots -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_slots_take_some_waits_until_a_slot_is_given_back() -> None:
    slots = Slots(3)
    assert await slots.take_some(2) == 2
    assert await slots.take_some(5) == 1
    assert (slots.free, slots.busy) == (0, 3)
    waiter = asyncio.create_task(slots.take_some(4))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    slots.give(2)
    assert await asyncio.wait_for(waiter, 1) == 2
    assert (slots.free, slots.busy) == (0, 3)


def test_slots_take_now_never_waits() -> None:
    slots = Slots(2)
    assert slots.take_now(5) == 2
    assert slots.take_now(1) == 0
    slots.give()
    assert slots.take_now(3) == 1
    assert slots.busy == 2


def test_slots_give_zero_changes_nothing() -> None:
    slots = Slots(2)
    slots.take_now(2)
    slots.give(0)
    assert (slots.free, slots.busy) == (0, 2)


# --- Outage ----------------------------------------------------------------------------------


def outage_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncjobs.worker"]


def test_outage_is_logged_once_and_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "asyncjobs.worker")
    outage = Outage()
    outage.ok()
    assert outage_messages(caplog) == []
    for where in ("fetch", "settle", "heartbeat"):
        outage.failed(ConnectionError("refused"), where)
    messages = outage_messages(caplog)
    assert len(messages) == 1
    assert "redis unavailable (fetch: refused)" in messages[0]
    assert outage.recent(0)
    outage.ok()
    outage.ok()
    messages = outage_messages(caplog)
    assert len(messages) == 2
    assert messages[1].startswith("redis reachable again after")
    assert outage.recent(60)
    assert not outage.recent(0)
    outage.failed(OSError("reset"), "fetch")
    assert len(outage_messages(caplog)) == 3


@pytest.mark.parametrize(
    ("rand", "expected"),
    [
        pytest.param(0.0, [0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5, 2.5], id="low-jitter"),
        pytest.param(0.999999, [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0], id="high-jitter"),
    ],
)
def test_outage_backoff_grows_and_is_capped(
    monkeypatch: pytest.MonkeyPatch, rand: float, expected: list[float]
) -> None:
    monkeypatch.setattr("asyncjobs._worker.runtime.random.random", lambda: rand)
    outage = Outage()
    delays = [outage.failed(OSError(), "x") for _ in expected]
    assert delays == pytest.approx(expected, rel=1e-5)
    outage.ok()
    assert outage.failed(OSError(), "x") == pytest.approx(expected[0], rel=1e-5)


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["redis://h/0", "rediss://h/0", "unix:///tmp/x.sock"])
async def test_a_write_on_a_closed_transport_is_a_connection_error(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop raises RuntimeError("... the handler is closed") where asyncio raises a
    connection error; the client translates it, so the worker treats it as an outage."""
    import redis.exceptions

    async def closed(self: object, command: object, check_health: bool = True) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; "
                           "the handler is closed")

    async def other(self: object, command: object, check_health: bool = True) -> None:
        raise RuntimeError("something else")

    pool = url_factory(url)(max_connections=1, socket_timeout=1).connection_pool
    conn = pool.make_connection()
    base = pool.connection_class.__mro__[2]
    monkeypatch.setattr(base, "send_packed_command", closed)
    with pytest.raises(redis.exceptions.ConnectionError, match="connection lost"):
        await conn.send_packed_command(b"PING")
    monkeypatch.setattr(base, "send_packed_command", other)
    with pytest.raises(RuntimeError, match="something else"):
        await conn.send_packed_command(b"PING")


@pytest.mark.parametrize(("text", "expected"), [
    ("h", ("h", 9)), ("h:1", ("h", 1)), ("[::1]:7000", ("::1", 7000)), ("[::1]", ("::1", 9)),
    ("h%2Fx:65535", ("h/x", 65535)),
])
def test_an_address_in_a_list_of_servers(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, default_port=9, what="node", example="a:1,b:2") == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "a node address has no host: list them as a:1,b:2"), (":1", "has no host"),
    ("h:0", "bad port '0' for node 'h'"), ("h:65536", "bad port"), ("h:x", "bad port"),
    ("h:\u0661", "bad port"), ("[::1", "bad node address"), ("[::1]x", "bad node address"),
])
def test_a_bad_address_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_address(text, default_port=9, what="node", example="a:1,b:2")
    assert "\n" not in str(caught.value)
