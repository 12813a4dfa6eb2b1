"""Structured progress: ``ctx.progress(value, detail)`` with a message or data, read back
through ``job.progress()``, ``job.info()``, ``asyncjobs job ID`` and its size, number and
encoding limits (nothing is recorded when a report is refused)."""

from __future__ import annotations

import io
import json
import math
import struct
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

import asyncjobs
from asyncjobs import Context, JobState, SerializationError
from asyncjobs._cli.render import jobs_table, print_job
from asyncjobs._codec import MAX_PROGRESS, decode_progress, progress_report
from asyncjobs._model import JobInfo, Progress
from asyncjobs._producer.listing import JobRow

from .conftest import Backend
from .procs import run_cli

pytestmark = pytest.mark.on_cluster

DATA = {"step": "resize", "done": [1, 2, 3], "meta": {"ok": True, "n": None, "ratio": 0.25}}
HOSTILE = "a\nb\x1b[31mred\x1b]0;title\x07\r\x9b2J[bold]x[/]"


# -- the codec, without Redis ---------------------------------------------------------------

@pytest.mark.parametrize("detail", [
    DATA, [1, "two", [3.5, None]], {"deep": [[{"x": [1]}]]}, 7, 2.5, True, [], {},
])
def test_data_round_trips(detail: object) -> None:
    report = decode_progress(progress_report(0.4, detail, 1234))
    assert report == Progress(0.4, "", 1234, detail)


def test_text_is_the_message_cut_at_500_characters() -> None:
    assert decode_progress(progress_report(3, "halfway", 1)) == Progress(3.0, "halfway", 1)
    report = decode_progress(progress_report(0.5, "y" * 9000, 1))
    assert report is not None and report.message == "y" * 500 and report.data is None
    assert decode_progress(progress_report(0.5, "", 1)) == Progress(0.5, "", 1, None)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", None, "half",
                                   10**400])
def test_a_value_that_is_not_a_finite_number_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="finite number"):
        progress_report(value, "x", 1)


@pytest.mark.parametrize(("detail", "names"), [
    (object(), "object"),
    ({"nested": [1, object()]}, "object"),
    ({"big": 2**64}, "int"),
    (lambda: None, "function"),
])
def test_data_msgspec_cannot_encode_is_a_serialization_error(detail: object,
                                                             names: str) -> None:
    with pytest.raises(SerializationError, match=names):
        progress_report(0.5, detail, 1)


def test_data_nested_too_deep_is_a_serialization_error() -> None:
    deep: list[Any] = []
    for _ in range(150):
        deep = [deep]
    with pytest.raises(SerializationError, match="nested"):
        progress_report(0.5, deep, 1)


def test_msgspec_turns_sets_and_tuples_into_lists_and_keeps_non_text_keys() -> None:
    """What "anything msgspec encodes" means for data that is not JSON-shaped."""
    report = decode_progress(progress_report(0.5, {"s": {3}, "t": (1, 2), 7: "int key",
                                                   (1, 2): "tuple key"}, 1))
    assert report is not None
    assert report.data == {"s": [3], "t": [1, 2], 7: "int key", (1, 2): "tuple key"}


def test_the_size_bound_is_exact() -> None:
    overhead = len(progress_report(0.5, {"pad": ""}, 1))
    at_limit = {"pad": "x" * (MAX_PROGRESS - overhead - 2)}  # str header grows 1 -> 3 bytes
    assert len(progress_report(0.5, at_limit, 1)) == MAX_PROGRESS
    over = {"pad": "x" * (MAX_PROGRESS - overhead - 1)}
    with pytest.raises(ValueError, match=f"at most {MAX_PROGRESS}"):
        progress_report(0.5, over, 1)


# -- property: exact round trips under the bound, ValueError over it ------------------------

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats() | st.text(max_size=40))
json_like = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=6),
    max_leaves=40,
)
PROPS = settings(deadline=None, derandomize=True, database=None, max_examples=300)
HEADROOM = 32  # at most what a report adds to its data: array, float64, "", int64


def same(a: object, b: object) -> bool:
    """Equal with the same types all the way down (1 is not 1.0 nor True; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)  # type: ignore[arg-type]
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@PROPS
@given(data=json_like.filter(lambda d: not isinstance(d, str)),  # text is the message
       value=st.floats(allow_nan=False, allow_infinity=False), at_ms=st.integers(0, 2**63 - 1))
def test_json_like_data_under_the_bound_round_trips_exactly(data: object, value: float,
                                                            at_ms: int) -> None:
    if len(msgspec.msgpack.encode(data)) > MAX_PROGRESS - HEADROOM:
        return
    report = decode_progress(progress_report(value, data, at_ms))
    assert report is not None and same(report.data, data)
    assert same(report.value, value) and report.at_ms == at_ms and report.message == ""


@PROPS
@given(data=json_like, pad=st.integers(MAX_PROGRESS, 3 * MAX_PROGRESS),
       text=st.characters())
def test_data_over_the_bound_is_a_value_error(data: object, pad: int, text: str) -> None:
    padded = {"data": data, "pad": text * pad}
    assert len(msgspec.msgpack.encode(padded)) > MAX_PROGRESS
    with pytest.raises(ValueError, match=f"at most {MAX_PROGRESS}"):
        progress_report(0.5, padded, 1)


@PROPS
@given(text=st.text(max_size=2000))
def test_any_text_is_a_message_kept_to_500_characters(text: str) -> None:
    report = decode_progress(progress_report(0.5, text, 1))
    assert report is not None and report.message == text[:500] and report.data is None


# -- through a worker, on both backends -----------------------------------------------------

@asyncjobs.task(name="pd_report", max_tries=1)
async def report(ctx: Context, value: float, detail: Any) -> None:
    await ctx.progress(value, detail)


@asyncjobs.task(name="pd_report_sync", max_tries=1)
def report_sync(ctx: Context, detail: dict[str, Any]) -> str:
    ctx.progress(0.5, detail)  # a plain def task: no await
    try:
        ctx.progress(0.9, {"blob": "z" * MAX_PROGRESS})
    except ValueError:
        return "refused"
    return "recorded"


REFUSED: dict[str, tuple[float, object]] = {
    "too big": (0.9, {"blob": "z" * MAX_PROGRESS}),
    "many keys": (0.9, {f"k{i}": i for i in range(2000)}),
    "object": (0.9, object()),
    "set of objects": (0.9, {"s": [object()]}),
    "nan": (math.nan, "x"),
    "inf": (math.inf, {"ok": 1}),
}


@asyncjobs.task(name="pd_refused", max_tries=1)
async def refused(ctx: Context, case: str) -> str:
    await ctx.progress(0.25, {"before": True})
    value, detail = REFUSED[case]
    try:
        await ctx.progress(value, detail)
    except (ValueError, SerializationError) as exc:
        return type(exc).__name__
    return "recorded"



async def run(backend: Backend, *tasks: Any) -> None:
    await backend.run(backend.worker(list(tasks), burst=True, concurrency=1))


@pytest.mark.asyncio
@pytest.mark.parametrize("detail", [DATA, [1, [2, {"three": 3}]], {"note": HOSTILE}])
async def test_data_reaches_every_reader(backend: Backend, pool: asyncjobs.Pool,
                                         detail: Any) -> None:
    job = await pool.enqueue(report, 0.5, detail)
    await run(backend, report)
    await job.result(timeout=5)
    seen = await job.progress()
    assert seen is not None and (seen.value, seen.message, seen.data) == (0.5, "", detail)
    info = await job.info()
    assert info.progress == seen and seen.at_ms > 0


@pytest.mark.asyncio
async def test_a_message_is_still_a_message(backend: Backend, pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(report, 2, "2 of 4 files")
    await run(backend, report)
    await job.result(timeout=5)
    seen = await job.progress()
    assert seen is not None and (seen.value, seen.message, seen.data) == (2.0, "2 of 4 files",
                                                                          None)


@pytest.mark.asyncio
async def test_a_plain_def_task_reports_data_and_can_catch_a_refusal(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(report_sync, DATA)
    await run(backend, report_sync)
    assert await job.result(timeout=5) == "refused"
    seen = await job.progress()
    assert seen is not None and (seen.value, seen.data) == (0.5, DATA)


@pytest.mark.asyncio
@pytest.mark.parametrize(("case", "error"), [
    ("too big", "ValueError"), ("many keys", "ValueError"), ("object", "SerializationError"),
    ("set of objects", "SerializationError"), ("nan", "ValueError"), ("inf", "ValueError"),
])
async def test_a_refused_report_raises_in_the_task_and_records_nothing(
        backend: Backend, pool: asyncjobs.Pool, case: str, error: str) -> None:
    job = await pool.enqueue(refused, case)
    await run(backend, refused)
    assert await job.result(timeout=5) == error
    seen = await job.progress()
    assert seen is not None and (seen.value, seen.message, seen.data) == (0.25, "",
                                                                          {"before": True})
    assert (await job.info()).progress == seen


# -- the CLI's single-job view --------------------------------------------------------------

def shown(progress: Progress) -> str:
    """``print_job``'s output for a running job's record carrying ``progress``."""
    now = datetime.now(UTC)
    info = JobInfo(id="j1", queue="default", task="t", args=[], kwargs={},
                   state=JobState.RUNNING, attempts=1, enqueued_at=now, scheduled_for=None,
                   started_at=now, ended_at=None, expires_at=None, worker="w", errors=(),
                   progress=progress, dead_letter_reason=None, timeout_s=None,
                   max_tries=None, headers={})
    out = io.StringIO()
    print_job(Console(file=out, width=400, color_system=None), info)
    return out.getvalue()


def progress_line(out: str) -> str:
    [line] = [line for line in out.splitlines() if " progress " in line]
    return line


def test_the_job_view_shows_message_and_data() -> None:
    assert "│ 0.5 halfway " in progress_line(shown(Progress(0.5, "halfway", 1)))
    line = progress_line(shown(Progress(0.4, "", 1, DATA)))
    assert ('0.4 {"step":"resize","done":[1,2,3],"meta":{"ok":true,"n":null,"ratio":0.25}}'
            in line)


@pytest.mark.parametrize(("data", "expected"), [
    ({"note": HOSTILE}, r'"a\nb\u001b[31mred\u001b]0;title\u0007\r\u009b2J[bold]x[/]"'),
    ({7: "x", (1, 2): b"\xff", "nan": math.nan}, '{"7":"x","(1, 2)":"b\'\\\\xff\'","nan":"NaN"}'),
    ({"zw": "a\u200bb\u2028c\U000e0001"}, r'"a\u200bb\u2028c\udb40\udc01"'),
    ({"word": "résumé ✓"}, '"résumé ✓"'),
])
def test_the_job_view_shows_any_data_on_one_line_escaped(data: Any, expected: str) -> None:
    out = shown(Progress(0.5, "", 1, data))
    for char in "\x1b\x07\x9b\r":
        assert char not in out
    line = progress_line(out)
    assert expected in line, line


@pytest.mark.slow
@pytest.mark.asyncio
async def test_asyncjobs_job_shows_the_data(real: Backend) -> None:
    async with real.pool() as pool:
        job = await pool.enqueue(report, 0.5, {**DATA, "note": HOSTILE})
        await run(real, report)
        await job.result(timeout=5)
    common = ("--redis-url", real.url or "", "--prefix", real.prefix)
    done = run_cli("job", job.id, *common, env={"COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    assert not any(c in done.stdout for c in "\x1b\x07\x9b\r")
    line = progress_line(done.stdout)
    assert '0.5 {"step":"resize","done":[1,2,3],' in line
    assert r'"note":"a\nb\u001b[31mred' in line
    done = run_cli("job", job.id, *common, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["progress"]["data"] == {**DATA, "note": HOSTILE}
    assert (record["progress"]["value"], record["progress"]["message"]) == (0.5, "")


@pytest.mark.parametrize(("data", "expected"), [
    ({7: "x", (1, 2): b"\xff"}, '0.5 {"7":"x","(1, 2)":"b\'\\\\xff\'"}'),
    ({"note": "a\nb\x1b[31m"}, r'0.5 {"note":"a\nb\u001b[31m"}'),
])
def test_the_jobs_listing_shows_any_data_on_one_line_escaped(data: Any, expected: str) -> None:
    """``asyncjobs jobs`` cuts the progress cell at 40 characters; it never fails on data
    msgspec decoded with keys JSON has no form for."""
    row = JobRow("j1", task="t", state="running", progress=Progress(0.5, "", 1, data))
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(jobs_table("running", [row]))
    for char in "\x1b\x07\x9b\r":
        assert char not in out.getvalue()
    [line] = [line for line in out.getvalue().splitlines() if "j1" in line]
    assert expected[:40] in line, line
