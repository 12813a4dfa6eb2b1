"""Turning records and stats into tables for people, or JSON for scripts (the CLI's output).

Everything shown comes from Redis, that is from any producer: it is never read as rich
markup (cells are ``Text``, not markup strings) and its control characters are escaped
(``\\x1b``, ``\\n``), so a job's data cannot crash the CLI, restyle the terminal or start a
line of its own. JSON output is the raw data (``json.dumps`` escapes control characters),
as strict JSON: a float NaN or infinity (in a job's arguments, result or progress data) is
written as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, never as the bare word
Python's ``json`` writes, which strict parsers (``jq``, ``JSON.parse``) refuse.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import typer.core
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from .._model import JobInfo
from .._producer.admin import QueueStats
from .._producer.deadletters import DeadLetter, RequeueReport
from .._producer.insight import ConcurrencyInfo
from .._producer.listing import JobRow
from .._producer.registry import WorkerInfo
from .._text import clean


def to_json(value: Any) -> str:
    """Strict JSON for dataclasses, datetimes, enums and msgspec structs: a NaN or an
    infinity, which JSON has no number for, is the string ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` (``non_finite``)."""
    return json.dumps(_plain(value), indent=2, default=str, allow_nan=False)


def non_finite(number: float) -> str:
    """How JSON output writes a float NaN or infinity: ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` (as JavaScript's ``String(x)``, Jackson's and Gson's writers do)."""
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def _plain(value: Any) -> Any:
    if isinstance(value, float):  # as an exact float: a subclass's methods are not asked
        number = float.__float__(value)
        return number if math.isfinite(number) else non_finite(number)
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


class Command(typer.core.TyperCommand):
    """A command whose flags show no ``<bool>`` value in ``--help`` (they take none)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_type(super().get_params(ctx))


class Group(typer.core.TyperGroup):
    """A group whose flags show no ``<bool>`` value in ``--help``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_type(super().get_params(ctx))


def _flags_without_type(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # typer shows the metavar, when set, instead of the type
    return params


def safe(text: str) -> str:
    """``text`` as one line with no control character (escaped as ``\\x1b``, ``\\n``...);
    text that has none is returned as it is."""
    return text if text.isprintable() else clean(text)


def _cell(text: str, style: str = "") -> Text:
    """A table cell or a line: never markup, never a control character."""
    return Text(safe(text), style=style)


def _lines(text: str) -> Text:
    """Several lines (a traceback): each made safe, the line breaks kept."""
    return Text("\n".join(safe(line) for line in text.split("\n")))


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


_N = "#"  # marks a column of numbers: right-aligned, never cut or wrapped


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    """A table whose text columns fold long values onto more lines, and whose number
    columns (named with a leading ``#``) are as wide as their widest value: at 80 columns
    a name and a count stay whole. The title is never markup (it may hold a queue name)."""
    table = Table(title=_cell(title))
    for i, column in enumerate(columns):
        if column.startswith(_N):
            header = column[1:]
            widest = max(len(part) for part in [*header.split(), *(row[i] for row in rows)])
            table.add_column(header, justify="right", no_wrap=True, min_width=widest)
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(v if c.startswith(_N) else _cell(v) for c, v in zip(columns, row,
                                                                          strict=True)))
    return table


def queues_table(stats: list[QueueStats]) -> Table:
    """One row per queue: what waits and runs."""
    rows = [[s.queue, str(s.waiting), str(s.in_flight), str(s.delayed), str(s.dead),
             _duration(s.oldest_waiting_s), "-" if s.max_length is None else str(s.max_length)]
            for s in stats]
    return _table("queues", ["queue", "#waiting", "#in flight", "#delayed", "#dead",
                             "#oldest waiting", "#max"], rows)


def totals_table(stats: list[QueueStats]) -> Table:
    """One row per queue: its counters since it was created."""
    names = ("enqueued", "complete", "failed", "retry")
    rows = [[s.queue, *(str(s.counters.get(k, 0)) for k in names)] for s in stats]
    return _table("totals", ["queue", "#enqueued", "#complete", "#failed", "#retried"], rows)


def concurrency_table(limits: dict[str, list[ConcurrencyInfo]]) -> Table:
    """One row per concurrency limit in use: leases held of N, jobs waiting."""
    rows = [[queue, c.task, c.key, f"{c.running}/{c.limit}", str(c.waiting)]
            for queue, found in limits.items() for c in found]
    return _table("concurrency limits", ["queue", "task", "key", "#running", "#waiting"],
                  rows)


def workers_table(workers: list[WorkerInfo]) -> Table:
    """One row per live worker."""
    rows = [[w.name, w.host, str(w.pid), ",".join(w.queues), f"{w.running}/{w.concurrency}",
             _duration((w.last_beat - w.started_at).total_seconds() + w.beat_age_s),
             _duration(w.beat_age_s) + " ago"] for w in workers]
    return _table("workers", ["name", "host", "#pid", "queues", "#jobs", "#up", "#last beat"],
                  rows)


def dead_table(letters: list[DeadLetter]) -> Table:
    """One row per dead letter."""
    rows = [[d.job_id or f"(entry {d.entry})", _age(d.at), d.reason] for d in letters]
    return _table("dead letters", ["job id", "#when", "reason"], rows)


def jobs_table(title: str, rows: list[JobRow], *, worker: bool = False) -> Table:
    """One row per listed job: id, task, state, tries, when, progress, error (and the
    worker holding it, for running jobs)."""
    def progress(job: JobRow) -> str:
        p = job.progress
        if p is None:
            return ""
        detail = p.message or (_one_line_json(p.data)
                               if p.data is not None else "")
        detail = detail if len(detail) <= 40 else detail[:39] + "\u2026"
        return f"{p.value:g} {detail}".strip()

    columns = ["job id", "task", "state", "#tries", "#when", *(["worker"] if worker else []),
               "progress", "error"]
    cells = [[j.job_id, j.task, j.state, str(j.attempts), _age(j.ended_at or j.at),
              *([j.worker or ""] if worker else []), progress(j),
              j.reason or j.error_type or ""] for j in rows]
    return _table(title, columns, cells)


def print_job(console: Console, info: JobInfo) -> None:
    """A job's whole record, for people."""
    table = Table(show_header=False, title=_cell(f"job {info.id}"))
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in _job_rows(info):
        if value not in (None, "", {}, []) or name in ("args", "state"):
            table.add_row(name, _cell(_value(value)))
    console.print(table)
    for error in info.errors:
        console.print(Text.assemble(
            (f"attempt {error.attempt}", "bold"), f" {error.at.isoformat()} ",
            _cell(error.type, "red"), ": ", _cell(error.message)))
        if error.traceback:
            console.print(_lines(error.traceback.rstrip()))


def _job_rows(info: JobInfo) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("queue", info.queue), ("task", info.task), ("state", info.state.value),
        ("args", info.args), ("kwargs", info.kwargs), ("attempts", info.attempts),
        ("enqueued", info.enqueued_at), ("scheduled for", info.scheduled_for),
        ("started", info.started_at), ("ended", info.ended_at), ("expires", info.expires_at),
        ("worker", info.worker), ("waiting on", info.waiting_on),
        ("dead-letter reason", info.dead_letter_reason),
        ("result", info.result),
    ]
    if info.progress:
        p = info.progress
        data = "" if p.data is None else _one_line_json(p.data)
        rows.append(("progress", " ".join(t for t in (f"{p.value:g}", p.message, data) if t)))
    return rows


def _one_line_json(value: Any) -> str:
    """Compact JSON on one line, readable (``é`` stays ``é``) and safe: a character that is
    not printable (a control character, a line separator) is written as JSON's ``\\uXXXX``;
    strict, as ``to_json`` (NaN is ``"NaN"``)."""
    text = json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"), default=str,
                      allow_nan=False)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def requeue_lines(report: RequeueReport) -> list[str]:
    """``dlq requeue --all`` for people: the counts, then why letters were left."""
    lines = [f"requeued {report.requeued} dead letter(s)"]
    if report.left:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(report.not_requeued.items()))
        lines.append(safe(f"not requeued: {report.left} ({reasons})"))
        lines += [safe(f"  {key}: {why}") for key, why in report.examples.items()]
        if report.left > len(report.examples):
            lines.append(f"  ... and {report.left - len(report.examples)} more")
    return lines


@contextmanager
def progress_bar(what: str, shown: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress callback ``(done, total)`` drawing a bar on stdout while the block runs,
    or None when ``shown`` is false (stdout is not a terminal)."""
    if not shown:
        yield None
        return
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(done, total))

        yield update
