"""Testing code that enqueues jobs, and the jobs themselves, without Redis or a worker
process: a pool and workers on an in-memory Redis (fakeredis), in the test's own loop.

With the pytest plugin (installed with the package) a test just asks for a harness; an
``async def`` test needs an async test plugin: anyio's comes with asyncjobs
(``@pytest.mark.anyio``), pytest-asyncio works too::

    @pytest.mark.anyio
    async def test_signup_sends_a_welcome_email(asyncjobs_harness):
        await signup(asyncjobs_harness.pool, "ada@example.com")   # your code enqueues
        [job] = await asyncjobs_harness.enqueued(send_welcome_email)
        assert job.args == ["ada@example.com"]
        await asyncjobs_harness.run_all([send_welcome_email])      # run it here, now
        assert outbox == ["ada@example.com"]

A FastAPI app that uses ``asyncjobs.fastapi.lifespan`` (or ``open_pool``) runs on the
harness's pool once attached: ``TestClient(asyncjobs_harness.attach(app))``. Its lifespan
then opens no Redis pool, and its endpoints' ``PoolDep`` is the harness's pool.
Needs the ``testing`` extra (``pip install -e ".[testing]"`` in a clone).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from ._model import JobInfo, JobState
from ._producer.handle import parse_record
from ._producer.pool import Pool
from ._redis.connection import ClientFactory
from ._redis.fake import fake_factory, fake_server
from ._redis.kept import decode as kept_record
from ._task import Task, as_task
from ._tasks import cancel_and_wait
from ._worker.worker import Worker
from .exceptions import CorruptJob

__all__ = ["Harness"]

_WAITING = (JobState.QUEUED, JobState.SCHEDULED)


class App(Protocol):
    """A Starlette or FastAPI app: what ``Harness.attach`` needs of it."""

    state: Any


AppT = TypeVar("AppT", bound=App)


class Harness:
    """An in-memory Redis, a pool on it, and ways to look at and run its jobs."""

    def __init__(self, *, prefix: str = "asyncjobs", queue: str = "default") -> None:
        self.server = fake_server()
        self.client_factory: ClientFactory = fake_factory(self.server)
        self.prefix = prefix
        self.pool = Pool(self.client_factory(max_connections=100, socket_timeout=None),
                         prefix=prefix, queue=queue, description="in-memory fake Redis")
        self._apps: list[App] = []

    def attach(self, app: AppT) -> AppT:
        """Give ``app`` this harness's pool, and return the app.

        Call it before the app starts (``TestClient(harness.attach(app))``): the app's
        ``asyncjobs.fastapi.lifespan`` then uses this pool instead of opening one on Redis,
        and ``PoolDep`` hands it to the endpoints. ``detach()`` (the pytest fixture does it
        at the end of the test) takes it away again."""
        app.state.asyncjobs = self.pool
        self._apps.append(app)
        return app

    def detach(self) -> None:
        """Take this harness's pool away from the apps it was attached to."""
        for app in self._apps:
            if getattr(app.state, "asyncjobs", None) is self.pool:
                del app.state.asyncjobs
        self._apps.clear()

    async def jobs(self, task: Task[Any, Any] | Callable[..., Any] | str | None = None, *,
                   queue: str | None = None,
                   states: Iterable[JobState] | None = None) -> list[JobInfo]:
        """Records of jobs on ``queue`` (of one task, in some states), oldest first."""
        self.pool._check_open()  # its client would connect again
        name = None if task is None else as_task(task).name
        wanted = None if states is None else set(states)
        keys = self.pool.keys(queue or self.pool.default_queue)
        found = []
        records: list[tuple[str, dict[bytes, bytes]]] = []
        async for key in self.pool.client.scan_iter(match=f"{keys.job_prefix}*", count=1000):
            raw: dict[bytes, bytes] = await self.pool.client.hgetall(key)  # type: ignore[assignment]
            records.append((key.decode()[len(keys.job_prefix):], raw))
        # Complete jobs whose results went to a shared hash (see ``kept``).
        async for key in self.pool.client.scan_iter(match=f"{keys.base}:kept:*", count=1000):
            kept: dict[bytes, bytes] = await self.pool.client.hgetall(key)  # type: ignore[assignment]
            for field, value in kept.items():
                try:
                    records.append((field.decode(), kept_record(value)))
                except ValueError as exc:
                    raise CorruptJob(field.decode(errors="replace"),
                                     f"its kept result in {key.decode()} cannot be read: "
                                     f"{exc}") from None
        for job_id, raw in records:
            info = parse_record(job_id, keys.queue, raw)
            if (name is None or info.task == name) and (wanted is None or info.state in wanted):
                found.append(info)
        return sorted(found, key=lambda i: (i.enqueued_at or 0, i.id))

    async def enqueued(self, task: Task[Any, Any] | Callable[..., Any] | str | None = None, *,
                       queue: str | None = None) -> list[JobInfo]:
        """Jobs waiting to run (queued or scheduled), oldest first."""
        return await self.jobs(task, queue=queue, states=_WAITING)

    def worker(self, tasks: Sequence[Task[Any, Any] | Callable[..., Any]],
               **options: Any) -> Worker:
        """A worker on this harness's Redis and prefix."""
        options.setdefault("prefix", self.prefix)
        options.setdefault("queues", [self.pool.default_queue])
        return Worker(tasks, **options)

    async def run_all(self, tasks: Sequence[Task[Any, Any] | Callable[..., Any]] | Worker, *,
                      fast_forward: bool = True, **options: Any) -> None:
        """Run every job until nothing is queued, running or delayed (burst mode), then
        return. With ``fast_forward`` delayed jobs and retries are due at once, so a
        test never waits for a delay or a backoff."""
        worker = tasks if isinstance(tasks, Worker) else self.worker(tasks, **options)
        runner = worker.configure(burst=True)
        stop = asyncio.Event()
        forward = (asyncio.create_task(self._fast_forward(runner, stop)) if fast_forward
                   else None)
        try:
            await runner.run(client_factory=self.client_factory)
        finally:
            stop.set()
            if forward is not None:
                await asyncio.wait([forward], timeout=1.0)
                await cancel_and_wait(forward)

    async def make_due(self, queue: str | None = None) -> int:
        """Make every delayed job of ``queue`` due now; returns how many."""
        self.pool._check_open()
        delayed = self.pool.keys(queue or self.pool.default_queue).delayed
        members: list[Any] = list(await self.pool.client.zrange(delayed, 0, -1))
        if members:
            due: dict[Any, float] = dict.fromkeys(members, 0)
            await self.pool.client.zadd(delayed, due, xx=True)
        return len(members)

    async def _fast_forward(self, worker: Worker, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for queue in worker.config.served:  # every priority level
                await self.make_due(queue)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.005):
                    await stop.wait()

    async def close(self) -> None:
        """Detach from the apps and close the pool."""
        self.detach()
        await self.pool.close()
