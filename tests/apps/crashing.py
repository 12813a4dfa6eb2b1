"""A worker whose lifespan fails at once: every process of it dies on start-up (for the
supervisor's crash-loop test)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncjobs
from asyncjobs import Context


@asyncjobs.task
async def noop(ctx: Context) -> None:
    return None


@contextlib.asynccontextmanager
async def broken(worker: asyncjobs.Worker) -> AsyncIterator[None]:
    raise RuntimeError("the database is not there")
    yield  # pragma: no cover


worker = asyncjobs.Worker([noop], lifespan=broken)
