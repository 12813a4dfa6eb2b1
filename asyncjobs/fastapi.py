"""FastAPI integration: one pool per app, opened at start-up and closed at shutdown, handed
to endpoints as a dependency. Importing this module imports FastAPI (the ``fastapi`` extra:
``pip install -e ".[fastapi]"`` in a clone); ``import asyncjobs`` alone never does.

::

    from asyncjobs.fastapi import PoolDep, lifespan

    app = FastAPI(lifespan=lifespan())          # or lifespan("redis://...", then=your_lifespan)

    @app.post("/signup", status_code=202)
    async def signup(email: str, pool: PoolDep) -> dict[str, str]:
        job = await pool.enqueue(send_welcome_email, email)
        return {"job_id": job.id}

In tests, ``asyncjobs.testing.Harness.attach(app)`` sets the app's pool to an in-memory one
before start-up; the lifespan then uses that pool and opens nothing (no Redis needed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from ._durations import Seconds, to_seconds
from ._producer.opening import create_pool
from ._producer.pool import Pool

AppLifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


@contextlib.asynccontextmanager
async def open_pool(app: FastAPI, url: str | None = None, **options: Any) -> AsyncIterator[Pool]:
    """Open the app's pool (``app.state.asyncjobs``) for the duration of the block.

    A pool already set there before start-up (a test harness's, see ``Harness.attach``) is
    used as it is: nothing is opened, and it is left open and in place afterwards."""
    existing = getattr(app.state, "asyncjobs", None)
    if isinstance(existing, Pool):
        yield existing
        return
    async with create_pool(url, **options) as pool:
        app.state.asyncjobs = pool
        try:
            yield pool
        finally:
            del app.state.asyncjobs


def lifespan(url: str | None = None, *, then: AppLifespan | None = None,
             **options: Any) -> AppLifespan:
    """A FastAPI lifespan that opens the pool, then runs ``then`` (your own lifespan)."""

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Any]:
        async with open_pool(app, url, **options):
            if then is None:
                yield None
            else:
                async with then(app) as state:
                    yield state

    return run


def get_pool(request: Request) -> Pool:
    """The app's pool (a FastAPI dependency)."""
    pool: Pool = request.app.state.asyncjobs
    return pool


PoolDep = Annotated[Pool, Depends(get_pool)]
"""Annotate an endpoint parameter with this to receive the pool."""


@dataclass(frozen=True)
class Health:
    """Whether jobs on a queue are being worked off."""

    healthy: bool
    workers: int
    waiting: int
    oldest_waiting_s: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


async def health(pool: Pool, queue: str | None = None, *, max_waiting: int = 10_000,
                 max_age_s: Seconds | None = None) -> Health:
    """Healthy when a live worker serves ``queue`` and the backlog is under the limits:
    at most ``max_waiting`` jobs waiting (a whole number, 0 or more), the oldest waiting
    at most ``max_age_s`` (seconds or a ``timedelta``; None: no age limit). A limit that
    is not one raises ``TypeError`` or ``ValueError`` naming it, before Redis is asked."""
    if isinstance(max_waiting, bool) or not isinstance(max_waiting, int):
        raise TypeError(f"max_waiting must be a whole number of jobs, not "
                        f"{type(max_waiting).__name__} {max_waiting!r:.80}")
    if max_waiting < 0:
        raise ValueError(f"max_waiting must be 0 or more, not {max_waiting}")
    max_age = to_seconds(max_age_s, "max_age_s")
    name = queue or pool.default_queue
    stats = await pool.admin.queue_stats(name)
    workers = [w for w in await pool.admin.workers() if name in w.queues]
    reason = ""
    if not workers:
        reason = f"no live worker serves queue {name!r}"
    elif stats.waiting > max_waiting:
        reason = f"{stats.waiting} jobs waiting (limit {max_waiting})"
    elif max_age is not None and (stats.oldest_waiting_s or 0) > max_age:
        reason = f"oldest job waited {stats.oldest_waiting_s:.0f} s (limit {max_age:g} s)"
    return Health(not reason, len(workers), stats.waiting, stats.oldest_waiting_s, reason)
