"""Turning records and stats into tables for people, or JSON for scripts (the CLI's output)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from ._admin import DeadLetter, QueueStats, WorkerInfo
from ._model import JobInfo


def to_json(value: Any) -> str:
    """JSON for dataclasses, datetimes, enums and msgspec structs."""
    return json.dumps(_plain(value), indent=2, default=str)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__struct_fields__"):
        return {f: _plain(getattr(value, f)) for f in value.__struct_fields__}
    return value


def _age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return _duration(seconds) + " ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def queues_table(stats: list[QueueStats]) -> Table:
    """One row per queue."""
    table = Table(title="queues")
    for column in ("queue", "waiting", "in flight", "delayed", "dead", "oldest waiting",
                   "complete", "failed", "retried"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for s in stats:
        c = s.counters
        table.add_row(s.queue, str(s.waiting), str(s.in_flight), str(s.delayed), str(s.dead),
                      _duration(s.oldest_waiting_s), str(c.get("complete", 0)),
                      str(c.get("failed", 0)), str(c.get("retry", 0)))
    return table


def workers_table(workers: list[WorkerInfo]) -> Table:
    """One row per live worker."""
    table = Table(title="workers")
    for column in ("name", "host", "pid", "queues", "concurrency", "running", "up",
                   "last heartbeat"):
        table.add_column(column)
    for w in workers:
        up = _duration((datetime.now(UTC) - w.started_at).total_seconds())
        table.add_row(w.name, w.host, str(w.pid), ",".join(w.queues), str(w.concurrency),
                      str(w.running), up, _age(w.last_beat))
    return table


def dead_table(letters: list[DeadLetter]) -> Table:
    """One row per dead letter."""
    table = Table(title="dead letters")
    for column in ("job id", "when", "reason"):
        table.add_column(column, overflow="fold")
    for d in letters:
        table.add_row(d.job_id or f"(entry {d.entry})", _age(d.at), d.reason)
    return table


def print_job(console: Console, info: JobInfo) -> None:
    """A job's whole record, for people."""
    table = Table(show_header=False, title=f"job {info.id}")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("queue", info.queue), ("task", info.task), ("state", info.state.value),
        ("args", info.args), ("kwargs", info.kwargs), ("attempts", info.attempts),
        ("enqueued", info.enqueued_at), ("scheduled for", info.scheduled_for),
        ("started", info.started_at), ("ended", info.ended_at), ("expires", info.expires_at),
        ("worker", info.worker), ("dead-letter reason", info.dead_letter_reason),
        ("result", info.result),
    ]
    if info.progress:
        rows.append(("progress", f"{info.progress.value:g} {info.progress.message}"))
    for name, value in rows:
        if value not in (None, "", {}, []) or name in ("args", "state"):
            table.add_row(name, value.isoformat() if isinstance(value, datetime) else repr(value)
                          if not isinstance(value, str) else value)
    console.print(table)
    for error in info.errors:
        console.print(f"[bold]attempt {error.attempt}[/] {error.at.isoformat()} "
                      f"[red]{error.type}[/]: {error.message}")
        if error.traceback:
            console.print(error.traceback.rstrip(), markup=False, highlight=False)
