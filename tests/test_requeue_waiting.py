"""Requeuing a job that waits already: its state, 'queued', read as the success ("requeued"
at the command line, counted as done by the dashboard) though nothing was requeued. The
reply is now 'already queued', and nothing is added to the stream."""

from __future__ import annotations

import pytest

import asyncjobs

from .conftest import Backend
from .test_ops_cli import cli


@asyncjobs.task
async def note(ctx: asyncjobs.Context) -> None:
    return None


@pytest.mark.asyncio
async def test_a_waiting_job_is_already_queued(backend: Backend) -> None:
    async with backend.pool() as pool:
        job = await pool.enqueue(note)
        stream = pool.keys(pool.default_queue).stream
        assert await pool.admin.requeue([job.id]) == {job.id: "already queued"}
        assert await pool.client.xlen(stream) == 1
        assert await job.status() == "queued"


def test_the_command_says_not_requeued(real: Backend) -> None:
    import asyncio

    async def enqueue() -> str:
        async with real.pool() as pool:
            return (await pool.enqueue(note)).id

    job_id = asyncio.run(enqueue())
    code, out, err = cli(real, "dlq", "requeue", job_id)
    assert (code, out.strip()) == (1, f"{job_id}: not requeued: already queued"), err
