"""A result larger than Redis takes (its ``proto-max-bulk-len``) ends its own job, and only
its own: it was sent in the settle call of its whole batch, which Redis refused (and dropped
the connection): every job of the batch stayed pending, ran again after the claim timeout
(max_tries=1 notwithstanding) and, after max_deliveries, was dead-lettered as a poison pill.

Real redis-servers of the tests' own, started with a 1 MB limit (the smallest Redis takes).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer

from .conftest import Backend, need_redis_server

pytestmark = pytest.mark.asyncio

RUNS: dict[Any, int] = {}
BIG = 2 * 1024 * 1024


@asyncjobs.task(max_tries=1)
async def big(ctx: Context, size: int) -> bytes:
    RUNS["big"] = RUNS.get("big", 0) + 1
    return b"x" * size


@asyncjobs.task(max_tries=1)
async def ordinary(ctx: Context, i: int) -> int:
    RUNS[i] = RUNS.get(i, 0) + 1
    return i


def _server(*extra: str) -> Iterator[Backend]:
    need_redis_server()
    with RedisServer(extra_args=("--proto-max-bulk-len", "1mb", *extra)) as server:
        yield Backend("real", server.url, url_factory(server.url), f"t{secrets.token_hex(4)}")


@pytest.fixture
def small_bulk() -> Iterator[Backend]:
    """A Redis whose proto-max-bulk-len is 1 MB, and which tells it (CONFIG GET)."""
    yield from _server()


@pytest.fixture
def hidden_bulk() -> Iterator[Backend]:
    """A Redis whose proto-max-bulk-len is 1 MB, and which hides it (no CONFIG, as on
    managed services): the worker assumes Redis's default (512 MB) and sends the result;
    Redis refuses the call."""
    yield from _server("--rename-command", "CONFIG", '""')


async def _run_batch(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    RUNS.clear()
    async with backend.pool() as pool:
        jobs = await pool.enqueue_many([asyncjobs.call(big, BIG)]
                                       + [asyncjobs.call(ordinary, i) for i in range(20)])
        worker = backend.worker([big, ordinary], concurrency=50, claim_timeout=1,
                                burst=True)
        await backend.run(worker)  # burst: returns once every job ended
        infos = [await job.info() for job in jobs]
    # Each body ran once; the big job failed on its own, with the reason, the others are done.
    runs = dict(RUNS)
    assert runs == {"big": 1, **dict.fromkeys(range(20), 1)}
    assert [info.state for info in infos] == [JobState.FAILED] + [JobState.COMPLETE] * 20
    reason = infos[0].dead_letter_reason or ""
    assert reason.startswith("the result is larger than Redis takes: 2,097,"), reason
    assert "proto-max-bulk-len" in reason
    assert [info.result for info in infos[1:]] == list(range(20))
    assert not [r for r in caplog.records if "stay pending" in r.getMessage()]


async def test_a_result_over_the_limit_fails_its_job_where_it_is_encoded(
        small_bulk: Backend, caplog: pytest.LogCaptureFixture) -> None:
    await _run_batch(small_bulk, caplog)
    # told where the result was encoded: the job's own line says failed, not complete
    ended = [r.getMessage() for r in caplog.records if r.name == "asyncjobs.worker.jobs"
             and "task=big" in r.getMessage()]
    assert len(ended) == 1 and ended[0].startswith("job failed"), ended
    assert "over its proto-max-bulk-len of 1,048,576" in ended[0]


async def test_a_settle_call_redis_refuses_is_split_and_the_refused_op_fails(
        hidden_bulk: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """The limit cannot be read: the result goes out in the batch's call, which Redis
    refuses (or drops the connection on): the other jobs are recorded on their own, the
    one Redis refuses fails with the reason."""
    await _run_batch(hidden_bulk, caplog)
