"""A task's ``soft_timeout``: ``ctx.soft_timeout`` is set before the hard timeout, so the
task can save partial work and return; a task that ignores it still ends at the hard
timeout; bad values are refused when the task is defined."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import asyncjobs
from asyncjobs import ConfigurationError, Context, JobState

from .conftest import Backend

SOFT = 0.3
HARD = 5.0


@asyncjobs.task(name="st_loop", soft_timeout=SOFT, timeout=HARD, max_tries=1)
async def loop_until_told(ctx: Context) -> dict[str, object]:
    done = 0
    while not ctx.soft_timed_out:  # one step at a time, checking between steps
        await asyncio.sleep(0.01)
        done += 1
    return {"partial": done, "flag": ctx.soft_timeout.is_set()}


@asyncjobs.task(name="st_wait", soft_timeout=SOFT, timeout=HARD, max_tries=1)
async def wait_for_it(ctx: Context) -> str:
    work = asyncio.ensure_future(asyncio.sleep(60))  # the work, which would take too long
    told = asyncio.ensure_future(ctx.soft_timeout.wait())
    await asyncio.wait([work, told], return_when=asyncio.FIRST_COMPLETED)
    work.cancel()
    return "saved" if told.done() else "finished"


@asyncjobs.task(name="st_sync", soft_timeout=SOFT, timeout=HARD, max_tries=1)
def sync_steps(ctx: Context) -> str:
    deadline = time.monotonic() + 30
    while not ctx.soft_timed_out and time.monotonic() < deadline:
        time.sleep(0.01)
    return f"told in {threading.current_thread() is not threading.main_thread()}"


@asyncjobs.task(name="st_ignore", soft_timeout=0.1, timeout=0.6, max_tries=1)
async def ignores_it(ctx: Context) -> str:
    await asyncio.sleep(30)
    return "never"


@asyncjobs.task(name="st_none", timeout=HARD, max_tries=1)
async def no_soft_timeout(ctx: Context) -> list[bool]:
    await asyncio.sleep(0.05)
    return [ctx.soft_timed_out, ctx.soft_timeout.is_set()]


async def run(backend: Backend, *tasks: asyncjobs.Task[..., object]) -> None:
    await backend.run(backend.worker(list(tasks), burst=True, concurrency=4))


@pytest.mark.asyncio
async def test_the_task_is_told_and_returns_its_partial_work(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    loop_job = await pool.enqueue(loop_until_told)
    wait_job = await pool.enqueue(wait_for_it)
    sync_job = await pool.enqueue(sync_steps)
    with caplog.at_level(logging.WARNING, logger="asyncjobs"):
        await run(backend, loop_until_told, wait_for_it, sync_steps)
    result = await loop_job.result(timeout=5)
    assert result["flag"] is True and isinstance(result["partial"], int)
    assert result["partial"] > 0
    assert await wait_job.result(timeout=5) == "saved"
    assert await sync_job.result(timeout=5) == "told in True"  # from the task's own thread
    for job in (loop_job, wait_job, sync_job):
        info = await job.info()
        assert info.state is JobState.COMPLETE and info.attempts == 1 and info.errors == ()
        assert any(f"job soft timeout id={job.id} " in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_task_that_ignores_it_ends_at_the_hard_timeout(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    job = await pool.enqueue(ignores_it)
    with caplog.at_level(logging.WARNING, logger="asyncjobs"):
        await run(backend, ignores_it)
    assert any(f"job soft timeout id={job.id} " in r.getMessage() for r in caplog.records)
    with pytest.raises(asyncjobs.JobFailed):
        await job.result(timeout=5)
    info = await job.info()
    assert info.state is JobState.FAILED
    assert [e.type for e in info.errors] == ["asyncjobs.exceptions.JobTimeout"]


@pytest.mark.asyncio
async def test_without_a_soft_timeout_nothing_is_set(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    job = await pool.enqueue(no_soft_timeout)
    with caplog.at_level(logging.WARNING, logger="asyncjobs"):
        await run(backend, no_soft_timeout)
    assert await job.result(timeout=5) == [False, False]
    assert not any("soft timeout" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_job_timeout_below_the_soft_one_leaves_only_the_hard(
        backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """A per-job timeout shorter than the task's soft timeout: the soft one never fires."""
    job = await pool.enqueue(ignores_it.options(timeout=0.05))
    with caplog.at_level(logging.WARNING, logger="asyncjobs"):
        await run(backend, ignores_it)
    info = await job.info()
    assert info.state is JobState.FAILED
    assert [e.type for e in info.errors] == ["asyncjobs.exceptions.JobTimeout"]
    assert not any("soft timeout" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("soft", "hard"), [(0, 5), (5, 5), (6, 5), (-1, 5)])
def test_a_soft_timeout_not_below_the_timeout_is_refused(soft: float, hard: float) -> None:
    with pytest.raises((ConfigurationError, ValueError), match="soft_timeout"):
        asyncjobs.task(soft_timeout=soft, timeout=hard)(no_soft_timeout.fn)  # type: ignore[arg-type]


def test_a_soft_timeout_without_a_task_timeout_is_accepted() -> None:
    """The worker's job timeout (or none) applies then; the soft one fires if it is below."""
    made = asyncjobs.task(soft_timeout=10)(no_soft_timeout.fn)  # type: ignore[arg-type]
    assert made.soft_timeout_s == 10.0
