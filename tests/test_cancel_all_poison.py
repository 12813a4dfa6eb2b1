"""A job whose code cancels every asyncio task, end to end: each worker it runs on stops
at once (one log line, ``AsyncJobsError``), leaves that job pending and hands back the jobs
it cancelled beside it; the job is reclaimed after the claim timeout, its delivery counted,
until the poison guard dead-letters it (``max_deliveries``) with the reason. The README:
"a job that does this every time ends in the dead letters after ``max_deliveries``".

Each worker runs as the CLI runs it (``Worker.run_sync``: an event loop of its own, here
in the test's thread), on a real redis-server of the suite's own, in burst mode, again and
again until a run ends without being stopped by the culprit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._redis.keys import GROUP

from .conftest import Backend

MAX_DELIVERIES = 2
BYSTANDERS = 4
STATE: dict[str, Any] = {}


@asyncjobs.task(max_tries=1)
async def bystander(ctx: Context, i: int) -> int:
    STATE["started"][i] += 1
    STATE["running"] += 1
    try:
        await asyncio.sleep(0.2)
    finally:
        STATE["running"] -= 1
    STATE["finished"][i] += 1
    return i


@asyncjobs.task(max_tries=1)
async def culprit(ctx: Context) -> str:
    STATE["culprit_runs"] += 1
    # Cancel while a bystander runs, if one is still to run: it is cancelled too (bounded).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while not STATE["running"] and sum(STATE["finished"]) < BYSTANDERS:
                await asyncio.sleep(0.01)
    STATE["cancelled_beside"].append(STATE["running"])
    for task in asyncio.all_tasks():
        task.cancel()
    await asyncio.sleep(5)
    return "survived"


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_a_job_that_cancels_every_task_is_dead_lettered_after_max_deliveries(
        real: Backend, caplog: pytest.LogCaptureFixture, use_uvloop: bool) -> None:
    STATE.clear()
    STATE.update(started=[0] * BYSTANDERS, finished=[0] * BYSTANDERS, running=0,
                 culprit_runs=0, cancelled_beside=[])
    assert real.url is not None

    async def enqueue() -> tuple[str, list[str]]:
        async with real.pool() as pool:
            bad = await pool.enqueue(culprit)
            good = await pool.enqueue_many([asyncjobs.call(bystander, i)
                                            for i in range(BYSTANDERS)])
        return bad.id, [job.id for job in good]

    bad_id, good_ids = asyncio.run(enqueue())

    stops: list[str] = []
    runs = 0
    while True:  # bounded below: the job must end within max_deliveries + 1 runs
        runs += 1
        worker = real.worker([culprit, bystander], concurrency=10, claim_timeout=1,
                             max_deliveries=MAX_DELIVERIES, shutdown_grace=1, burst=True)
        try:
            worker.run_sync(redis_url=real.url, use_uvloop=use_uvloop)
        except asyncjobs.AsyncJobsError as exc:
            stops.append(str(exc))
        else:
            break
        assert runs <= MAX_DELIVERIES + 1, f"still not dead-lettered after {runs} runs"

    # Each delivery that ran it stopped its worker; the next one is dead-lettered unrun.
    assert runs == MAX_DELIVERIES + 1, runs
    assert STATE["culprit_runs"] == MAX_DELIVERIES
    assert len(stops) == MAX_DELIVERIES
    assert all(f"cancelled by the code of job {bad_id}" in stop for stop in stops), stops
    # One line per stopped worker, naming the job left pending.
    lines = [r for r in caplog.records if "stopped at once" in r.getMessage()]
    assert len(lines) == MAX_DELIVERIES, [r.getMessage() for r in lines]
    assert all(r.levelno == logging.ERROR and bad_id in r.getMessage()
               and "not handed back" in r.getMessage() for r in lines)
    # The first time, bystanders ran beside it and were cancelled with it.
    assert STATE["cancelled_beside"][0] > 0, STATE

    async def outcomes() -> tuple[Any, list[Any], list[Any], list[Any], int]:
        async with real.pool() as pool:
            bad = await pool.job(bad_id).info()
            good = [await pool.job(i).info() for i in good_ids]
            results = [await pool.job(i).result(timeout=1) for i in good_ids]
            letters = await pool.admin.dead_letters()
            pending = await pool.client.xpending(pool.keys("default").stream, GROUP)
        return bad, good, results, letters, pending["pending"]

    bad, good, results, letters, pending = asyncio.run(outcomes())
    assert bad.state is JobState.FAILED, bad
    reason = bad.dead_letter_reason or ""
    assert f"delivered {MAX_DELIVERIES + 1} times without finishing" in reason, reason
    assert bad.errors and bad.errors[-1].type == "asyncjobs.PoisonJob", bad.errors
    assert [(d.job_id, d.reason) for d in letters] == [(bad_id, reason)], letters
    # The jobs it cancelled were handed back, their attempts not counted: each completed
    # once, on its first counted attempt, and none was taken for a poison pill.
    assert [info.state for info in good] == [JobState.COMPLETE] * BYSTANDERS, good
    assert [info.attempts for info in good] == [1] * BYSTANDERS, good
    assert results == list(range(BYSTANDERS))
    assert STATE["finished"] == [1] * BYSTANDERS, STATE
    assert all(1 <= n <= MAX_DELIVERIES + 1 for n in STATE["started"]), STATE
    assert pending == 0
