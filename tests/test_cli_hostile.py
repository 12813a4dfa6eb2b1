"""Job data is written by any producer: the CLI shows it literally, never as rich markup and
never with its control characters (a hostile record cannot crash a command, restyle the
terminal or forge a line). ``--json`` stays the raw data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import asyncjobs
from asyncjobs._cli.render import safe
from asyncjobs._codec import encode_errors, encode_progress, encode_spec
from asyncjobs._model import ErrorInfo, JobSpec, Progress

from .conftest import Backend
from .procs import run_cli

pytestmark = [pytest.mark.slow]

EVIL = "[/] [/bold] [red]x\x1b[31mRED\x1b]0;title\x07\nforged line\r\x9b2J"
SHOWN = r"[/] [/bold] [red]x\x1b[31mRED\x1b]0;title\x07\nforged line\r\x9b2J"
BAD_UTF8 = b"\xff\xfe"
ONE_LINE = EVIL.replace("\n", " ")  # a traceback keeps its line breaks, escapes the rest
WIDE = {"COLUMNS": "400"}  # no folding: each value on one line, to look for it whole


def cli(backend: Backend, *args: str) -> tuple[int, str, str]:
    done = run_cli(*args, "--redis-url", backend.url or "", "--prefix", backend.prefix,
                   env=WIDE)
    return done.returncode, done.stdout, done.stderr


def clean_run(backend: Backend, *args: str) -> str:
    """Run a command; it must succeed, print no control character and no traceback."""
    code, out, err = cli(backend, *args)
    assert code == 0, (out, err)
    for text in (out, err):
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
        assert "\r" not in text and "Traceback (most recent call last)" not in text
    return out + err


async def hostile_job(pool: asyncjobs.Pool) -> str:
    """A dead-lettered job whose every field carries markup, escapes and bad bytes."""
    job = await pool.enqueue("add", 1)
    keys = pool.keys("default")
    spec = encode_spec(JobSpec(task="task" + EVIL, args=[EVIL], kwargs={"k": EVIL}))
    error = ErrorInfo("Type" + EVIL, "message" + EVIL, "Traceback line\n  " + ONE_LINE, 1, 1000)
    letter = await pool.client.xadd(keys.dead, {"i": job.id, "r": ("reason" + EVIL).encode()
                                                + BAD_UTF8, "t": "1000"})
    await pool.client.hset(keys.job(job.id), mapping={
        "s": "failed", "j": spec, "w": b"worker" + BAD_UTF8 + EVIL.encode(),
        "dl": "reason" + EVIL, "h": encode_errors([error]), "de": letter,
        "p": encode_progress(Progress(0.5, "progress" + EVIL, 1)),
    })
    await pool.client.xadd(keys.dead, {"i": "letter" + EVIL, "r": "r" + EVIL, "t": "soon"})
    return job.id


async def hostile_worker(pool: asyncjobs.Pool, queue: str) -> None:
    """A registry entry (live, on the Redis clock) whose names carry markup and escapes."""
    seconds, micros = await pool.client.time()
    name = "worker" + EVIL
    info = {"name": name, "host": "host" + EVIL, "pid": 1, "queues": [queue],
            "concurrency": 1, "running": 0, "started": 0, "beat": 0, "version": EVIL,
            "tasks": [EVIL]}
    await pool.client.set(pool.global_keys.worker(name), json.dumps(info))
    await pool.client.zadd(f"{pool.prefix}:workers", {name: seconds * 1000 + micros // 1000})


@pytest.mark.asyncio
async def test_job_and_dlq_show_print_hostile_fields_literally(real: Backend) -> None:
    async with real.pool() as pool:
        job_id = await hostile_job(pool)
    for command in (["job", job_id], ["dlq", "show", job_id]):
        out = clean_run(real, *command)
        for field in ("task", "reason", "message", "progress", "Type"):
            assert field + SHOWN in out, (field, out)
        assert "worker\ufffd\ufffd" + SHOWN in out  # bad bytes: replacement characters
        assert f"['{SHOWN}']" in out and f"{{'k': '{SHOWN}'}}" in out
        assert "  " + SHOWN.replace(r"\n", " ") in out.splitlines()  # the traceback's line


@pytest.mark.asyncio
async def test_dlq_list_prints_hostile_letters_literally(real: Backend) -> None:
    async with real.pool() as pool:
        job_id = await hostile_job(pool)
    out = clean_run(real, "dlq", "list")
    assert job_id in out and "reason" + SHOWN in out and "letter" + SHOWN in out


@pytest.mark.asyncio
async def test_info_and_check_print_hostile_names_literally(real: Backend) -> None:
    queue = "q\x1b[31m[bold]"
    async with real.pool() as pool:
        await pool.enqueue(asyncjobs.task_ref("add").options(queue=queue), 1)
        await hostile_worker(pool, queue)
    out = clean_run(real, "info")
    assert "worker" + SHOWN in out and "host" + SHOWN in out
    assert out.count(r"q\x1b[31m[bold]") >= 3  # queues, totals, and the worker's queues
    out = clean_run(real, "check", "-q", queue)
    first, *rest = out.strip().splitlines()
    assert first == "healthy"
    # the test server persists nothing, so check adds its persistence warning
    assert len(rest) == 1 and rest[0].startswith("warning: Redis persists nothing")


@pytest.mark.asyncio
@pytest.mark.parametrize("queue", ["[/]", "[red]x", "q\x1b[31m[bold]"])
async def test_jobs_titles_a_hostile_queue_literally(real: Backend, queue: str) -> None:
    """The listing's title names the queue: as text, never rich markup (``[/]`` raised
    MarkupError, with a traceback; ``[red]x`` was titled ``x``)."""
    async with real.pool() as pool:
        await pool.enqueue(asyncjobs.task_ref("add").options(queue=queue), 1)
    out = clean_run(real, "jobs", "-s", "queued", "-q", queue)
    assert f"queued jobs on queue {safe(repr(queue))}" in out


@pytest.mark.asyncio
async def test_check_names_a_hostile_queue_literally(real: Backend) -> None:
    async with real.pool() as pool:
        await hostile_worker(pool, "q\x1b[31m")
    code, out, err = cli(real, "check", "-q", "q\x1b[2J")
    assert code == 1 and "\x1b" not in out + err
    assert r"unhealthy: queue q\x1b[2J: no live worker" in err


@pytest.mark.parametrize("args", [
    ("queue-limit", "\udcff", "5"),  # a command line's bytes that are not UTF-8
    ("queue-limit", "q\udcff"),
    ("info", "-q", "\udcff"),
    ("enqueue", "add", "-q", "\udcff"),
])
def test_a_name_that_is_not_text_is_one_line(real: Backend, args: tuple[str, ...]) -> None:
    """Python decodes such an argument with lone surrogates, which no Redis command can
    carry: refused as the option's bad value, never a traceback."""
    code, out, err = cli(real, *args)
    assert code == 2 and out == "", (out, err)
    assert err.startswith("asyncjobs: error: Invalid value for ") and err.count("\n") == 1
    assert r"invalid queue name '" in err and "not valid text" in err


def test_a_prefix_that_is_not_text_is_one_line(real: Backend) -> None:
    done = run_cli("queue-limit", "q", "--redis-url", real.url or "", "--prefix", "a\udcff")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "invalid prefix 'a\\udcff'" in done.stderr


def test_enqueue_echoes_a_hostile_job_id_literally(real: Backend) -> None:
    out = clean_run(real, "enqueue", "add", "--arg", "1", "--job-id", "id\x1b[31m[/]")
    assert out.strip() == r"id\x1b[31m[/] queued on queue default"


@pytest.mark.asyncio
async def test_json_output_is_the_raw_data(real: Backend) -> None:
    async with real.pool() as pool:
        job_id = await hostile_job(pool)
    record: dict[str, Any] = json.loads(clean_run(real, "job", job_id, "--json"))
    assert record["task"] == "task" + EVIL and record["args"] == [EVIL]
    assert record["errors"][0]["message"] == "message" + EVIL
    letters = json.loads(clean_run(real, "dlq", "list", "--json"))
    assert {d["reason"] for d in letters} == {"r" + EVIL, "reason" + EVIL + "\ufffd\ufffd"}


@pytest.mark.asyncio
async def test_requeue_prints_a_hostile_state_literally(real: Backend) -> None:
    async with real.pool() as pool:
        job = await pool.enqueue("add", 1)
        await pool.client.hset(pool.keys("default").job(job.id), "s", "odd\x1b[31m[/]")
        await pool.client.xadd(pool.keys("default").dead, {"i": job.id, "r": "x"})
    code, out, err = cli(real, "dlq", "requeue", job.id)
    assert (code, out.strip()) == (1, rf"{job.id}: not requeued: odd\x1b[31m[/]"), err
    code, out, err = cli(real, "dlq", "requeue", "--all")
    assert code == 1 and "\x1b" not in out + err
    assert out.splitlines()[1:] == [r"not requeued: 1 (1 job is odd\x1b[31m[/])",
                                    rf"  {job.id}: job is odd\x1b[31m[/]"]


@pytest.mark.parametrize("key", ["stream", "dead", "delayed", "ended"])
@pytest.mark.asyncio
async def test_a_queue_key_of_the_wrong_type_is_one_line(real: Backend, key: str) -> None:
    """A queue key holding a string (written by hand, or another program): every command
    that reads it says so in one line, exit 1, never a traceback."""
    async with real.pool() as pool:
        await pool.enqueue("add", 1)
        await pool.client.delete(getattr(pool.keys("default"), key))
        await pool.client.set(getattr(pool.keys("default"), key), "not asyncjobs'")
    commands = [("info",), ("dlq", "list"), *(("jobs", "-s", s) for s in
                ("queued", "running", "scheduled", "dead", "complete", "failed"))]
    broken = 0
    for command in commands:
        code, out, err = cli(real, *command)
        assert "Traceback" not in out + err, (command, err)
        if code != 0:
            broken += 1
            lines = err.splitlines()
            if command == ("info",):  # it shows what it can read: here no queue at all
                assert code == 1 and len(lines) == 1, (command, code, out, err)
                assert lines[0].startswith("asyncjobs: error: queue default: cannot be read: "
                                           "a key of this queue holds the wrong type")
                continue
            assert code == 1 and out == "", (command, code, out, err)
            assert len(lines) == 1 and "another type of value" in lines[0], (command, err)
    if key == "ended":  # the ended index is best effort: listings show nothing from it
        assert broken == 0
    else:
        assert broken > 0  # the commands that read that key said so


@pytest.mark.parametrize("job_id", ["", "y" * 1025])
def test_a_job_id_out_of_range_is_one_line(real: Backend, job_id: str) -> None:
    code, out, err = cli(real, "enqueue", "add", "--job-id", job_id)
    assert (code, out) == (2, "")
    assert err.startswith("asyncjobs: error: --job-id takes 1 to 1024 characters of text, not ")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("extra", [("outbox-relay", "sqlalchemy", "outbox"),
                                   ("dashboard", "starlette", "dashboard")])
def test_a_command_whose_extra_is_missing_says_so_in_one_line(
        tmp_path: Path, extra: tuple[str, str, str]) -> None:
    """As after the README's set-up, which installs no extra: the module is not there (a
    stand-in that cannot be imported, first on the path)."""
    command, module, name = extra
    (tmp_path / module).mkdir()
    (tmp_path / module / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    done = run_cli(command, "--database-url", "sqlite:///x.db", "--redis-url", "redis://x:1/0",
                   env={"PYTHONPATH": str(tmp_path)}) if command == "outbox-relay" else \
        run_cli(command, "--redis-url", "redis://x:1/0", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f'asyncjobs: error: the {"outbox relay" if name == "outbox" else name}'
                           f' needs the "{name}" extra (pip install -e ".[{name}]"'), line


@pytest.mark.asyncio
async def test_one_damaged_queue_leaves_the_others_shown_by_info_and_check(
        real: Backend) -> None:
    """info and check name the damaged queue (exit 1) and still show every other one: one
    queue's key overwritten by hand hid them all."""
    async with real.pool() as pool:
        await pool.enqueue(asyncjobs.task_ref("add").options(queue="good"), 1)
        await pool.enqueue(asyncjobs.task_ref("add").options(queue="bad"), 1)
        bad = pool.keys("bad").stream
        await pool.client.delete(bad)
        await pool.client.set(bad, "not asyncjobs'")
    code, out, err = cli(real, "info")
    assert code == 1 and "Traceback" not in out + err
    assert "good" in out and "bad" not in out
    [line] = err.splitlines()
    assert line.startswith("asyncjobs: error: queue bad: cannot be read: a key of this queue "
                           "holds the wrong type: ") and "WRONGTYPE" in line
    code, out, err = cli(real, "info", "--json")
    shown = json.loads(out)
    assert code == 1 and [q["queue"] for q in shown["queues"]] == ["good"]
    assert [d["queue"] for d in shown["damaged"]] == ["bad"]
    code, out, err = cli(real, "check", "-q", "good", "-q", "bad")
    assert code == 1 and "Traceback" not in out + err
    assert "unhealthy: queue bad: cannot be read: a key of this queue holds the wrong type" \
        in err
    assert "unhealthy: queue good: no live worker" in err


def test_output_that_cannot_be_written_is_one_line() -> None:
    """stdout on a full device (/dev/full): one line on stderr, exit 1, no traceback."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "asyncjobs", "info", "--help"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "asyncjobs: error: cannot write the output: No space left on device"]
