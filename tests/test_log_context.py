"""Log context: fields from ``Worker(log_context=...)``, middleware and the task itself on
an attempt's start and end lines: escaped to one line in text, fields of their own in JSON
(never replacing asyncjobs' own), and never able to break a job."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._cli.logs import JsonFormatter
from asyncjobs._middleware import Call, Middleware
from asyncjobs._worker.outcomes import JOBS_LOGGER, _context, log_end, log_start

from .conftest import Backend
from .procs import WorkerProcess

HOSTILE = "a\nb\x1b[31mred\r\x07\x9b2J"
ESCAPED = r"a\nb\x1b[31mred\r\x07\x9b2J"
CONTROLS = "\n\r\x1b\x07\x9b"


class RaisingStr:
    """A value whose ``__str__`` raises (its ``repr`` still works)."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        return "<RaisingStr>"


class Unprintable:
    """A value whose ``__str__`` and ``__repr__`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def strict_json(line: str) -> dict[str, Any]:
    """Parse one JSON log line; NaN and Infinity are not JSON."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in {line!r}")

    assert "\n" not in line
    out: dict[str, Any] = json.loads(line, parse_constant=refuse)
    return out


# -- the text form, without a worker --------------------------------------------------------

def test_fields_become_key_value_pairs() -> None:
    assert _context({"tenant": "acme", "n": 3, 5: None, "ok": True}) == (
        " tenant=acme n=3 5=None ok=True")
    assert _context({}) == "" and _context(None) == ""


def test_a_hostile_value_stays_on_one_line_escaped() -> None:
    assert _context({"v": HOSTILE}) == f" v={ESCAPED}"
    assert _context({"k\ney": 1}) == r" k\ney=1"


def test_long_values_and_keys_are_cut() -> None:
    text = _context({"big": "x" * 10_000, "k" * 100: "v"})
    assert not any(c in text for c in CONTROLS)
    assert text == (f" big={'x' * 200}... (9800 more characters)"
                    f" {'k' * 64}... (36 more characters)=v")


def test_values_whose_str_raises_never_raise() -> None:
    text = _context({"a": RaisingStr(), "b": Unprintable(), Unprintable(): 1})
    assert text.startswith(" a=<RaisingStr> b=<unprintable tests.test_log_context.Unprintable>")
    assert text.endswith("=1")


def test_the_lines_end_with_the_context(caplog: pytest.LogCaptureFixture) -> None:
    fields = {"tenant": "ac me", "v": HOSTILE}
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        log_start("j1", "t", "q", 1, fields)
        log_end("complete", "j1", "t", "q", 1, 0.5, fields=fields)
    start, end = (r.getMessage() for r in caplog.records)
    assert start == rf"job started id=j1 task=t queue=q attempt=1 tenant=ac me v={ESCAPED}"
    assert end == ("job complete id=j1 task=t queue=q attempt=1 duration=0.500s"
                   rf" tenant=ac me v={ESCAPED}")


# -- the JSON form, on records the worker's helpers make ------------------------------------

FORGED = {"job_id": "forged", "task": "forged", "queue": "forged", "attempt": 99,
          "duration_s": -1, "outcome": "complete", "time": "forged", "level": "forged",
          "logger": "forged", "message": "forged", "exception": "forged"}


def json_lines(caplog: pytest.LogCaptureFixture, fields: Mapping[str, object]
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The start and end lines for ``fields``, as ``--log-format json`` writes them."""
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        log_start("j1", "t", "q", 2, fields)
        log_end("retry", "j1", "t", "q", 2, 0.25, fields=fields, level=logging.WARNING)
    start, end = (strict_json(JsonFormatter().format(r)) for r in caplog.records[-2:])
    return start, end


def test_json_has_the_fields_of_their_own(caplog: pytest.LogCaptureFixture) -> None:
    start, end = json_lines(caplog, {"tenant": "acme", "n": 3, "ratio": 0.5, "ok": False,
                                     "none": None, 7: "int key"})
    for line in (start, end):
        assert (line["tenant"], line["n"], line["ratio"], line["ok"], line["none"]) == (
            "acme", 3, 0.5, False, None)
        assert line["7"] == "int key" and line["job_id"] == "j1"
    assert end["outcome"] == "retry" and end["level"] == "warning"


def test_json_context_never_replaces_asyncjobs_fields(caplog: pytest.LogCaptureFixture) -> None:
    start, end = json_lines(caplog, {**FORGED, "tenant": "acme"})
    assert "outcome" not in start and "duration_s" not in start  # not forged either
    for line in (start, end):
        assert "forged" not in line.values() and "exception" not in line
        assert (line["job_id"], line["task"], line["queue"], line["attempt"]) == (
            "j1", "t", "q", 2)
        assert line["logger"].startswith(JOBS_LOGGER) and line["tenant"] == "acme"
        assert line["message"].startswith("job ")
    assert (end["outcome"], end["duration_s"]) == ("retry", 0.25)


def test_json_survives_any_value(caplog: pytest.LogCaptureFixture) -> None:
    start, end = json_lines(caplog, {
        "nan": float("nan"), "inf": float("-inf"), "huge": 10**30, "giant": 10**5000,
        "raising": RaisingStr(), "unprintable": Unprintable(), "nested": {"a": [1, 2]},
        "long": "x" * 10_000, "hostile": HOSTILE, RaisingStr(): "raising key",
    })
    for line in (start, end):
        assert line["nan"] == "nan" and line["inf"] == "-inf"
        assert line["huge"] == str(10**30) and isinstance(line["giant"], str)
        assert line["raising"] == "<RaisingStr>" and "Unprintable" in line["unprintable"]
        assert line["nested"] == "{'a': [1, 2]}"  # text: one value, never a forged object
        assert line["long"] == "x" * 200 + "... (9800 more characters)"
        assert line["hostile"] == HOSTILE and line["<RaisingStr>"] == "raising key"


def test_json_of_a_line_about_an_exception_keeps_it(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("asyncjobs.worker", logging.ERROR, __file__, 1, "boom", (),
                               None)
    try:
        raise KeyError("real")
    except KeyError:
        import sys
        record.exc_info = sys.exc_info()
    record.context = {"exception": "forged", "tenant": "acme"}
    line = strict_json(JsonFormatter().format(record))
    assert "KeyError: 'real'" in line["exception"] and line["tenant"] == "acme"


# -- through a worker, on both backends -----------------------------------------------------

@asyncjobs.task(name="lc_work", max_tries=1)
async def work(ctx: Context, note: str) -> str:
    ctx.log_context["order"] = note
    return "done"


@asyncjobs.task(name="lc_work_sync", max_tries=1)
def work_sync(ctx: Context, note: str) -> str:
    ctx.log_context["order"] = note
    return "done"


@asyncjobs.task(name="lc_replace", max_tries=1)
async def replaces(ctx: Context) -> str:
    ctx.log_context = {"only": "this"}  # a new mapping replaces the fields
    return "done"


@asyncjobs.task(name="lc_hostile", max_tries=1)
async def hostile(ctx: Context) -> str:
    ctx.log_context.update({1: 2, "raising": RaisingStr(), "unprintable": Unprintable(),
                            Unprintable(): "key", "long": "y" * 10_000, "v": HOSTILE,
                            "nan": float("nan"), "job_id": "forged"})
    return "done"


class SetsFields(Middleware):
    async def before(self, ctx: Context) -> None:
        ctx.log_context["mw_before"] = "b"

    async def around(self, ctx: Context, call_next: Call) -> Any:
        ctx.log_context["payment"] = ctx.args[0]
        return await call_next()


def tenant(ctx: Context) -> Mapping[str, object]:
    return {"tenant": ctx.headers.get("tenant", "-")}


def job_lines(caplog: pytest.LogCaptureFixture, job_id: str) -> tuple[str, str]:
    """The start and end lines logged about ``job_id``."""
    lines = [r.getMessage() for r in caplog.records
             if r.name.startswith(JOBS_LOGGER) and f" id={job_id} " in r.getMessage()]
    [start] = [line for line in lines if line.startswith("job started ")]
    [end] = [line for line in lines if not line.startswith("job started ")]
    return start, end


async def run_logged(backend: Backend, caplog: pytest.LogCaptureFixture,
                     tasks: list[Any], **options: Any) -> None:
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        await backend.run(backend.worker(tasks, burst=True, concurrency=1, **options))


@pytest.mark.asyncio
async def test_hook_fields_are_on_both_lines_task_fields_on_the_end(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    job = await pool.enqueue(work.options(headers={"tenant": "acme"}), "o-1")
    sync = await pool.enqueue(work_sync, "o\n2")
    await run_logged(backend, caplog, [work, work_sync], log_context=tenant)
    assert await job.result(timeout=5) == await sync.result(timeout=5) == "done"
    start, end = job_lines(caplog, job.id)
    assert start.endswith(" attempt=1 tenant=acme")
    assert end.startswith("job complete ") and end.endswith(" tenant=acme order=o-1")
    start, end = job_lines(caplog, sync.id)
    assert start.endswith(" tenant=-") and end.endswith(r" tenant=- order=o\n2")


@pytest.mark.asyncio
async def test_assigning_a_new_mapping_replaces_the_fields(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    job = await pool.enqueue(replaces.options(headers={"tenant": "acme"}))
    await run_logged(backend, caplog, [replaces], log_context=tenant)
    assert await job.result(timeout=5) == "done"
    start, end = job_lines(caplog, job.id)
    assert start.endswith(" tenant=acme")
    assert end.endswith(" attempt=1 duration=" + end.split(" duration=")[1].split(" ")[0]
                        + " only=this")


@pytest.mark.asyncio
async def test_middleware_fields_are_on_both_lines(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    job = await pool.enqueue(work, "o-3")
    await run_logged(backend, caplog, [work], middleware=[SetsFields()])
    assert await job.result(timeout=5) == "done"
    start, end = job_lines(caplog, job.id)
    assert start.endswith(" attempt=1 mw_before=b payment=o-3"), start
    assert end.endswith(" mw_before=b payment=o-3 order=o-3"), end


class Gate(Middleware):
    """Stops every attempt before the task: by raising in ``before``, or by answering in
    ``around`` without calling the task."""

    def __init__(self, raises: bool) -> None:
        self.raises = raises

    async def before(self, ctx: Context) -> None:
        ctx.log_context["gate"] = "closed"
        if self.raises:
            raise PermissionError("gate closed")

    async def around(self, ctx: Context, call_next: Call) -> Any:
        return "answered by the gate"


@pytest.mark.asyncio
@pytest.mark.parametrize(("raises", "outcome"), [(True, "failed"), (False, "complete")])
async def test_an_attempt_middleware_stops_has_only_its_end_line(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture,
        raises: bool, outcome: str) -> None:
    job = await pool.enqueue(work, "o-5")
    await run_logged(backend, caplog, [work], middleware=[Gate(raises)], log_context=tenant)
    lines = [r.getMessage() for r in caplog.records
             if r.name.startswith(JOBS_LOGGER) and f" id={job.id} " in r.getMessage()]
    [end] = lines
    assert end.startswith(f"job {outcome} ") and " attempt=1 " in end
    assert " tenant=- gate=closed" in end and "order=" not in end
    if not raises:
        assert await job.result(timeout=5) == "answered by the gate"


def broken_hook(ctx: Context) -> Mapping[str, object]:
    raise RuntimeError("hook broke")


@pytest.mark.asyncio
@pytest.mark.parametrize("hook", [broken_hook, lambda ctx: None, lambda ctx: 42,
                                  lambda ctx: "text"])
async def test_a_failing_hook_is_logged_with_the_job_id_and_the_job_runs(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture,
        hook: Any) -> None:
    job = await pool.enqueue(work, "o-4")
    await run_logged(backend, caplog, [work], log_context=hook)
    assert await job.result(timeout=5) == "done"
    [failed] = [r for r in caplog.records if "log_context hook failed" in r.getMessage()]
    assert job.id in failed.getMessage() and failed.exc_info is not None
    assert failed.levelno == logging.ERROR
    start, end = job_lines(caplog, job.id)
    assert start.endswith(" attempt=1") and end.endswith(" order=o-4")


@pytest.mark.asyncio
async def test_hostile_fields_never_break_a_job_or_a_line(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    job = await pool.enqueue(hostile)
    await run_logged(backend, caplog, [hostile],
                     log_context=lambda ctx: {7: RaisingStr(), "w": Unprintable()})
    assert await job.result(timeout=5) == "done"
    start, end = job_lines(caplog, job.id)
    for line in (start, end):
        assert not any(c in line for c in CONTROLS)
    assert start.endswith(" 7=<RaisingStr> w=<unprintable tests.test_log_context.Unprintable>")
    assert f" v={ESCAPED} " in end and " long=" + "y" * 200 + "... (9800 more" in end
    records = [r for r in caplog.records if r.name.startswith(JOBS_LOGGER)]
    both = [strict_json(JsonFormatter().format(r)) for r in records
            if getattr(r, "job_id", None) == job.id]
    assert len(both) == 2 and all(line["job_id"] == job.id for line in both)
    assert both[1]["v"] == HOSTILE and both[1]["1"] == 2 and both[1]["nan"] == "nan"


# -- a worker process: --log-format text and json -------------------------------------------

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")
process_worker = asyncjobs.Worker([work], prefix=PREFIX, middleware=[SetsFields()],
                                  log_context=tenant)


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_worker_process_logs_the_context(real: Backend, fmt: str) -> None:
    async with real.pool() as pool:
        job = await pool.enqueue(work.options(headers={"tenant": "acme"}), "o\x1b5")
        proc = WorkerProcess("tests.test_log_context:process_worker", real.url or "",
                             real.prefix, "--burst", "--log-format", fmt)
        try:
            assert proc.wait(60) == 0, proc.output
        finally:
            proc.close()
        assert await job.result(timeout=5) == "done"
    lines = [line for line in proc.output.splitlines() if job.id in line]
    assert len(lines) == 2 and "\x1b" not in proc.output, proc.output
    if fmt == "text":
        assert lines[0].endswith(r" attempt=1 tenant=acme mw_before=b payment=o\x1b5")
        assert lines[1].endswith(r" tenant=acme mw_before=b payment=o\x1b5 order=o\x1b5")
        return
    start, end = (strict_json(line) for line in lines)
    for line in (start, end):
        assert (line["tenant"], line["mw_before"], line["payment"]) == ("acme", "b", "o\x1b5")
        assert (line["job_id"], line["task"], line["queue"]) == (job.id, "lc_work", "default")
    assert "order" not in start and end["order"] == "o\x1b5" and end["outcome"] == "complete"
