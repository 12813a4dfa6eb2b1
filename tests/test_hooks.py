"""Job middleware, job-event observers and header providers, on both backends."""

from __future__ import annotations

from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._middleware import Call, Middleware

from .conftest import Backend

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]


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
        self.events: list[asyncjobs.JobEvent] = []

    def job_event(self, event: asyncjobs.JobEvent) -> None:
        assert event.duration_s >= 0
        self.seen.append((event.kind, event.queue, event.task))
        self.events.append(event)


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
        def job_event(self, event: asyncjobs.JobEvent) -> None:
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


async def test_job_events_carry_the_job(backend: Backend, pool: asyncjobs.Pool) -> None:
    """Each event names its job: id, attempt, arguments (decoded when read), the error
    with its traceback, the retry delay, the result's presence, headers, timings."""

    @asyncjobs.task(name="charge", max_tries=2, backoff=0.01)
    async def charge(ctx: Context, payment: str, *, cents: int) -> str:
        if ctx.attempt == 1:
            raise ConnectionError(f"gateway down for {payment}")
        return "ok"

    @asyncjobs.task(name="refund", max_tries=1)
    async def refund(ctx: Context, payment: str) -> None:
        raise ValueError(f"no such payment {payment}")

    ok = await pool.enqueue(charge.options(headers={"tenant": "acme"}), "pay-1", cents=500)
    bad = await pool.enqueue(refund, "pay-2")
    events = Events()
    await backend.run(backend.worker([charge, refund], burst=True, observers=[events]))
    by_job: dict[str, list[asyncjobs.JobEvent]] = {}
    for e in events.events:
        by_job.setdefault(e.job_id, []).append(e)
    assert [e.kind for e in by_job[ok.id]] == ["started", "retry", "started", "complete"]
    started, retry, _, complete = by_job[ok.id]
    assert (started.attempt, retry.attempt, complete.attempt) == (1, 1, 2)
    assert retry.args == ["pay-1"] and retry.kwargs == {"cents": 500}
    assert retry.headers == {"tenant": "acme"} and retry.queue == "default"
    assert retry.error is not None and retry.error.type == "builtins.ConnectionError"
    assert retry.error.message == "gateway down for pay-1" and "raise ConnectionError" in (
        retry.error.traceback or "")
    assert retry.retry_in_s is not None and 0 <= retry.retry_in_s <= 1
    assert not retry.final and not retry.has_result
    assert complete.final and complete.has_result and complete.error is None
    assert complete.duration_s > 0 and started.duration_s == 0
    [_, failed] = by_job[bad.id]
    assert failed.kind == "failed" and failed.final and failed.args == ["pay-2"]
    assert failed.error is not None and failed.error.message == "no such payment pay-2"
    assert failed.reason == "raised ValueError on try 1 of 1"


async def test_a_dead_letter_alert_callback(backend: Backend, pool: asyncjobs.Pool) -> None:
    """The README's alert: page on-call once a payment's last attempt failed, naming it."""
    pages: list[str] = []

    class PageOnCall:
        def job_event(self, event: asyncjobs.JobEvent) -> None:
            if event.kind == "failed" and event.task == "charge":
                error = event.error.message if event.error else event.reason
                pages.append(f"payment {event.args[0]} failed for good: {error}")

    @asyncjobs.task(name="charge", max_tries=3, backoff=0)
    async def charge(ctx: Context, payment: str) -> None:
        raise ConnectionError("card declined")

    await pool.enqueue(charge, "pay-9")
    await backend.run(backend.worker([charge], burst=True, observers=[PageOnCall()]))
    assert pages == ["payment pay-9 failed for good: card declined"]


async def test_events_of_a_job_that_cannot_be_read(backend: Backend,
                                                   pool: asyncjobs.Pool) -> None:
    """A job whose spec is garbage is dead-lettered with an event all the same: no task,
    no arguments, and reading them never raises."""
    job = await pool.enqueue("mystery", 1)
    await pool.client.hset(pool.keys("default").job(job.id), "j", b"\xc1garbage")
    events = Events()
    await backend.run(backend.worker([], burst=True, observers=[events]))
    [event] = [e for e in events.events if e.job_id == job.id]
    assert event.kind == "failed" and event.final and event.reason
    assert event.args == [] and event.kwargs == {}
    assert event.task == "" and event.error is not None
    assert event.error.type == "asyncjobs.UndecodablePayload"


async def test_an_observer_in_the_old_form_is_refused_with_the_way_to_port_it() -> None:
    class Old:
        def job_event(self, event: str, queue: str, task: str, duration_s: float) -> None:
            pass

    with pytest.raises(asyncjobs.ConfigurationError, match=r"must take one JobEvent"):
        asyncjobs.Worker([], observers=[Old()])  # type: ignore[list-item]
    with pytest.raises(asyncjobs.ConfigurationError, match=r"no job_event"):
        asyncjobs.Worker([], observers=[object()])  # type: ignore[list-item]


async def test_middleware_sees_the_arguments(backend: Backend, pool: asyncjobs.Pool) -> None:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    class Audit(Middleware):
        async def before(self, ctx: Context) -> None:
            seen.append((ctx.args, ctx.kwargs))

    @asyncjobs.task(name="work")
    async def work(ctx: Context, a: int, *, b: str) -> None:
        pass

    await pool.enqueue(work, 1, b="x")
    await backend.run(backend.worker([work], burst=True, middleware=[Audit()]))
    assert seen == [((1,), {"b": "x"})]
