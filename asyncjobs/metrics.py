"""Prometheus metrics for a worker: job counters, durations, queue depths, worker liveness.

Enable them with the ``metrics`` extra (``pip install -e ".[metrics]"`` in a clone; see the
README, Installing) and a port::

    worker = asyncjobs.Worker([send_email], metrics_port=9100)
    # scrape http://<host>:9100/metrics

Each worker serves its own registry (never prometheus_client's global one). Job counters
and durations come from the worker's job events; queue and worker gauges are refreshed
every ``refresh_s`` seconds (5 by default, or ``$ASYNCJOBS_METRICS_REFRESH_S``; 0.01 s to
1 h). Queue gauges describe the whole queue, so every worker serving a queue reports the
same values: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol
from wsgiref.simple_server import WSGIServer

from redis.exceptions import RedisError

from ._durations import Seconds, to_seconds
from ._routing import split_level
from .exceptions import ConfigurationError, RedisUnavailable

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ConfigurationError(
        'asyncjobs metrics need prometheus_client: install asyncjobs with its "metrics" extra '
        '(pip install -e ".[metrics]" in a clone; see the README, Installing)'
    ) from exc

if TYPE_CHECKING:
    from ._events import JobEvent
    from ._producer.pool import Pool

log = logging.getLogger("asyncjobs.metrics")

REFRESH_ENV = "ASYNCJOBS_METRICS_REFRESH_S"
"""Environment variable that sets the default gauge refresh interval, in seconds."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)
"""Histogram buckets for job durations, in seconds: 5 ms to 10 min."""

EVENT_COUNTERS: Mapping[str, tuple[str, ...]] = {
    "started": ("started",),
    "complete": ("succeeded",),
    "retry": ("failed", "retried"),
    "failed": ("failed", "dead_lettered"),
    "expired": ("expired",),
    "aborted": ("aborted",),
    "interrupted": ("interrupted",),
    "rate_limited": ("rate_limited",),
    "concurrency_limited": ("concurrency_limited",),
}
"""Which ``asyncjobs_jobs_<name>_total`` counters each job event increments.

'retry' is an attempt that failed and will run again; 'failed' is a job dead-lettered (its
last attempt failed, or it could not run at all: unknown task, bad arguments, poison job).
So ``failed`` counts both, ``retried`` the first and ``dead_lettered`` the second."""

TIMED_EVENTS = frozenset({"complete", "retry", "failed"})
"""Events whose duration is observed in ``asyncjobs_job_duration_seconds``."""

_COUNTER_HELP = {
    "started": "Attempts started (the task was called).",
    "succeeded": "Attempts that completed successfully.",
    "failed": "Attempts that ended in an error, retried or not, plus jobs dead-lettered "
              "without running (unknown task, bad arguments, poison job).",
    "retried": "Failed attempts that were scheduled to run again.",
    "dead_lettered": "Jobs that failed for good and went to the dead-letter stream.",
    "expired": "Jobs dropped because they were not started before their expiry.",
    "aborted": "Jobs aborted (before or while running).",
    "interrupted": "Attempts cancelled by a shutdown or a lost entry (the job runs again).",
    "rate_limited": "Jobs deferred by their task's rate limit to a later slot (not counted "
                    "as attempts; each runs at its slot).",
    "concurrency_limited": "Jobs that found their task's concurrency limit full and wait "
                           "for a lease (not counted as attempts).",
}


def counters_for(event: str) -> tuple[str, ...]:
    """The counter names (``started``, ``failed``...) that ``event`` increments; () if none."""
    return EVENT_COUNTERS.get(event, ())


REFRESH_LEAST_S = 0.01
"""The shortest gauge refresh interval (a shorter one would have the worker refresh in a
loop, a Redis round trip each time)."""

REFRESH_MOST_S = 3600.0
"""The longest gauge refresh interval (1 h; ``inf`` would freeze the gauges)."""


def refresh_interval(value: Seconds | None = None) -> float:
    """``value`` (seconds or a ``timedelta``), else ``$ASYNCJOBS_METRICS_REFRESH_S``, else
    5 s; it must be positive, from 0.01 s to 1 h. A bad value, given or in the environment,
    raises ``ConfigurationError`` naming ``refresh_s`` or the variable (at the worker's
    start-up), never falls back to the default."""
    name = REFRESH_ENV if value is None else "refresh_s"
    raw: object = os.environ.get(REFRESH_ENV, "") if value is None else value
    if isinstance(raw, str):
        try:
            seconds = 5.0 if raw == "" else float(raw)
        except ValueError:
            bad = f"{name} must be a number of seconds, not {raw!r:.80}"
            raise ConfigurationError(bad) from None
    else:
        try:
            seconds = to_seconds(value, name) or 0.0
        except (TypeError, ValueError) as exc:  # its message names refresh_s
            raise ConfigurationError(str(exc)) from None
    if not REFRESH_LEAST_S <= seconds <= REFRESH_MOST_S:  # NaN fails this too
        raise ConfigurationError(f"{name} (the metrics refresh interval) must be positive, "
                                 f"from {REFRESH_LEAST_S:g} s to 1 h, not {raw!r:.80}")
    return seconds


class Busy(Protocol):
    """What ``run`` needs of the worker's executor."""

    @property
    def active(self) -> int:
        """Attempts running now."""
        ...


UNKNOWN_TASK = "unknown"
"""The task label of jobs whose task is not registered on the worker."""


class WorkerMetrics:
    """One worker's Prometheus metrics: an observer of its job events, a refresh loop for
    its gauges (``run``), and an HTTP endpoint (``serve``)."""

    def __init__(self, *, worker: str, queues: Sequence[str], concurrency: int,
                 registry: CollectorRegistry | None = None,
                 refresh_s: Seconds | None = None, tasks: Iterable[str] | None = None) -> None:
        self.worker = worker
        self.queues = tuple(queues)
        self.tasks: frozenset[str] | None = None if tasks is None else frozenset(tasks)
        """Task names used as labels; any other name (a job naming a task this worker does
        not know: data from Redis) is counted under ``unknown``, so untrusted data cannot
        create series. None: every name is a label."""
        self.refresh_s = refresh_interval(refresh_s)
        """Seconds between gauge refreshes (argument, else the environment, else 5)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.port: int | None = None
        """The port ``serve`` bound (useful with port 0); None before ``serve`` and after
        ``close``."""
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.counters = {
            name: Counter(f"asyncjobs_jobs_{name}_total", text, ["queue", "task"],
                          registry=self.registry)
            for name, text in _COUNTER_HELP.items()
        }
        self.duration = Histogram(
            "asyncjobs_job_duration_seconds", "Duration of finished attempts (complete, retry, "
            "failed).", ["queue", "task"], buckets=DURATION_BUCKETS, registry=self.registry)
        self._build_gauges()
        self.concurrency.labels(worker=worker).set(concurrency)
        self.running.labels(worker=worker).set(0)

    def _build_gauges(self) -> None:
        def gauge(name: str, text: str, label: str) -> Gauge:
            return Gauge(name, text, [label], registry=self.registry)

        q = "queue"
        self.waiting = gauge("asyncjobs_queue_waiting_jobs", "Jobs in the stream, not yet "
                             "delivered to a worker.", q)
        self.in_flight = gauge("asyncjobs_queue_in_flight_jobs", "Jobs delivered to a worker "
                               "and not settled (running, or held by a dead worker).", q)
        self.delayed = gauge("asyncjobs_queue_delayed_jobs", "Jobs waiting for a due time "
                             "(delayed jobs and retries).", q)
        self.dead = gauge("asyncjobs_queue_dead_letters", "Entries in the dead-letter "
                          "stream.", q)
        self.oldest = gauge("asyncjobs_queue_oldest_waiting_age_seconds", "Age of the oldest "
                            "waiting job (0 when nothing waits).", q)
        self.leader = gauge("asyncjobs_scheduler_leader", "1 while this worker's scheduler "
                            "leads the queue (promotes delayed jobs and retries, fires cron "
                            "ticks), else 0: across workers, max is 1 when a leader exists.",
                            q)
        self.trimmed = gauge("asyncjobs_queue_dead_letters_trimmed", "Dead letters removed "
                             "by the retention limits (count and age) since the queue was "
                             "created, with their jobs' records (a total kept in Redis).", q)
        self.max_length = gauge("asyncjobs_queue_max_length", "The queue's maximum length "
                                "(waiting, in flight and delayed jobs; 0: no maximum).", q)
        self.refused = gauge("asyncjobs_queue_enqueues_refused", "Jobs a full queue refused "
                             "(QueueFull) since the queue was created (a total kept in "
                             "Redis, like trimmed dead letters: rate() it).", q)
        self.limit_running = Gauge(
            "asyncjobs_concurrency_running_jobs", "Leases held of the concurrency limits of a "
            "task (summed over its concurrency keys): jobs running under them.",
            ["queue", "task"], registry=self.registry)
        self.limit_waiting = Gauge(
            "asyncjobs_concurrency_waiting_jobs", "Jobs waiting for a lease of a task's "
            "concurrency limits (summed over its concurrency keys).", ["queue", "task"],
            registry=self.registry)
        self._limit_labels: set[tuple[str, str]] = set()
        self.running = gauge("asyncjobs_worker_running_jobs", "Attempts this worker is "
                             "running.", "worker")
        self.memory = gauge("asyncjobs_redis_memory_used_ratio", "Redis used_memory over "
                            "maxmemory (0 without a maxmemory): at 1 enqueues fail with "
                            "RedisFull until workers drain the queues.", "worker")
        self.concurrency = gauge("asyncjobs_worker_concurrency", "Jobs this worker may run "
                                 "at once.", "worker")
        self.heartbeat = gauge("asyncjobs_worker_last_heartbeat_timestamp_seconds", "Unix "
                               "time of this worker's last metrics refresh.", "worker")

    def job_event(self, event: JobEvent) -> None:
        """Count one job event (the worker's executor calls this; see ``EVENT_COUNTERS``)."""
        self.count(event.kind, event.queue, event.task, event.duration_s)

    def count(self, kind: str, queue: str, task: str, duration_s: float = 0.0) -> None:
        """Count one event of ``kind`` for ``task`` on ``queue``."""
        if self.tasks is not None and task not in self.tasks:
            task = UNKNOWN_TASK
        for name in counters_for(kind):
            self.counters[name].labels(queue=queue, task=task).inc()
        if kind in TIMED_EVENTS and duration_s > 0:
            self.duration.labels(queue=queue, task=task).observe(duration_s)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread (port 0: any free port,
        then read ``self.port``)."""
        if self._server is not None:
            raise RuntimeError(f"metrics are already served on port {self.port}")
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP endpoint (blocks up to half a second); harmless if not serving."""
        server, thread = self._server, self._thread
        self._server = self._thread = self.port = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    async def run(self, pool: Pool, executor: Busy) -> None:
        """Refresh the gauges every ``refresh_s`` seconds, forever; closes the endpoint when
        cancelled (the worker stopping). Redis errors are logged at debug level only."""
        try:
            while True:
                await self.refresh(pool, executor)
                _stop_if_cancelled()
                await asyncio.sleep(self.refresh_s)
        except asyncio.CancelledError:
            self.close()
            raise

    async def refresh(self, pool: Pool, executor: Busy) -> None:
        """Set the worker gauges, then the queue gauges from ``pool.admin.queue_stats``."""
        self.running.labels(worker=self.worker).set(executor.active)
        self.heartbeat.labels(worker=self.worker).set(time.time())
        try:
            used = await pool.admin.memory_used()
        except (RedisUnavailable, RedisError, OSError) as exc:
            log.debug("metrics: cannot read Redis's memory: %s", exc)
        else:
            self.memory.labels(worker=self.worker).set(used or 0.0)
        limited: set[str] = set()
        for queue in self.queues:
            try:
                stats = await pool.admin.queue_stats(queue)
            except (RedisUnavailable, RedisError, OSError) as exc:
                log.debug("metrics: cannot read queue %s: %s", queue, exc)
                continue
            self.waiting.labels(queue=queue).set(stats.waiting)
            self.in_flight.labels(queue=queue).set(stats.in_flight)
            self.delayed.labels(queue=queue).set(stats.delayed)
            self.dead.labels(queue=queue).set(stats.dead)
            self.oldest.labels(queue=queue).set(stats.oldest_waiting_s or 0.0)
            self.trimmed.labels(queue=queue).set(stats.counters.get("trimmed", 0))
            self.max_length.labels(queue=queue).set(stats.max_length or 0)
            self.refused.labels(queue=queue).set(stats.counters.get("refused", 0))
            base = split_level(queue)[0]  # a queue's limits hold for all its priority levels
            if base not in limited:
                limited.add(base)
                await self._refresh_limits(pool, base)
            try:
                leads = await pool.admin.leader(queue) == self.worker
            except (RedisUnavailable, RedisError, OSError):
                continue
            self.leader.labels(queue=queue).set(1 if leads else 0)

    async def _refresh_limits(self, pool: Pool, queue: str) -> None:
        """Set the concurrency gauges of ``queue`` (a base queue: its priority levels share
        its limits, so they are shown once, under its name); a limit gone since the last
        refresh reads 0."""
        try:
            limits = await pool.admin.concurrency(queue)
        except (RedisUnavailable, RedisError, OSError) as exc:
            log.debug("metrics: cannot read the concurrency limits of %s: %s", queue, exc)
            return
        sums: dict[tuple[str, str], tuple[int, int]] = {}
        for c in limits:
            task = c.task if self.tasks is None or c.task in self.tasks else UNKNOWN_TASK
            held, waiting = sums.get((queue, task), (0, 0))
            sums[(queue, task)] = (held + c.running, waiting + c.waiting)
        gone = {k for k in self._limit_labels if k[0] == queue} - set(sums)
        for q, task in gone:
            sums[(q, task)] = (0, 0)
        for (q, task), (held, waiting) in sums.items():
            self.limit_running.labels(queue=q, task=task).set(held)
            self.limit_waiting.labels(queue=q, task=task).set(waiting)
        self._limit_labels = (self._limit_labels | set(sums)) - gone


def _stop_if_cancelled() -> None:
    """Raise the cancellation of the current task if a client swallowed it (on Python 3.11,
    fakeredis's ``wait_for`` returns a reply that came as the cancellation did): the refresh
    loop stops all the same instead of waiting for a cancellation that never comes again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


__all__ = ["DURATION_BUCKETS", "EVENT_COUNTERS", "REFRESH_ENV", "TIMED_EVENTS", "Busy",
           "WorkerMetrics", "counters_for", "refresh_interval"]

