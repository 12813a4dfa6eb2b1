"""A task that cancels the other asyncio tasks (the worker's own among them) must not make
its job loop for ever.

The worker took the cancellation of its main task for a stop asked from outside: it handed
its jobs back, which counts neither the attempt nor the delivery; the job ran again at once
on the next worker, which it stopped the same way: after ten restarts it was still queued
with attempts=0, the poison guard never fired, and the job beside it never finished. And
the process ended with a bare ``CancelledError`` traceback.

Now a worker whose settler task was cancelled by a job's code (the job whose attempt runs
the code that cancels, or a task that code started) stops at once, records what finished,
leaves that job pending, so that a reclaim counts its delivery (as for a killed worker),
hands back the jobs it cancelled, and ``run`` raises ``AsyncJobsError`` saying so. The same
cancels sent by no job's code (the app, the event loop's end) are an ordinary stop: every
job is handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from contextlib import AbstractContextManager
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobState

from .conftest import Backend

pytestmark = pytest.mark.asyncio

SPARED: set[asyncio.Task[Any]] = set()
"""The test's own task: the culprit cancels every other."""
STATE: dict[str, Any] = {}


@asyncjobs.task(max_tries=1)
async def innocent(ctx: Context) -> str:
    STATE["innocent_runs"] = STATE.get("innocent_runs", 0) + 1
    STATE["innocent_started"].set()
    await asyncio.sleep(0.3)
    return "done"


@asyncjobs.task(max_tries=1)
async def saboteur(ctx: Context) -> str:
    STATE["saboteur_runs"] = STATE.get("saboteur_runs", 0) + 1
    if STATE.get("harmless"):
        return "harmless"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await STATE["innocent_started"].wait()
    me = asyncio.current_task()

    def cancel_all() -> None:
        for task in asyncio.all_tasks():
            if task not in SPARED and (task is not me or STATE.get("itself")):
                task.cancel()

    if STATE.get("from_a_task"):  # a task it started cancels: the same job's code
        async def helper() -> None:
            SPARED.add(asyncio.current_task())  # type: ignore[arg-type]
            cancel_all()

        await asyncio.shield(asyncio.create_task(helper()))
    elif STATE.get("from_the_loop"):  # no job's code: a callback of the event loop
        asyncio.get_running_loop().call_soon(cancel_all, context=contextvars.Context())
    else:
        cancel_all()
    await asyncio.sleep(0.5)
    return "cancelled everything"


async def _run_one_of_each(backend: Backend, pool: asyncjobs.Pool,
                           ending: AbstractContextManager[object], **state: object
                           ) -> tuple[asyncjobs.Job[Any], asyncjobs.Job[Any]]:
    """An innocent job and the saboteur (``state`` says how it cancels) run by a worker
    whose run ends as ``ending`` expects; this test's own task is spared."""
    STATE.clear()
    STATE.update(innocent_started=asyncio.Event(), **state)
    victim = await pool.enqueue(innocent)
    culprit = await pool.enqueue(saboteur)
    me = asyncio.current_task()
    assert me is not None
    SPARED.add(me)
    try:
        run = asyncio.create_task(backend.run(backend.worker([innocent, saboteur],
                                                             claim_timeout=1)))
        with ending:
            await asyncio.wait_for(run, 15)
    finally:
        SPARED.discard(me)
    return victim, culprit


async def _sabotaged_run(backend: Backend, pool: asyncjobs.Pool,
                         caplog: pytest.LogCaptureFixture, itself: bool,
                         from_a_task: bool = False
                         ) -> tuple[asyncjobs.Job[Any], asyncjobs.Job[Any]]:
    victim, culprit = await _run_one_of_each(
        backend, pool, pytest.raises(asyncjobs.AsyncJobsError,
                                     match="cancelled by the code of job"),
        itself=itself, from_a_task=from_a_task)
    lines = [r.getMessage() for r in caplog.records if "stopped at once" in r.getMessage()]
    assert len(lines) == 1, lines
    return victim, culprit


@pytest.mark.parametrize(("itself", "from_a_task"), [(False, False), (True, False),
                                                  (False, True)])
async def test_a_task_that_cancels_the_worker_is_left_pending_and_its_victims_handed_back(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture,
        itself: bool, from_a_task: bool) -> None:
    """Whether the culprit spares its own task or not, and whether it cancels from its own
    task or from one it started: the culprit is known, and only it is left pending."""
    victim, culprit = await _sabotaged_run(backend, pool, caplog, itself, from_a_task)
    # The culprit's entry stays pending, its attempt counted: a reclaim counts its delivery.
    info = await culprit.info()
    assert info.state == JobState.RUNNING and info.attempts == 1
    # The job it cancelled is handed back, that attempt not counted: it runs at once.
    info = await victim.info()
    assert info.state == JobState.QUEUED and info.attempts == 0
    STATE["harmless"] = True
    await backend.run(backend.worker([innocent, saboteur], claim_timeout=1, burst=True))
    assert await victim.result(timeout=5) == "done"
    assert STATE["innocent_runs"] == 2


async def test_the_same_cancels_from_no_job_s_code_are_an_ordinary_stop(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """The event loop (or an app) cancelling every task, as ``asyncio.run`` does at its
    end: the worker stops as when an app cancels it, and hands every job back."""
    victim, culprit = await _run_one_of_each(backend, pool,
                                             pytest.raises(asyncio.CancelledError),
                                             from_the_loop=True)
    assert not [r for r in caplog.records if "stopped at once" in r.getMessage()]
    for job in (victim, culprit):
        info = await job.info()
        assert info.state == JobState.QUEUED and info.attempts == 0, info
