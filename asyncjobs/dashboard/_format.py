"""How values are shown: times, ages, numbers, job arguments and results, a job's
timeline. Pure; the templates call these as filters. Escaping is Jinja's (autoescape): these
return plain text, never markup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .._model import ErrorInfo, JobInfo, from_ms
from .._options import MAX_JOB_ID
from .._text import safe_str

MAX_SHOWN = 20_000
"""Characters of one argument, result or traceback shown, at most."""


def when(moment: datetime | None) -> str:
    """``2026-11-21 15:52:33`` (UTC), or an em dash."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def seconds(value: float | None) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 min``, ``2.5 h``, ``3 d``."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.0f} min"
    if value < 86400:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.0f} d"


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``12.3 s ago`` / ``in 4 min``."""
    if moment is None:
        return "—"
    delta = ((now or datetime.now(UTC)) - moment).total_seconds()
    return f"{seconds(delta)} ago" if delta >= 0 else f"in {seconds(-delta)}"


def number(value: int | float | None) -> str:
    """``1,000,000``."""
    return "—" if value is None else f"{value:,}"


def percent(value: float | None) -> str:
    """``12.5 %``."""
    return "—" if value is None else f"{value * 100:.1f} %"


def shown(value: Any) -> str:
    """A decoded value as readable text (JSON-like), cut at ``MAX_SHOWN`` characters."""
    try:
        body = json.dumps(value, indent=2, ensure_ascii=False, default=safe_str)
    except (TypeError, ValueError, RecursionError):
        body = safe_str(value)
    return cut(body)


def cut(body: str, limit: int = MAX_SHOWN) -> str:
    """``body``, cut at ``limit`` characters with a note."""
    return body if len(body) <= limit else f"{body[:limit]}\n… ({len(body) - limit} more)"


def job_id(value: str) -> str:
    """A job id read from Redis, as shown and linked: one longer than any job's (damaged or
    hand-written data) is cut, and stays longer than any, so it can name no other job
    (actions refuse it)."""
    return value if len(value) <= MAX_JOB_ID else f"{value[:MAX_JOB_ID]}…"


def failed_at(error: ErrorInfo) -> datetime | None:
    """When an attempt failed; None when its time is garbage no ``datetime`` can hold."""
    try:
        return from_ms(error.at_ms)
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a job's timeline."""

    at: datetime | None
    """None for a time that cannot be read: such events come last."""
    what: str
    detail: str = ""


def timeline(info: JobInfo) -> list[Event]:
    """What happened to a job, in order: enqueued, failed attempts, started, scheduled,
    ended."""
    events = []
    if info.enqueued_at:
        events.append(Event(info.enqueued_at, "enqueued"))
    for error in info.errors:
        events.append(Event(failed_at(error), f"attempt {error.attempt} failed",
                            f"{error.type}: {safe_str(error.message, 200)}"))
    if info.started_at:
        events.append(Event(info.started_at, f"attempt {info.attempts} started",
                            info.worker or ""))
    if info.scheduled_for and info.state.value == "scheduled":
        events.append(Event(info.scheduled_for, "due"))
    if info.ended_at:
        events.append(Event(info.ended_at, info.state.value, info.dead_letter_reason or ""))
    return sorted(events, key=lambda e: (e.at is None, e.at or _EPOCH))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


FILTERS = {"when": when, "seconds": seconds, "ago": ago, "number": number,
           "percent": percent, "shown": shown, "cut": cut, "failed_at": failed_at,
           "job_id": job_id}
"""Registered as Jinja filters."""
