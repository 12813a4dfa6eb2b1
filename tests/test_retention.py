"""Bounded retention: dead letters are capped by count and age, and the records of the jobs
they name go with them; what ages out is counted. A failed record never outlives its letter
(nor the longest letter age, as a TTL).

Regression: a failed record was kept for ever and the dead-letter stream had no cap (about
21 MiB per hour at a 1 % failure rate of 400 jobs/s, until someone purged).
"""

from __future__ import annotations

import asyncio

import pytest

import asyncjobs
from asyncjobs import ConfigurationError, Context, JobState

from .conftest import Backend

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]


@asyncjobs.task(max_tries=1)
async def fail(ctx: Context, n: int) -> None:
    raise ValueError(f"no {n}")


async def burst(backend: Backend, **options: object) -> None:
    await asyncio.wait_for(backend.run(backend.worker([fail], burst=True, **options)), 30)


async def test_the_oldest_dead_letters_go_beyond_the_limit_with_their_records(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    jobs = [await pool.enqueue(fail, n) for n in range(7)]
    await burst(backend, dead_letter_limit=3)
    letters = await pool.admin.dead_letters(newest_first=False)
    assert len(letters) == 3
    kept = {d.job_id for d in letters}
    assert kept == {j.id for j in jobs[-3:]}
    for job in jobs[:-3]:  # their letters were trimmed: their records went with them
        with pytest.raises(asyncjobs.JobNotFound):
            await job.info()
    for job in jobs[-3:]:
        info = await job.info()
        assert info.state is JobState.FAILED
        assert 0 < await pool.client.ttl(pool.keys("default").job(job.id)) <= 180 * 86400
    stats = await pool.admin.queue_stats()
    assert stats.counters["trimmed"] == 4 and stats.counters["failed"] == 7


async def test_letters_older_than_the_max_age_go(backend: Backend, pool: asyncjobs.Pool) -> None:
    old = await pool.enqueue(fail, 1)
    await burst(backend, dead_letter_max_age=1)
    assert [d.job_id for d in await pool.admin.dead_letters()] == [old.id]
    await asyncio.sleep(1.1)
    new = await pool.enqueue(fail, 2)
    await burst(backend, dead_letter_max_age=1)  # trimming happens as letters are written
    assert [d.job_id for d in await pool.admin.dead_letters()] == [new.id]
    with pytest.raises(asyncjobs.JobNotFound):
        await old.info()


async def test_a_job_requeued_since_keeps_its_record_when_its_old_letter_goes(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    first = await pool.enqueue(fail.options(job_id="keeper"), 0)
    await burst(backend, dead_letter_limit=1)
    assert (await pool.admin.requeue(["keeper"])) == {"keeper": "queued"}
    await pool.enqueue(fail, 1)  # its letter will push out any older letter
    await burst(backend, dead_letter_limit=1)
    # "keeper" failed again (a new letter), then was pushed out by the other job's letter:
    # its record goes with its latest letter, so nothing is left behind.
    assert len(await pool.admin.dead_letters()) == 1
    with pytest.raises(asyncjobs.JobNotFound):
        await first.info()


async def test_limits_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        asyncjobs.Worker([fail], dead_letter_limit=0)
    with pytest.raises(ValueError):
        asyncjobs.Worker([fail], dead_letter_max_age=float("inf"))
