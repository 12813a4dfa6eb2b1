"""A task that cancels the other asyncio tasks (the worker's own among them) must not make
its job loop for ever.

The worker took the cancellation of its main task for a stop asked from outside: it handed
its jobs back, which counts neither the attempt nor the delivery; the job ran again at once
on the next worker, which it stopped the same way: after ten restarts it was still queued
with attempts=0, the poison guard never fired, and the job beside it never finished. And
the process ended with a bare ``CancelledError`` traceback.

Now a worker whose settler task was cancelled by code not its own stops at once, records
what finished, leaves the job that was running uncancelled (the culprit) pending, so that
a reclaim counts its delivery (as for a killed worker), hands back the jobs it cancelled,
and ``run`` raises ``AsyncJobsError`` saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    for task in asyncio.all_tasks():
        if task not in SPARED and (task is not me or STATE.get("itself")):
            task.cancel()
    await asyncio.sleep(0.5)
    return "cancelled everything"


async def _sabotaged_run(backend: Backend, pool: asyncjobs.Pool,
                         caplog: pytest.LogCaptureFixture, itself: bool
                         ) -> tuple[asyncjobs.Job[Any], asyncjobs.Job[Any]]:
    STATE.clear()
    STATE.update(innocent_started=asyncio.Event(), itself=itself)
    victim = await pool.enqueue(innocent)
    culprit = await pool.enqueue(saboteur)
    me = asyncio.current_task()
    assert me is not None
    SPARED.add(me)
    try:
        worker = backend.worker([innocent, saboteur], claim_timeout=1)
        run = asyncio.create_task(backend.run(worker))
        with pytest.raises(asyncjobs.AsyncJobsError, match="cancelled by code that is not"):
            await asyncio.wait_for(run, 15)
    finally:
        SPARED.discard(me)
    lines = [r.getMessage() for r in caplog.records if "stopped at once" in r.getMessage()]
    assert len(lines) == 1, lines
    return victim, culprit


async def test_a_task_that_cancels_the_worker_is_left_pending_and_its_victims_handed_back(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    victim, culprit = await _sabotaged_run(backend, pool, caplog, itself=False)
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


async def test_a_task_that_cancels_itself_too_leaves_every_job_pending(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """No attempt was left uncancelled: none can be told from the culprit, so nothing is
    handed back; each runs again after the claim timeout, its delivery counted."""
    victim, culprit = await _sabotaged_run(backend, pool, caplog, itself=True)
    for job in (victim, culprit):
        info = await job.info()
        assert info.state == JobState.RUNNING and info.attempts == 1, info
