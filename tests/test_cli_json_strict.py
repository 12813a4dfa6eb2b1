"""``--json`` output is strict JSON. A job's arguments, result and progress data may hold
float NaN and infinities (msgpack carries them, ``--arg NaN`` takes them), which Python's
``json`` writes as the bare words ``NaN`` / ``Infinity``: no JSON at all for ``jq``,
JavaScript's ``JSON.parse`` or any strict parser. They are written as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; every other value is unchanged."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._cli import render
from asyncjobs._cli.render import to_json

from .conftest import Backend, running
from .procs import run_cli

NON_FINITE = [math.nan, math.inf, -math.inf]
WRITTEN = ["NaN", "Infinity", "-Infinity"]


def _refuse(word: str) -> Any:
    raise ValueError(f"not strict JSON: bare {word}")


def strict(text: str) -> Any:
    """``text`` read as strict JSON: a bare NaN, Infinity or -Infinity raises."""
    return json.loads(text, parse_constant=_refuse)


def cli(backend: Backend, *args: str) -> str:
    done = run_cli(*args, "--redis-url", backend.url or "", "--prefix", backend.prefix)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- the writer -----------------------------------------------------------------------------

def test_to_json_writes_non_finite_floats_as_strings() -> None:
    value = {"args": [*NON_FINITE, 1.5, 0.0, -0.0, 10**30, "NaN"],
             "nested": {"deep": [(math.inf, {"x": -math.inf})]}, "ok": None}
    got = strict(to_json(value))
    assert got["args"] == [*WRITTEN, 1.5, 0.0, -0.0, 10**30, "NaN"]
    assert got["nested"] == {"deep": [["Infinity", {"x": "-Infinity"}]]}
    assert got["ok"] is None


def test_a_float_subclass_is_written_the_same() -> None:
    class Measure(float):
        pass

    assert strict(to_json([Measure("nan"), Measure("-inf"), Measure(2.5)])) == [
        "NaN", "-Infinity", 2.5]


def test_a_float_subclass_whose_comparisons_lie_or_raise_is_written_as_its_value() -> None:
    """json's own float check (``o != o``) and ``non_finite``'s sign (``> 0``) asked the
    subclass: a ``__ne__`` that lies made ``to_json`` raise ValueError (allow_nan=False),
    and a ``__gt__`` that raises escaped."""
    class Liar(float):
        def __ne__(self, other: object) -> bool:
            return True

        def __gt__(self, other: object) -> bool:
            raise RuntimeError("no comparisons")

    got = [Liar(1.0), Liar("-inf"), Liar("nan")]
    assert strict(to_json(got)) == [1.0, "-Infinity", "NaN"]
    assert strict(render._one_line_json({"x": got})) == {"x": [1.0, "-Infinity", "NaN"]}


def test_the_tables_one_line_json_is_strict_too() -> None:
    """``asyncjobs jobs`` shows progress data as one-line JSON: the same representation."""
    assert strict(render._one_line_json({"r": NON_FINITE})) == {"r": WRITTEN}


# -- the commands, on a real job ------------------------------------------------------------

@asyncjobs.task(name="json_strict_nan")
async def nan_result(ctx: Context, *args: Any, **kwargs: Any) -> Any:
    await ctx.progress(0.5, {"ratio": math.nan, "bounds": [-math.inf, math.inf]})
    return {"mean": math.nan, "all": list(args)}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_job_json_is_strict_with_nan_arguments_and_result(real: Backend) -> None:
    async with real.pool() as pool, running(real, real.worker([nan_result])):
        job = await pool.enqueue("json_strict_nan", *NON_FINITE, limit=math.inf)
        await job.result(timeout=20)
    record = strict(await asyncio.to_thread(cli, real, "job", job.id, "--json"))
    assert record["args"] == WRITTEN
    assert record["kwargs"] == {"limit": "Infinity"}
    assert record["result"] == {"mean": "NaN", "all": WRITTEN}
    assert record["progress"]["data"] == {"ratio": "NaN", "bounds": ["-Infinity", "Infinity"]}
    assert record["state"] == "complete"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_jobs_json_is_strict_with_nan_progress(real: Backend) -> None:
    async with real.pool() as pool, running(real, real.worker([nan_result])):
        job = await pool.enqueue("json_strict_nan", math.nan)
        await job.result(timeout=20)
    page = strict(await asyncio.to_thread(cli, real, "jobs", "--state", "complete", "--json"))
    [row] = [r for r in page["jobs"] if r["job_id"] == job.id]
    assert row["progress"]["data"] == {"ratio": "NaN", "bounds": ["-Infinity", "Infinity"]}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_enqueue_then_job_json_round_trip_of_cli_nan(real: Backend) -> None:
    """``enqueue --arg NaN`` takes the bare word (Python's reading); ``job --json`` gives
    it back as the string."""
    out = await asyncio.to_thread(cli, real, "enqueue", "json_strict_nan", "--arg", "NaN",
                                  "--arg", "-Infinity", "--kwarg", "x=[Infinity]", "--json")
    job_id = strict(out)["job_id"]
    record = strict(await asyncio.to_thread(cli, real, "job", job_id, "--json"))
    assert record["args"] == ["NaN", "-Infinity"] and record["kwargs"] == {"x": ["Infinity"]}
