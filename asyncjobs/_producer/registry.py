"""The worker registry as ``Admin.workers`` reads it: one JSON record per worker and a
sorted set of heartbeats scored with the Redis clock. Anything in it may have been written
by anyone: an entry that cannot be read is skipped, a field of the wrong type gets a
placeholder; nothing here raises. No I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._model import from_ms
from .._redis.keys import check_name

LIVE_WORKER_MS = 60_000
"""A worker whose latest heartbeat is older than this (Redis clock) is not live."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker, from its latest heartbeat."""

    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    running: int
    started_at: datetime
    """When it started, on the Redis clock (its own clock's uptime, counted back from
    ``last_beat``); ``last_beat`` when its entry has no usable start time."""
    last_beat: datetime
    """Its latest heartbeat, on the Redis clock (the registry's score), whatever the clock
    of its host says."""
    version: str
    tasks: list[str]
    stopping: bool = False
    """Shutting down: no longer taking jobs, finishing the ones it runs."""
    beat_age_s: float = 0.0
    """Seconds from ``last_beat`` to when this was read, on the Redis clock."""


def json_record(blob: Any) -> dict[str, Any] | None:
    """A registry record's JSON object; None when gone, not JSON, not UTF-8 or not an
    object."""
    try:
        data = json.loads(blob) if blob else None
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def time_ms(reply: Any) -> int:
    """A ``TIME`` reply in epoch milliseconds."""
    return int(reply[0]) * 1000 + int(reply[1]) // 1000


def valid_queue(name: str) -> bool:
    try:
        check_name("queue name", name)
    except ValueError:
        return False
    return True


def worker_info(name: str, blob: bytes | None, beat_ms: int, now_ms: int) -> WorkerInfo | None:
    """A registry entry as a ``WorkerInfo``; None when its JSON is gone or not an object.
    Fields of the wrong type get placeholders; queue names that are not valid are left out."""
    data = json_record(blob)
    if data is None:
        return None
    started, own_beat = _number(data.get("started")), _number(data.get("beat"))
    up_ms = 0 if started is None or own_beat is None else own_beat - started
    up_ms = min(max(up_ms, 0), beat_ms)  # both from the worker's clock: skew cancels out
    return WorkerInfo(
        name=name, host=_text(data.get("host")), pid=_number(data.get("pid")) or 0,
        queues=[q for q in _texts(data.get("queues")) if valid_queue(q)],
        concurrency=_number(data.get("concurrency")) or 0,
        running=_number(data.get("running")) or 0,
        started_at=from_ms(beat_ms - up_ms), last_beat=from_ms(beat_ms),
        version=_text(data.get("version")), tasks=_texts(data.get("tasks")),
        stopping=data.get("stopping") is True, beat_age_s=(now_ms - beat_ms) / 1000,
    )


def _number(value: Any) -> int | None:
    plain = isinstance(value, int | float) and not isinstance(value, bool)
    return int(value) if plain and math.isfinite(value) and abs(value) < 2**53 else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "?"


def _texts(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
