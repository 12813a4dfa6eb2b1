"""OpenTelemetry tracing: a job's span continues the trace that enqueued it.

Enable it with the ``otel`` extra (``pip install -e ".[otel]"`` in a clone; see the README,
Installing), and an OpenTelemetry SDK set up as usual::

    from asyncjobs.otel import OpenTelemetryMiddleware, instrument_pool

    instrument_pool(pool)            # producer: the current trace context travels with jobs
    worker = asyncjobs.Worker([send_email], middleware=[OpenTelemetryMiddleware()])

The producer's active span (a FastAPI request span, say) is injected into the job's headers
with the globally configured propagator (W3C ``traceparent`` / ``tracestate`` by default).
The worker extracts it and runs each attempt in a CONSUMER span ``asyncjobs <task>``, its
child. Jobs enqueued from inside a task (``ctx.pool``) carry that span on, so a whole chain
of jobs shares one trace.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ._middleware import Call, Middleware
from ._text import class_name, safe_str
from ._version import __version__
from .exceptions import ConfigurationError

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ConfigurationError(
        'asyncjobs tracing needs opentelemetry-api: install asyncjobs with its "otel" extra '
        '(pip install -e ".[otel]" in a clone; see the README, Installing)'
    ) from exc

if TYPE_CHECKING:
    from ._context import Context
    from ._producer.pool import Pool

MESSAGING_SYSTEM = "asyncjobs"
"""The ``messaging.system`` attribute of job spans."""


def trace_headers() -> dict[str, str]:
    """The current trace context as job headers (``traceparent``, ``tracestate``...);
    empty when no span is active."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def instrument_pool(pool: Pool) -> None:
    """Make every job enqueued through ``pool`` carry the current trace context.
    Calling it again on the same pool does nothing."""
    if not any(provider is trace_headers for provider in pool.header_providers):
        pool.header_providers.append(trace_headers)


def span_attributes(ctx: Context) -> dict[str, str | int]:
    """The attributes of an attempt's span (OpenTelemetry messaging conventions, plus
    ``asyncjobs.task`` and ``asyncjobs.attempt``)."""
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": ctx.queue,
        "messaging.message.id": ctx.job_id,
        "asyncjobs.task": ctx.task,
        "asyncjobs.attempt": ctx.attempt,
    }


class OpenTelemetryMiddleware(Middleware):
    """Runs each attempt in a CONSUMER span that continues the producer's trace.

    A task that raises gets an exception event and status ERROR on its span (the exception
    is re-raised unchanged); an attempt cancelled by its timeout, an abort or a shutdown
    gets status ERROR too. ``tracer_provider`` defaults to the global one.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("asyncjobs", __version__, tracer_provider=tracer_provider)

    async def around(self, ctx: Context, call_next: Call) -> Any:
        """Run the attempt inside its span (see the class docstring)."""
        instrument_pool(ctx.pool)
        parent = propagate.extract(ctx.headers)
        with self.tracer.start_as_current_span(
            f"asyncjobs {ctx.task}", context=parent, kind=SpanKind.CONSUMER,
            attributes=span_attributes(ctx), record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await call_next()
            except asyncio.CancelledError:
                span.set_status(Status(StatusCode.ERROR, "cancelled (timeout, abort or shutdown)"))
                raise
            except BaseException as exc:
                # The task's error stays the attempt's, whatever its own str() does.
                with contextlib.suppress(Exception):
                    span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR,
                                       f"{class_name(type(exc), '__name__')}: "
                                       f"{safe_str(exc, 500)}"))
                raise


__all__ = ["MESSAGING_SYSTEM", "OpenTelemetryMiddleware", "instrument_pool", "span_attributes",
           "trace_headers"]
