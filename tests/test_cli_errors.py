"""Bad input to the ``asyncjobs`` command: one line, ``asyncjobs: error: ...``, exit 2, and
never a traceback; in every command that takes the option."""

from __future__ import annotations

import pytest

from asyncjobs._cli import loader as _loader
from asyncjobs._cli.logs import check_format, check_level, configure
from asyncjobs._redis.embedded import free_port
from asyncjobs.exceptions import ConfigurationError

from .conftest import Backend
from .procs import run_cli

DEEP = "[" * 10_000 + "]" * 10_000
NOWHERE = f"redis://127.0.0.1:{free_port()}/0"  # never reached: the input is refused first

# Each command with the arguments it needs besides the option under test.
COMMANDS = {
    "worker": ["worker", "tests.apps.basic:worker"],
    "info": ["info"],
    "job": ["job", "some-id"],
    "enqueue": ["enqueue", "add"],
    "check": ["check"],
    "dlq list": ["dlq", "list"],
    "dlq show": ["dlq", "show", "some-id"],
    "dlq requeue": ["dlq", "requeue", "some-id"],
    "dlq requeue --all": ["dlq", "requeue", "--all"],
    "dlq purge": ["dlq", "purge", "--yes"],
}
BAD_URLS = {
    "http://localhost:6379/0": "is not a Redis URL",
    "redis://localhost:abc/0": "Port could not be cast to integer",
    "redis://localhost:99999/0": "Port out of range",
    "redis://[::1/0": "Invalid IPv6 URL",
}


def assert_one_line_error(args: list[str], code: int = 2, *, says: str = "",
                          env: dict[str, str] | None = None) -> str:
    done = run_cli(*args, env=env, timeout_s=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("asyncjobs: error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert says in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("url", list(BAD_URLS)[:2])
def test_a_bad_redis_url_is_one_line(command: str, url: str) -> None:
    assert_one_line_error([*COMMANDS[command], "--redis-url", url], says=BAD_URLS[url])


@pytest.mark.slow
@pytest.mark.parametrize("url", list(BAD_URLS)[2:])
def test_other_bad_urls_are_one_line(url: str) -> None:
    assert_one_line_error(["info", "--redis-url", url], says=BAD_URLS[url])


@pytest.mark.slow
def test_a_bad_url_from_the_environment_is_one_line_too() -> None:
    line = assert_one_line_error(["info"], env={"ASYNCJOBS_REDIS_URL": "http://x/0"})
    assert "ASYNCJOBS_REDIS_URL" in line


@pytest.mark.slow
def test_a_password_in_a_bad_url_is_not_shown() -> None:
    line = assert_one_line_error(["info", "--redis-url", "redis://:hunter2@localhost:abc/0"])
    assert "hunter2" not in line


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_an_invalid_queue_name_is_one_line(command: str) -> None:
    assert_one_line_error([*COMMANDS[command], "-q", "a{b}", "--redis-url", NOWHERE],
                          says="invalid queue name 'a{b}'")


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_an_invalid_prefix_is_one_line(command: str) -> None:
    assert_one_line_error([*COMMANDS[command], "--prefix", "has space", "--redis-url", NOWHERE],
                          says="invalid prefix 'has space'")


@pytest.mark.slow
@pytest.mark.parametrize(("args", "says"), [
    (["enqueue", "add", "--delay", "inf"], "delay must be a finite number of seconds"),
    (["enqueue", "add", "--delay", "nan"], "delay must be a finite number of seconds"),
    (["enqueue", "add", "--delay", "-1"], "delay must be >= 0"),
    (["enqueue", "add", "--delay", "soon"], "'--delay'"),
    (["worker", "tests.apps.basic:worker", "--grace", "inf"], "grace must be a finite"),
    (["worker", "tests.apps.basic:worker", "--grace", "nan"], "grace must be a finite"),
    (["check", "--max-age", "nan"], "max-age must be a finite"),
])
def test_a_duration_that_is_not_finite_is_one_line(args: list[str], says: str) -> None:
    assert_one_line_error([*args, "--redis-url", NOWHERE], says=says)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "says"), [
    (["--arg", DEEP], "--arg '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['... (20000 characters) "
                      "is nested too deeply"),
    (["--kwarg", "x=" + DEEP], "--kwarg x '[[[[["),
    (["--arg", "not json"], "--arg 'not json' is not JSON"),
    (["--kwarg", "novalue"], "--kwarg 'novalue': expected name=JSON"),
])
def test_an_argument_that_cannot_be_read_is_one_line(args: list[str], says: str) -> None:
    line = assert_one_line_error(["enqueue", "add", *args, "--redis-url", NOWHERE], says=says)
    assert len(line) < 300  # a huge argument is not echoed whole


@pytest.mark.slow
def test_an_argument_msgpack_cannot_hold_is_one_line(real: Backend) -> None:
    assert_one_line_error(["enqueue", "add", "--arg", "1" * 30, "--redis-url", real.url or "",
                           "--prefix", real.prefix], says="cannot serialize")


@pytest.mark.slow
@pytest.mark.parametrize(("args", "says"), [
    (["--log-format", "xml"], "'xml' is not one of 'text', 'json'"),
    (["--log-level", "LOUD"], "'LOUD' is not one of"),
    (["--concurrency", "0"], "'--concurrency'"),
])
def test_a_bad_worker_option_is_one_line(args: list[str], says: str) -> None:
    assert_one_line_error(["worker", "tests.apps.basic:worker", *args, "--redis-url", NOWHERE],
                          says=says)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["nope"], ["enqueue"], ["info", "--what"],
                                  ["dlq", "requeue", "x", "--all"]])
def test_usage_mistakes_are_one_line(args: list[str]) -> None:
    assert_one_line_error([*args, "--redis-url", NOWHERE])


@pytest.mark.slow
def test_an_unreachable_redis_stays_exit_1() -> None:
    assert_one_line_error(["info", "--redis-url", NOWHERE], code=1, says="Redis unavailable")


@pytest.mark.slow
def test_good_input_still_passes_the_checks(real: Backend) -> None:
    done = run_cli("enqueue", "add", "--arg", "1", "--kwarg", "b=2", "--delay", "0.5",
                   "-q", "default", "--redis-url", real.url or "", "--prefix", real.prefix)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("scheduled on queue default\n")


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h/0", "unix:///tmp/r.sock",
                                 "redis://:pw@h/3"])
def test_good_urls_are_accepted(url: str) -> None:
    assert _loader.redis_url(url) == url


@pytest.mark.parametrize("url", [*BAD_URLS, "", "localhost:6379",
                                 "redis://h:1/0?socket_timeout=x"])
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        _loader.redis_url(url)


def test_json_values_are_parsed_or_refused() -> None:
    assert _loader.json_value('{"a": [1, "x"]}', "--arg") == {"a": [1, "x"]}
    assert _loader.keyword("user={\"id\": 1}") == ("user", {"id": 1})
    with pytest.raises(ConfigurationError, match="nested too deeply"):
        _loader.json_value(DEEP, "--arg")
    with pytest.raises(ConfigurationError, match="expected name=JSON"):
        _loader.keyword("=1")


def test_log_settings_are_checked_before_anything_changes() -> None:
    assert (check_level("warning"), check_format("JSON")) == ("WARNING", "json")
    with pytest.raises(ConfigurationError, match="unknown log level 'LOUD'"):
        configure("LOUD")
    with pytest.raises(ConfigurationError, match="unknown log format 'xml'"):
        configure("INFO", "xml")
