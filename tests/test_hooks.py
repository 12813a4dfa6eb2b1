"""Job middleware, job-event observers and header providers, on both backends."""

from __future__ import annotations

from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._middleware import Call, Middleware

from .conftest import Backend

pytestmark = pytest.mark.asyncio


class Recorder(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def before(self, ctx: Context) -> None:
        self.log.append(f"{self.name}.before")

    async def around(self, ctx: Context, call_next: Call) -> Any:
        self.log.append(f"{self.name}.enter")
        try:
            return await call_next()
        finally:
            self.log.append(f"{self.name}.exit")

    async def after(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        self.log.append(f"{self.name}.after:{result if error is None else type(error).__name__}")


async def test_middleware_wraps_each_attempt_in_order(backend: Backend,
                                                      pool: asyncjobs.Pool) -> None:
    log: list[str] = []

    @asyncjobs.task(name="work", max_tries=1)
    async def work(ctx: Context, fail: bool) -> int:
        log.append("task")
        if fail:
            raise KeyError("x")
        return 7

    ok = await pool.enqueue(work, False)
    await backend.run(backend.worker([work], burst=True, concurrency=1,
                                     middleware=[Recorder("a", log), Recorder("b", log)]))
    assert await ok.result(timeout=5) == 7
    assert log == ["a.before", "b.before", "a.enter", "b.enter", "task", "b.exit", "a.exit",
                   "b.after:7", "a.after:7"]
    log.clear()
    bad = await pool.enqueue(work, True)
    await backend.run(backend.worker([work], burst=True, middleware=[Recorder("a", log)]))
    with pytest.raises(asyncjobs.JobFailed):
        await bad.result(timeout=5)
    assert log == ["a.before", "a.enter", "task", "a.exit", "a.after:KeyError"]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def job_event(self, event: str, queue: str, task: str, duration_s: float) -> None:
        assert duration_s >= 0
        self.seen.append((event, queue, task))


async def test_observers_hear_every_outcome(backend: Backend, pool: asyncjobs.Pool) -> None:
    @asyncjobs.task(name="flaky", max_tries=2, backoff=0)
    async def flaky(ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ValueError("once")

    @asyncjobs.task(name="doomed", max_tries=1)
    async def doomed(ctx: Context) -> None:
        raise ValueError("always")

    await pool.enqueue(flaky)
    await pool.enqueue(doomed)
    await pool.enqueue("nobody_knows_me")
    await pool.enqueue(flaky.options(expires=0.001))
    aborted = await pool.enqueue(flaky)
    await aborted.abort()
    events = Events()

    class Broken:
        def job_event(self, event: str, queue: str, task: str, duration_s: float) -> None:
            raise RuntimeError("observers must not break jobs")

    import asyncio

    await asyncio.sleep(0.01)
    await backend.run(backend.worker([flaky, doomed], burst=True, observers=[Broken(), events]))
    seen = sorted(events.seen)
    assert seen == sorted([
        ("started", "default", "flaky"), ("retry", "default", "flaky"),
        ("started", "default", "flaky"), ("complete", "default", "flaky"),
        ("started", "default", "doomed"), ("failed", "default", "doomed"),
        ("failed", "default", "nobody_knows_me"),
        ("expired", "default", "flaky"),
    ])


async def test_header_providers_travel_with_the_job(backend: Backend,
                                                    pool: asyncjobs.Pool) -> None:
    @asyncjobs.task(name="headers")
    async def headers(ctx: Context) -> dict[str, str]:
        return ctx.headers

    pool.header_providers.append(lambda: {"traceparent": "00-abc-def-01", "tenant": "a"})
    job = await pool.enqueue(headers.options(headers={"tenant": "b"}))
    await backend.run(backend.worker([headers], burst=True))
    assert await job.result(timeout=5) == {"traceparent": "00-abc-def-01", "tenant": "b"}
