"""The per-job log lines: both (start and end), one per attempt, or only failures
(``asyncjobs worker --job-logs``; the loggers' names are the contract)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._cli.logs import job_logs
from asyncjobs._worker.outcomes import JOBS_LOGGER

from .conftest import Backend


@asyncjobs.task(max_tries=1)
async def maybe(ctx: Context, ok: bool) -> None:
    if not ok:
        raise ValueError("no")


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    yield
    job_logs("both")


@pytest.mark.parametrize(("choice", "lines"), [
    ("both", ["started", "complete", "started", "failed"]),
    ("end", ["complete", "failed"]),
    ("failures", ["failed"]),
])
@pytest.mark.asyncio
async def test_job_logs_choose_the_lines(backend: Backend, pool: asyncjobs.Pool,
                                         caplog: pytest.LogCaptureFixture, choice: str,
                                         lines: list[str]) -> None:
    job_logs(choice)
    await pool.enqueue(maybe, True)
    await pool.enqueue(maybe, False)
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        await backend.run(backend.worker([maybe], burst=True, concurrency=1))
    seen = [r.getMessage().split()[1] for r in caplog.records
            if r.name.startswith(JOBS_LOGGER) and r.getMessage().startswith("job ")]
    assert seen == lines
