"""What each page shows, as named parts: a part is loaded by one function and drawn by one
template (``templates/parts/<name>.html``). A page loads all its parts; the page's script
reloads one part at a time (``?part=<name>``) for live updates, and ``rows`` for "load more".
Read-only: actions live in ``_actions``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import ResponseError
from starlette.requests import Request

from .._producer.admin import QueueStats
from .._producer.cursor import _LONGEST_CURSOR as LONGEST_CURSOR
from .._producer.damage import DamagedQueue, bad_range, wrong_type
from .._producer.pool import Pool
from .._redis.keys import check_name
from .._redis.refusals import refused, reply_code
from ..exceptions import CorruptJob, RedisFull
from ._charts import chart
from ._format import timeline
from ._redact import ArgsRedactor, apply

LISTS = {"waiting": "waiting_jobs", "in_flight": "in_flight_jobs", "delayed": "delayed_jobs"}
"""The queue page's lists: ``?list=`` -> the ``Admin`` method that pages through it."""


@dataclass(frozen=True)
class View:
    """One request to a page: its parameters, checked, and what it needs to load them."""

    request: Request
    pool: Pool
    page_size: int
    redactors: dict[str, ArgsRedactor] = field(default_factory=dict)

    def param(self, name: str, default: str = "") -> str:
        """A query parameter (at most 1,024 characters; a cursor, which may hold a job id
        of 1,024 characters, up to what the listings take)."""
        value = self.request.query_params.get(name, default)
        if len(value) > (LONGEST_CURSOR if name == "cursor" else 1024):
            raise ValueError(f"the {name} parameter is too long")
        return value

    @property
    def queue(self) -> str:
        """The ``queue`` parameter, a valid queue name (default: the pool's queue)."""
        return check_name("queue name", self.param("queue") or self.pool.default_queue)

    @property
    def cursor(self) -> str | None:
        return self.param("cursor") or None


Loader = Callable[[View], Awaitable[dict[str, Any]]]


async def _paged(view: View, read: Awaitable[Any]) -> Any:
    """A listing's page: a cursor Redis cannot range from is an invalid one (a 400)."""
    try:
        return await read
    except ResponseError as exc:
        if view.cursor and bad_range(exc):
            raise ValueError("invalid cursor: no stream entry can follow it") from None
        raise


def refusal(exc: BaseException) -> tuple[int, str] | None:
    """The status and the one-line reason a page or an action answers when Redis refuses
    its command; None for any other error.

    409: a key of the wrong type (data asyncjobs never writes). 403: Redis's ACL forbids
    the command to the dashboard's Redis user (NOPERM): no retry changes that, as no retry
    runs an action on a read-only dashboard, also 403; and it says nothing of Redis's
    health. 503: Redis cannot serve the command now (a read-only replica after a failover,
    loading its data, a busy script, a failing disk, out of memory...): try again later."""
    damage = wrong_type(exc)
    if damage is not None:
        return 409, damage
    if isinstance(exc, RedisFull) and exc.__cause__ is not None:  # the pool's OOM
        exc = exc.__cause__
    if not refused(exc):
        return None
    code, reply = reply_code(exc)
    if code == "NOPERM":
        return 403, f"Redis refused the dashboard's Redis user (NOPERM): {reply}"
    named = "" if reply.startswith(code) else f" ({code})"  # redis-py took it off
    return 503, f"Redis cannot serve this now{named}: {reply}"


async def _queue_row(view: View, queue: str) -> QueueStats | DamagedQueue:
    try:
        return await view.pool.admin.queue_stats(queue)
    except ResponseError as exc:
        problem = wrong_type(exc)
        if problem is None:
            raise
        return DamagedQueue(queue, problem)


ROWS_AT_ONCE = 16
"""Queue rows of the overview read at once (each is a few round trips)."""


async def queues_part(view: View) -> dict[str, Any]:
    """The known queues, a page at a time in name order (``after``: the last name of the
    page before), their rows read side by side: one damaged queue is a row saying so,
    the others are shown. (Every queue on one page, each read in turn, took 2.2 s for
    5,000 queues.)"""
    admin = view.pool.admin
    names = await admin.queues() or [view.pool.default_queue]
    after = view.param("after")
    later = [n for n in names if n > after] if after else names
    shown = later[:view.page_size]
    room = asyncio.Semaphore(ROWS_AT_ONCE)

    async def row(queue: str) -> QueueStats | DamagedQueue:
        async with room:
            return await _queue_row(view, queue)

    return {"queues": await asyncio.gather(*(row(q) for q in shown)),
            "queue_count": len(names), "first": len(names) - len(later) + 1,
            "next_after": shown[-1] if len(later) > len(shown) else None,
            "worker_count": len(await admin.workers())}


async def stats_part(view: View) -> dict[str, Any]:
    admin = view.pool.admin
    return {"stats": await admin.queue_stats(view.queue),
            "leader": await admin.leader(view.queue)}


async def charts_part(view: View) -> dict[str, Any]:
    return {"chart": chart(await view.pool.admin.throughput(view.queue, minutes=60))}


async def list_part(view: View) -> dict[str, Any]:
    kind = view.param("list", "waiting")
    if kind not in LISTS:
        raise ValueError(f"unknown list {kind!r}: one of {', '.join(LISTS)}")
    method = getattr(view.pool.admin, LISTS[kind])
    page = await _paged(view, method(view.queue, cursor=view.cursor, limit=view.page_size))
    return {"list": kind, "page": page}


async def dead_part(view: View) -> dict[str, Any]:
    task, error = view.param("task").strip(), view.param("error").strip()
    page = await _paged(view, view.pool.admin.dead_letter_page(
        view.queue, cursor=view.cursor, limit=view.page_size, task=task, error=error,
        scan=max(1000, view.page_size * 20)))
    return {"page": page, "task": task, "error": error, "filtered": bool(task or error)}


async def dead_count_part(view: View) -> dict[str, Any]:
    return {"stats": await view.pool.admin.queue_stats(view.queue)}


async def job_part(view: View) -> dict[str, Any]:
    job_id = view.param("id")
    if not job_id:
        raise ValueError("give a job id")
    try:
        info = await view.pool.job(job_id, view.queue).info()
    except CorruptJob as exc:
        return {"job_id": job_id, "info": None, "corrupt": str(exc)}
    args, kwargs, note = apply(view.redactors, info.task, info.args, info.kwargs)
    return {"job_id": job_id, "info": info, "corrupt": None, "args": args, "kwargs": kwargs,
            "redact_note": note, "events": timeline(info)}


async def workers_part(view: View) -> dict[str, Any]:
    return {"workers": await view.pool.admin.workers()}


async def crons_part(view: View) -> dict[str, Any]:
    admin = view.pool.admin
    names = await admin.queues() or [view.pool.default_queue]
    schedules = []
    for name in names:
        crons, leader = await admin.crons(name), await admin.leader(name)
        if crons or leader:
            schedules.append((name, leader, crons))
    return {"schedules": schedules}


async def search_part(view: View) -> dict[str, Any]:
    job_id = view.param("id").strip()
    return {"job_id": job_id,
            "found": await view.pool.admin.find_job(job_id) if job_id else []}


@dataclass(frozen=True)
class PageSpec:
    """A page: its template, title, and parts (``rows``: the part "load more" fetches)."""

    template: str
    title: str
    parts: dict[str, Loader]
    rows: str | None = None
    live: frozenset[str] = frozenset()
    """Parts the script reloads every few seconds."""


PAGES: dict[str, PageSpec] = {
    "overview": PageSpec("overview.html", "Queues", {"queues": queues_part},
                         live=frozenset({"queues"})),
    "queue": PageSpec("queue.html", "Queue", {"stats": stats_part, "charts": charts_part,
                                              "list": list_part},
                      rows="list", live=frozenset({"stats", "charts", "list"})),
    "dead": PageSpec("dead.html", "Dead letters", {"count": dead_count_part,
                                                   "dead": dead_part},
                     rows="dead", live=frozenset({"count", "dead"})),
    "job": PageSpec("job.html", "Job", {"job": job_part}, live=frozenset({"job"})),
    "workers": PageSpec("workers.html", "Workers", {"workers": workers_part},
                        live=frozenset({"workers"})),
    "crons": PageSpec("crons.html", "Cron schedules", {"crons": crons_part},
                      live=frozenset({"crons"})),
    "search": PageSpec("search.html", "Search", {"search": search_part}),
}


def now() -> datetime:
    """The time pages are drawn at (UTC)."""
    return datetime.now(UTC)
