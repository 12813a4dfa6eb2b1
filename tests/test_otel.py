"""OpenTelemetry: the producer's trace continues in the worker, and on to follow-up jobs."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import asyncjobs
from asyncjobs import Context
from asyncjobs.otel import OpenTelemetryMiddleware, instrument_pool, trace_headers

from .conftest import Backend


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider of the test's own (the global one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@asyncjobs.task(name="greet")
async def greet(ctx: Context, name: str) -> str:
    return f"hello {name}"


@asyncjobs.task(name="explode", max_tries=1)
async def explode(ctx: Context) -> None:
    raise ValueError("boom")


@asyncjobs.task(name="stall", max_tries=1, timeout=0.05)
async def stall(ctx: Context) -> None:
    await asyncio.sleep(10)


@asyncjobs.task(name="fan_out")
async def fan_out(ctx: Context) -> str:
    job = await ctx.pool.enqueue(greet.options(job_id=f"{ctx.job_id}:child"), "child")
    return job.id


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def by_job(spans: tuple[ReadableSpan, ...], job_id: str) -> ReadableSpan:
    found = [s for s in spans if (s.attributes or {}).get("messaging.message.id") == job_id]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_trace_headers_and_idempotent_instrumentation(
        tracing: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    assert trace_headers() == {}  # no active span: nothing to carry
    provider, _ = tracing
    with provider.get_tracer("test").start_as_current_span("request") as span:
        headers = trace_headers()
    ctx = span.get_span_context()
    assert ctx.trace_flags.sampled
    traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert headers == {"traceparent": traceparent}
    pool = asyncjobs.Pool(client=None, owns_client=False)  # type: ignore[arg-type]
    instrument_pool(pool)
    instrument_pool(pool)
    assert pool.header_providers == [trace_headers]


def test_missing_opentelemetry_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "asyncjobs.otel")
    with pytest.raises(asyncjobs.ConfigurationError,
                       match=r'its "otel" extra \(pip install -e "\.\[otel\]"'):
        importlib.import_module("asyncjobs.otel")


@pytest.mark.asyncio
async def test_worker_span_continues_the_producer_trace(
        backend: Backend, pool: asyncjobs.Pool,
        tracing: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = tracing
    instrument_pool(pool)
    with provider.get_tracer("test").start_as_current_span("POST /signup") as request:
        job = await pool.enqueue(greet, "ada")
        bad = await pool.enqueue(explode)
    untraced = await pool.enqueue(greet, "nobody")
    worker = backend.worker([greet, explode], burst=True,
                            middleware=[OpenTelemetryMiddleware(tracer_provider=provider)])
    await backend.run(worker)
    assert await job.result(timeout=5) == "hello ada"
    with pytest.raises(asyncjobs.JobFailed):
        await bad.result(timeout=5)
    await untraced.result(timeout=5)

    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["POST /signup", "asyncjobs explode",
                                             "asyncjobs greet", "asyncjobs greet"]
    origin = request.get_span_context()
    ok, failed, lone = (by_job(spans, j.id) for j in (job, bad, untraced))
    for span in (ok, failed):
        assert span.kind is SpanKind.CONSUMER
        assert span.context is not None and span.context.trace_id == origin.trace_id
        assert span.parent is not None and span.parent.span_id == origin.span_id
    assert dict(ok.attributes or {}) == {
        "messaging.system": "asyncjobs", "messaging.operation.type": "process",
        "messaging.destination.name": "default", "messaging.message.id": job.id,
        "asyncjobs.task": "greet", "asyncjobs.attempt": 1,
    }
    assert (ok.status.status_code, ok.events) == (StatusCode.UNSET, ())
    assert (failed.status.status_code, failed.status.description) == (
        StatusCode.ERROR, "ValueError: boom")
    assert [(e.name, dict(e.attributes or {}).get("exception.type"),
             dict(e.attributes or {}).get("exception.message")) for e in failed.events] == [
        ("exception", "ValueError", "boom")]
    assert lone.parent is None and lone.context is not None
    assert lone.context.trace_id != origin.trace_id  # a trace of its own


@pytest.mark.asyncio
async def test_follow_up_jobs_stay_in_the_trace(
        backend: Backend, pool: asyncjobs.Pool,
        tracing: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = tracing
    instrument_pool(pool)
    with provider.get_tracer("test").start_as_current_span("cron tick") as root:
        job = await pool.enqueue(fan_out)
    worker = backend.worker([fan_out, greet], burst=True,
                            middleware=[OpenTelemetryMiddleware(tracer_provider=provider)])
    await backend.run(worker)
    child_id = await job.result(timeout=5)
    assert await pool.job(child_id).result(timeout=5) == "hello child"

    spans = exporter.get_finished_spans()
    parent, child = one(spans, "asyncjobs fan_out"), one(spans, "asyncjobs greet")
    trace_id = root.get_span_context().trace_id
    assert parent.context is not None and child.context is not None
    assert parent.context.trace_id == child.context.trace_id == trace_id
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert child.attributes is not None and child.attributes["messaging.message.id"] == child_id
    assert isinstance(trace.get_current_span(), trace.NonRecordingSpan)  # nothing leaked


@pytest.mark.asyncio
async def test_timed_out_attempt_ends_its_span_in_error(
        backend: Backend, pool: asyncjobs.Pool,
        tracing: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = tracing
    job = await pool.enqueue(stall)
    await backend.run(backend.worker([stall], burst=True,
                                     middleware=[OpenTelemetryMiddleware(provider)]))
    with pytest.raises(asyncjobs.JobFailed) as failed:
        await job.result(timeout=5)
    assert failed.value.type == "asyncjobs.exceptions.JobTimeout"
    span = one(exporter.get_finished_spans(), "asyncjobs stall")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "cancelled (timeout, abort or shutdown)"
    assert span.end_time is not None and span.start_time is not None
    assert 0.03e9 <= span.end_time - span.start_time < 5e9  # loop timers may fire early
