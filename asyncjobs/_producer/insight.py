"""What the dashboard and the CLI show beyond a queue's counts: outcomes per minute, the
scheduler's leader, and the cron jobs with their last and next runs. Pure parsing of what
``Admin`` reads (no I/O); anything unreadable is skipped or shown as absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._model import from_ms
from .._redis.keys import split_limit_name
from .._scheduling.cron import next_fire, schedule_from
from .deadletters import text, when
from .sources import whole


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """Jobs that ended in one minute (Redis clock), by outcome: complete, failed, retry,
    expired, aborted."""

    minute: datetime
    counts: dict[str, int]

    @property
    def failure_rate(self) -> float | None:
        """Failed attempts (retried or not) over finished attempts; None when none ended."""
        failed = self.counts.get("failed", 0) + self.counts.get("retry", 0)
        total = failed + self.counts.get("complete", 0)
        return failed / total if total else None


@dataclass(frozen=True, slots=True)
class ConcurrencyInfo:
    """One concurrency limit in use (``@task(concurrency_limit=N, concurrency_key=...)``):
    how many leases are held (jobs running under it, or held by a worker that died until
    their leases expire) and how many jobs wait for one."""

    task: str
    key: str
    """The job's ``concurrency_key`` ('' for the task-wide limit)."""
    limit: int
    """The N the last worker to use it declared."""
    running: int
    """Leases held and not expired."""
    waiting: int
    """Jobs deferred by the limit, waiting for a lease."""


def concurrency_infos(names: dict[Any, Any], counts: list[Any]) -> list[ConcurrencyInfo]:
    """The limits of a queue from its limits hash (name -> N) and, per name in its order,
    the live lease count and the waiting count; unreadable entries are skipped."""
    found = []
    for (raw_name, raw_limit), held, waiting in zip(names.items(), counts[::2], counts[1::2],
                                                    strict=True):
        task, key = split_limit_name(text(raw_name))
        limit = whole(text(raw_limit))
        if not task or limit is None:
            continue
        found.append(ConcurrencyInfo(task, key, limit,
                                     held if isinstance(held, int) else 0,
                                     waiting if isinstance(waiting, int) else 0))
    return sorted(found, key=lambda c: (c.task, c.key))


@dataclass(frozen=True, slots=True)
class CronInfo:
    """A cron job as the live workers publish it, with its cursor."""

    name: str
    task: str
    queue: str
    schedule: str
    """Described for people, e.g. "cron '*/5 * * * *' UTC" or "every 30s"."""
    last_tick: datetime | None
    """The last tick handled (enqueued, or skipped by the catch-up policy)."""
    next_tick: datetime | None
    """The next tick due, from the schedule and the cursor (None if unknown)."""
    last_job_id: str | None
    workers: int
    """Live workers that declare it."""


def minute_counts(minutes: list[int], replies: list[Any]) -> list[MinuteCounts]:
    """One ``MinuteCounts`` per minute (minutes since the epoch), from HGETALL replies."""
    out = []
    for minute, raw in zip(minutes, replies, strict=True):
        counts = {}
        if isinstance(raw, dict):
            for key, value in raw.items():
                number = whole(text(value))
                if number is not None:
                    counts[text(key)] = number
        out.append(MinuteCounts(from_ms(minute * 60_000), counts))
    return out


def holder(value: Any) -> str | None:
    """Who holds a leader lease, from its value (``<worker name>|<random part>``)."""
    if value is None:
        return None
    name = text(value).rpartition("|")[0]
    return name or None


def cron_infos(queue: str, published: list[Any], cursors: dict[Any, Any],
               now_ms: int) -> list[CronInfo]:
    """The cron jobs of ``queue`` declared by live workers (``published``: their registry
    records' ``crons`` lists), with the cron hash's cursors."""
    seen: dict[str, tuple[dict[str, Any], int]] = {}
    for crons in published:
        for record in crons if isinstance(crons, list) else []:
            if isinstance(record, dict) and record.get("queue") == queue and \
                    isinstance(record.get("name"), str):
                first, count = seen.get(record["name"], (record, 0))
                seen[record["name"]] = (first, count + 1)
    fields = {text(k): text(v) for k, v in cursors.items()}
    now = from_ms(now_ms)
    out = []
    for name, (record, workers) in sorted(seen.items()):
        cursor_ms = fields.get(name, "")
        last = when(cursor_ms)  # None for garbage, or a time no datetime can hold
        schedule = schedule_from(record)
        nxt = None
        if schedule is not None:
            try:
                nxt = next_fire(schedule, last, now)
            except Exception:  # a schedule that cannot be evaluated: next run unknown
                nxt = None
        out.append(CronInfo(name, str(record.get("task", "?")), queue,
                            str(record.get("schedule", "?")), last, nxt,
                            fields.get(f"{name}:job"), workers))
    return out
