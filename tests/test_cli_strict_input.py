"""Bad input at the command line is one line (``asyncjobs: error: ...``), never a traceback,
never silently something else than asked; what it shows of the user's text is literal:

1. ``--processes``: ASCII digits (1 to 1024) or ``auto`` in any case; `` 2``, ``+2``,
   ``1_0`` or other scripts' digits are refused, as `` auto`` was;
2. every choice option (``--log-format``, ``--job-logs``, ``--log-level``, ``--state``...)
   takes its choices in any case;
3. ``--arg`` / ``--kwarg``: ``NaN`` and ``Infinity`` reach the task exactly (msgpack carries
   them); a number beyond a float's range (``1e999``), which Python reads as infinity, is
   refused;
4. ``--kwarg``: a name that is not a Python identifier (``1x``), or one given twice, is
   refused;
5. the worker's banner (text logs) shows the prefix and queue names literally: a control
   character is escaped; ``asyncjobs demo`` shows its Redis URL literally (no markup);
6. ``asyncjobs dashboard``: ``--refresh`` errors name ``--refresh``; an address it cannot
   listen on is one line, exit 1; ``--port 0`` shows the port it got;
7. a dashboard action given an id twice counts it once;
8. a one-shot command that fails shows its error line only, not ``create_pool``'s warning
   that Redis hides its settings (shown when the command succeeds; the worker logs it).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import typer.main

import asyncjobs
from asyncjobs import Context
from asyncjobs._cli import supervisor
from asyncjobs._cli.loader import json_value, keywords
from asyncjobs._cli.logs import BANNER_LOGGER, TextFormatter
from asyncjobs._redis.embedded import RedisServer, free_port
from asyncjobs.cli import app
from asyncjobs.dashboard import create_app
from asyncjobs.exceptions import ConfigurationError

from .conftest import Backend, running
from .procs import ROOT, first_line, run_cli, stop
from .test_dashboard import client, post, token_of

NOWHERE = f"redis://127.0.0.1:{free_port()}/0"  # never reached: the input is refused first
MISSING = "ajt_no_such_module_x:worker"  # a target whose import fails: exit 2, "cannot import"


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The only line of a refused command (exit 2, nothing on stdout, no traceback)."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncjobs: error: "), done.stderr
    return lines[0]


# -- 1. --processes -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [" 2", "2 ", "+2", "1_0", "\uff12", "\u0662", "2\n"])
def test_processes_takes_ascii_digits_only(value: str) -> None:
    """int() takes all of these (2, 10, ...): they were taken, while ' auto' was refused."""
    with pytest.raises(ValueError):
        supervisor.processes(value)
    line = one_error_line(run_cli("worker", MISSING, "--processes", value,
                                  "--redis-url", NOWHERE))
    assert "Invalid value for '--processes'" in line and "or auto" in line


@pytest.mark.parametrize("value", ["AUTO", "Auto"])
def test_processes_takes_auto_in_any_case(value: str) -> None:
    assert supervisor.processes(value) == supervisor.processes("auto")
    line = one_error_line(run_cli("worker", MISSING, "--processes", value,
                                  "--redis-url", NOWHERE))
    assert "cannot import" in line and "--processes" not in line  # taken: the import fails


def test_processes_still_takes_a_plain_number() -> None:
    assert [supervisor.processes(v) for v in ("1", "02", "1024")] == [1, 2, 1024]


# -- 2. choice options ----------------------------------------------------------------------


def _case_sensitive(param: Any) -> bool | None:
    """Whether a choice option's choices are case-sensitive; None for other options (typer
    0.29 describes its parameters itself; click's ``Choice`` before it)."""
    described = getattr(param, "type_descriptor", None)
    if described is not None:
        kind = described.annotation
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return bool(described.parameter_info.case_sensitive)
        return None
    kind = getattr(param, "type", None)
    return bool(kind.case_sensitive) if hasattr(kind, "choices") else None


def _choice_options() -> dict[str, bool]:
    found: dict[str, bool] = {}

    def walk(command: Any, path: str) -> None:
        for param in command.params:
            sensitive = _case_sensitive(param)
            if sensitive is not None:
                found[f"{path} {param.name}"] = sensitive
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "asyncjobs")
    return found


def test_every_choice_option_takes_its_choices_in_any_case() -> None:
    found = _choice_options()
    assert {"asyncjobs worker log_format", "asyncjobs worker job_logs",
            "asyncjobs outbox-relay log_format", "asyncjobs jobs state"} <= set(found)
    assert [where for where, sensitive in found.items() if sensitive] == []


def test_log_format_and_job_logs_in_capitals_are_taken() -> None:
    line = one_error_line(run_cli("worker", MISSING, "--log-format", "JSON", "--job-logs",
                                  "END", "--redis-url", NOWHERE))
    assert "cannot import" in line  # the options were taken


def test_an_unknown_log_format_lists_the_choices_on_one_line() -> None:
    line = one_error_line(run_cli("worker", MISSING, "--log-format", "yaml",
                                  "--redis-url", NOWHERE))
    assert "'--log-format'" in line and "'text'" in line and "'json'" in line


# -- 3. non-finite numbers in --arg / --kwarg ----------------------------------------------

got: list[tuple[Any, ...]] = []


@asyncjobs.task(name="strict_input_record")
async def record(ctx: Context, *args: Any, **kwargs: Any) -> None:
    got.append((*args, kwargs))


@pytest.mark.asyncio
async def test_nan_and_infinity_reach_the_task_exactly(real: Backend) -> None:
    """Python's JSON reads them, and msgpack (the job's encoding) carries float64 NaN and
    infinities as they are, so they are taken: the task gets exactly these floats."""
    got.clear()
    done = await asyncio.to_thread(
        run_cli, "enqueue", "strict_input_record", "--arg", "NaN", "--arg", "Infinity",
        "--arg", "-Infinity", "--kwarg", "x=[NaN]", "--json",
        "--redis-url", real.url or "", "--prefix", real.prefix)
    assert done.returncode == 0, done.stderr
    job_id = re.search(r'"job_id": "([^"]+)"', done.stdout)
    assert job_id is not None, done.stdout
    async with real.pool() as pool, running(real, real.worker([record])):
        await pool.job(job_id[1]).result(timeout=20)
    [(nan, inf, minus_inf, kwargs)] = got
    assert math.isnan(nan) and inf == math.inf and minus_inf == -math.inf
    assert list(kwargs) == ["x"] and math.isnan(kwargs["x"][0])


@pytest.mark.parametrize("text", ["1" * 5000, f"[1, -{'2' * 4400}]"])
def test_an_integer_of_too_many_digits_is_one_line(text: str) -> None:
    """Python refuses to read an integer of over 4,300 digits (a ``ValueError``, which was
    a traceback)."""
    with pytest.raises(ConfigurationError, match="more than Python reads as a number"):
        json_value(text, "--arg")
    assert json_value("1" * 4300, "--arg") == int("1" * 4300)
    line = one_error_line(run_cli("enqueue", "t", "--arg", text, "--redis-url", NOWHERE))
    assert line.startswith("asyncjobs: error: --arg ") and "pass it as a string" in line


@pytest.mark.parametrize("text", ["1e999", "[1, -1e400]", '{"a": 2e308}'])
def test_a_number_beyond_a_float_is_refused(text: str) -> None:
    """Python reads 1e999 as infinity: not what was written."""
    with pytest.raises(ConfigurationError, match="beyond a float's range"):
        json_value(text, "--arg")
    line = one_error_line(run_cli("enqueue", "t", "--arg", text, "--redis-url", NOWHERE))
    assert line.startswith("asyncjobs: error: --arg ") and "beyond a float's range" in line
    line = one_error_line(run_cli("enqueue", "t", "--kwarg", f"x={text}",
                                  "--redis-url", NOWHERE))
    assert line.startswith("asyncjobs: error: --kwarg x ") and "beyond a float's range" in line


def test_large_finite_numbers_are_still_taken() -> None:
    assert json_value("1.7e308", "--arg") == 1.7e308
    assert json_value("-1e-400", "--arg") == 0.0  # (rounded to zero, as any float is)


# -- 4. --kwarg names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["1x", "x ", " x", "a-b", "a.b", "x\u00a0"])
def test_a_kwarg_name_that_is_no_identifier_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a Python identifier"):
        keywords([f"{name}=1"])
    line = one_error_line(run_cli("enqueue", "t", "--kwarg", f"{name}=1",
                                  "--redis-url", NOWHERE))
    assert "is not a Python identifier" in line and repr(name) in line


def test_a_kwarg_given_twice_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="--kwarg a is given twice"):
        keywords(["a=1", "b=2", "a=3"])
    line = one_error_line(run_cli("enqueue", "t", "--kwarg", "a=1", "--kwarg", "a=2",
                                  "--redis-url", NOWHERE))
    assert line == "asyncjobs: error: --kwarg a is given twice"


def test_identifiers_are_taken() -> None:
    assert keywords(["a=1", "_b=[2]", "caf\u00e9=null"]) == {"a": 1, "_b": [2],
                                                               "caf\u00e9": None}


# -- 5. literal text in the worker's banner and the demo's ------------------------------------


def test_the_text_formatter_escapes_control_characters_of_banner_lines() -> None:
    formatter = TextFormatter()

    def line(name: str, message: str) -> str:
        return formatter.format(logging.LogRecord(name, logging.INFO, __file__, 1,
                                                  "prefix %s", (message,), None))

    assert line(BANNER_LOGGER, "a\x1b[31mb\\c").endswith("prefix a\\x1b[31mb\\\\c")
    assert line(BANNER_LOGGER, "[bold]x\\y").endswith("prefix [bold]x\\y")  # printable
    assert line("app.logger", "a\x1b[31mb").endswith("prefix a\x1b[31mb")  # not ours
    # every asyncjobs line: the worker's "ready: queues=..." names the queues too
    assert line("asyncjobs.worker", "q\x1b[2J").endswith("prefix q\\x1b[2J")
    assert line("asyncjobs", "q\n2").endswith("prefix q\\n2")
    assert line("asyncjobsx", "q\n2").endswith("prefix q\n2")  # another package's


def test_the_worker_banner_shows_the_prefix_and_queues_literally(
        redis_server: RedisServer) -> None:
    token = secrets.token_hex(3)
    prefix, queue = f"[bold]p{token}\x1b[31m", f"q{token}\x1b[2J\x07"
    done = run_cli("worker", "tests.apps.basic:worker", "--burst", "--redis-url",
                   redis_server.url, "--prefix", prefix, "-q", queue)
    assert done.returncode == 0, done.stderr
    banner = [line for line in done.stderr.splitlines() if BANNER_LOGGER in line]
    assert banner and not any("\x1b" in line or "\x07" in line for line in banner), banner
    assert any(line.endswith(f"prefix [bold]p{token}\\x1b[31m") for line in banner), banner
    assert any(f"queues  q{token}\\x1b[2J\\x07: " in line for line in banner), banner


def test_the_demo_shows_its_redis_url_literally(redis_server: RedisServer) -> None:
    """A URL's text was read as rich markup: '[/bold]' raised MarkupError (a traceback)."""
    url = f"{redis_server.url}?client_name=[/bold]x"
    done = run_cli("demo", "--redis-url", url, timeout_s=120)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"Using Redis at {url}" in done.stdout, done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-3000:]


# -- 6. asyncjobs dashboard -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["0.01", "0", "4000"])
def test_dashboard_refresh_errors_name_the_option(value: str) -> None:
    line = one_error_line(run_cli("dashboard", "--refresh", value, "--redis-url", NOWHERE))
    assert "refresh_s" not in line
    assert line.startswith("asyncjobs: error: Invalid value for '--refresh': refresh must "
                           "be between 0.2 and 3600 seconds")


def dashboard_failure(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("dashboard", "--redis-url", NOWHERE, "--read-only", *args)


def test_dashboard_on_a_port_in_use_is_one_line_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = dashboard_failure("--port", str(port))
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"asyncjobs: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_dashboard_on_an_address_not_of_this_machine_is_one_line_exit_1() -> None:
    done = dashboard_failure("--host", "192.0.2.1", "--port", "8080")  # TEST-NET-1
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "asyncjobs: error: cannot listen on 192.0.2.1:8080: Cannot assign requested address"]


def test_dashboard_on_a_host_that_does_not_resolve_is_one_line_exit_1() -> None:
    done = dashboard_failure("--host", "no-such-host.invalid")
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("asyncjobs: error: cannot listen on no-such-host.invalid:8080: ")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_dashboard_on_port_0_shows_the_port_it_got(redis_server: RedisServer,
                                                   host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "dashboard", "--redis-url", redis_server.url,
         "--host", host, "--port", "0", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = first_line(proc, 60)
        assert line is not None, "no banner"
        shown = re.match(rb"asyncjobs dashboard on http://(\[::1\]|127\.0\.0\.1):(\d+)/ ",
                         line)
        assert shown is not None, line
        port = int(shown[2])
        assert port != 0
        answer = httpx.get(f"http://{shown[1].decode()}:{port}/", timeout=20)
        assert answer.status_code == 200
    finally:
        stop(proc)
        assert proc.stdout is not None
        proc.stdout.close()


# -- 7. an id given twice to a dashboard action ----------------------------------------------


@pytest.mark.asyncio
async def test_a_dashboard_action_counts_an_id_given_twice_once(real: Backend) -> None:
    async with real.pool() as pool:
        queued = await pool.enqueue(record.options(queue="default"))
        later = await pool.enqueue(record.options(queue="default", delay=3600))
        async with client(create_app(pool)) as http:
            token = await token_of(http)
            abort = await post(http, "abort", token, queue="default",
                               ids=[queued.id, queued.id])
            due = await post(http, "retry-now", token, queue="default",
                             ids=[later.id, later.id])
    assert abort.json()["message"] == "aborted 1 job(s); 0 had already ended; 0 not found"
    assert due.json()["message"] == "1 job(s) due now; 0 were not scheduled"


# -- 8. create_pool's warning before a refusal ---------------------------------------------------

HIDDEN = "cannot check Redis's configuration"


@pytest_asyncio.fixture
async def acl_urls(fresh_redis: RedisServer) -> AsyncIterator[tuple[str, str]]:
    """Two users of a Redis of this test's own: ``ro`` may read and connect only; ``hides``
    may run everything but ``INFO`` and ``CONFIG``."""
    admin = aioredis.Redis.from_url(fresh_redis.url)
    try:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "ro", "on", ">pw", "~*", "+@read", "+@connection")
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "hides", "on", ">pw", "~*", "&*", "+@all", "-info", "-config")
    finally:
        await admin.aclose()
    yield (fresh_redis.url.replace("redis://", "redis://ro:pw@"),
           fresh_redis.url.replace("redis://", "redis://hides:pw@"))


@pytest.mark.asyncio
async def test_a_refused_enqueue_is_its_error_line_only(acl_urls: tuple[str, str]) -> None:
    read_only, _ = acl_urls
    done = await asyncio.to_thread(run_cli, "enqueue", "t", "--redis-url", read_only,
                                   timeout_s=30)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("asyncjobs: error: Redis user 'ro' may not run "), line


@pytest.mark.asyncio
async def test_a_successful_enqueue_still_shows_the_warning(acl_urls: tuple[str, str]) -> None:
    _, hides = acl_urls
    done = await asyncio.to_thread(run_cli, "enqueue", "t", "--redis-url", hides,
                                   "--prefix", f"t{secrets.token_hex(3)}", timeout_s=30)
    assert done.returncode == 0, done.stderr
    assert " queued on queue default" in done.stdout
    assert [line for line in done.stderr.splitlines() if HIDDEN in line] == [
        "create_pool: cannot check Redis's configuration (INFO, CONFIG GET not allowed): "
        "eviction policy and persistence unknown"]


@pytest.mark.asyncio
async def test_the_worker_still_logs_the_warning(acl_urls: tuple[str, str]) -> None:
    _, hides = acl_urls
    done = await asyncio.to_thread(run_cli, "worker", "tests.apps.basic:worker", "--burst",
                                   "--redis-url", hides, "--prefix",
                                   f"t{secrets.token_hex(3)}", timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert HIDDEN in done.stderr
