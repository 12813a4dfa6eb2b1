"""Worker behaviour the README documents and no other test checked: ``sync_concurrency`` (at
most that many plain ``def`` task bodies run at once, 20 by default), and a worker
``job_timeout`` shorter than a task's ``soft_timeout``: only the hard one applies."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import asyncjobs
from asyncjobs import Context, JobState

from .conftest import Backend

pytestmark = pytest.mark.asyncio


# -- sync_concurrency ------------------------------------------------------------------------


class Overlap:
    """How many sync bodies run at once. Each body waits (up to 5 s) until ``target`` run
    at once, or every job has started, then holds a little longer: so the peak reaches the
    limit whatever the machine's speed, and a limit that lets more run shows above it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = self.started = self.peak = 0
        self.target = self.total = 0

    def reset(self, target: int, total: int) -> None:
        with self.cond:
            self.running = self.started = self.peak = 0
            self.target, self.total = target, total

    def body(self) -> None:
        with self.cond:
            self.running += 1
            self.started += 1
            self.peak = max(self.peak, self.running)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.running >= self.target
                               or self.started >= self.total, timeout=5)
        time.sleep(0.05)  # still running: a body the limit should have held back shows
        with self.cond:
            self.running -= 1
            self.cond.notify_all()


OVERLAP = Overlap()


@asyncjobs.task(name="wd_sync_body", max_tries=1)
def sync_body(ctx: Context, n: int) -> int:
    OVERLAP.body()
    return n


@pytest.mark.parametrize(("limit", "jobs"), [(2, 6), (None, 25)])
async def test_sync_concurrency_caps_the_plain_def_bodies_running_at_once(
        backend: Backend, pool: asyncjobs.Pool, limit: int | None, jobs: int) -> None:
    """README, Worker options: ``sync_concurrency`` (default 20) threads for plain ``def``
    tasks. With concurrency 100 every job is taken at once; only the threads hold them."""
    options = {} if limit is None else {"sync_concurrency": limit}
    worker = backend.worker([sync_body], burst=True, concurrency=100, **options)
    expected = 20 if limit is None else limit
    assert worker.config.sync_concurrency == expected  # the default the README gives
    OVERLAP.reset(target=expected, total=jobs)
    handles = [await pool.enqueue(sync_body, n) for n in range(jobs)]
    await backend.run(worker)
    assert [await h.result(timeout=5) for h in handles] == list(range(jobs))
    assert OVERLAP.started == jobs
    assert OVERLAP.peak == expected


# -- a worker job_timeout shorter than the soft timeout --------------------------------------

SOFT = 0.3
RUNS_FOR = 0.6  # past the soft limit, whatever the hard timeout did
TOLD: dict[str, bool] = {}
"""Job id -> whether ``ctx.soft_timed_out`` was set when the body ended."""


@asyncjobs.task(name="wd_soft_outlives", soft_timeout=SOFT, max_tries=1)
async def outlives_its_timeout(ctx: Context) -> str:
    """No timeout of its own (the worker's ``job_timeout`` applies). It swallows the hard
    timeout's cancellation and runs on past the soft limit: a soft timer still armed would
    set the flag while it runs."""
    started = time.monotonic()
    try:
        await asyncio.sleep(RUNS_FOR)
    except asyncio.CancelledError:
        await asyncio.sleep(max(0.0, RUNS_FOR - (time.monotonic() - started)))
    TOLD[ctx.job_id] = ctx.soft_timed_out
    return "done"


async def test_a_worker_job_timeout_below_the_soft_one_leaves_only_the_hard(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """README, soft timeouts: when the worker's ``job_timeout`` is shorter than the soft
    limit, only the hard one applies: the job ends ``timeout`` and the task is never told."""
    job = await pool.enqueue(outlives_its_timeout)
    with caplog.at_level(logging.WARNING, logger="asyncjobs"):
        await backend.run(backend.worker([outlives_its_timeout], burst=True, job_timeout=0.1))
    info = await job.info()
    assert info.state is JobState.FAILED
    assert [e.type for e in info.errors] == ["asyncjobs.exceptions.JobTimeout"]
    assert TOLD.pop(job.id) is False  # the body ran past 0.3 s, and was never told
    assert not any("soft timeout" in r.getMessage() for r in caplog.records)


async def test_a_worker_job_timeout_above_the_soft_one_tells_the_task(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """The control: the same task under a longer ``job_timeout`` is told at its soft limit,
    so the test above would see the flag if the soft timer ran."""
    job = await pool.enqueue(outlives_its_timeout)
    with caplog.at_level(logging.WARNING, logger="asyncjobs"):
        await backend.run(backend.worker([outlives_its_timeout], burst=True, job_timeout=5))
    assert await job.result(timeout=5) == "done"
    assert TOLD.pop(job.id) is True
    assert any(f"job soft timeout id={job.id} " in r.getMessage() for r in caplog.records)
