"""The dashboard's actions: requeue, requeue all, purge, abort, retry now. Each maps to one
existing API, takes a JSON body ``{"queue": ..., "ids": [...], "confirm": true}`` (the page
asks the operator first), is checked against CSRF, and is logged (logger
``asyncjobs.dashboard``) with who did it. In read-only mode none of them runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import BusyLoadingError, ResponseError
from starlette.requests import Request
from starlette.responses import JSONResponse

from .._options import check_job_id
from .._producer.cursor import MAX_LIMIT
from .._producer.pool import Pool
from .._redis.keys import check_name
from .._text import clean
from ..exceptions import CorruptJob, JobNotFound, PoolExhausted, RedisFull, RedisUnavailable
from ._pages import refusal
from ._security import csrf_problem, who

log = logging.getLogger("asyncjobs.dashboard")

MAX_BODY = 256 * 1024


async def requeue(pool: Pool, queue: str, ids: list[str]) -> str:
    outcome = await pool.admin.requeue(ids, queue)
    done = [i for i, state in outcome.items() if state == "queued"]
    left = {i: s for i, s in outcome.items() if s != "queued"}
    text = f"requeued {len(done)} job(s)"
    if left:
        text += "; not requeued: " + ", ".join(f"{i} ({s})" for i, s in list(left.items())[:5])
    return text


async def requeue_all(pool: Pool, queue: str, ids: list[str]) -> str:
    report = await pool.admin.requeue_all(queue)
    text = f"requeued {report.requeued} dead letter(s)"
    if report.left:
        reasons = ", ".join(f"{n} {why}" for why, n in report.not_requeued.items())
        text += f"; {report.left} left ({reasons})"
    return text


async def purge(pool: Pool, queue: str, ids: list[str]) -> str:
    return f"purged {await pool.admin.purge_dead(queue)} dead letter(s)"


async def abort(pool: Pool, queue: str, ids: list[str]) -> str:
    stopped, ended, missing = 0, 0, 0
    for job_id in ids:
        try:
            if await pool.job(job_id, queue).abort():
                stopped += 1
            else:
                ended += 1
        except JobNotFound:
            missing += 1
    return f"aborted {stopped} job(s); {ended} had already ended; {missing} not found"


async def retry_now(pool: Pool, queue: str, ids: list[str]) -> str:
    moved = await pool.admin.make_due(ids, queue)
    return f"{len(moved)} job(s) due now; {len(ids) - len(moved)} were not scheduled"


Action = Callable[[Pool, str, list[str]], Awaitable[str]]

ACTIONS: dict[str, tuple[Action, bool]] = {
    "requeue": (requeue, True),
    "requeue-all": (requeue_all, False),
    "purge": (purge, False),
    "abort": (abort, True),
    "retry-now": (retry_now, True),
}
"""Action name -> (what it does, whether it takes job ids)."""


def refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "message": message}, status)


async def parse(request: Request, needs_ids: bool) -> tuple[str, list[str]]:
    """The queue and job ids of an action's body, each id once (in the order given: an id
    repeated would be counted twice, as aborted and as already ended); ``ValueError`` says
    what is wrong."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ValueError("the request is too large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict) or data.get("confirm") is not True:
        raise ValueError('actions need {"confirm": true}')
    queue = data.get("queue", "")
    if not isinstance(queue, str) or not queue:  # null or ["q"] is no queue, not "None"
        raise ValueError("give the queue: a queue name (a string)")
    queue = check_name("queue name", queue)
    ids = data.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("ids must be a list of job ids")
    if needs_ids and not 1 <= len(ids) <= MAX_LIMIT:
        raise ValueError(f"give between 1 and {MAX_LIMIT} job ids")
    return queue, list(dict.fromkeys(check_job_id(i) for i in ids))


async def run(request: Request, pool: Callable[[], Awaitable[Pool]], name: str,
              read_only: bool) -> JSONResponse:
    """Run one action from its request (already authenticated by the app's guard).

    ``pool`` opens (or returns) the pool. Redis down or the pool exhausted answers 503, as
    pages do; data that asyncjobs never writes (a corrupt job record, a queue's key of the
    wrong type) answers 409 with what is wrong; Redis refusing the command answers 403 for
    an ACL (NOPERM) and 503 for a refusal for now (READONLY, BUSY, MISCONF, OOM...), as
    pages do (``refusal``). Each is logged as a failed action."""
    if read_only:
        return refuse(403, "the dashboard is read-only: actions are switched off")
    if name not in ACTIONS:
        return refuse(404, f"no action {name!r}")
    problem = csrf_problem(request)
    if problem:
        log.warning("dashboard action %s refused: %s (%s)", name, problem, clean(who(request)))
        return refuse(403, problem)
    action, needs_ids = ACTIONS[name]
    try:
        queue, ids = await parse(request, needs_ids)
    except ValueError as exc:
        return refuse(400, str(exc))
    shown = ",".join(ids[:20]) + (f",... ({len(ids)} ids)" if len(ids) > 20 else "")
    done = (f"dashboard action {name} by {clean(who(request))} queue={clean(queue)} "
            f"ids={clean(shown) or '-'}")
    status, message = 200, ""
    try:
        message = await action(await pool(), queue, ids)
    except (RedisUnavailable, PoolExhausted) as exc:
        status, message = 503, str(exc)
    except CorruptJob as exc:
        status, message = 409, str(exc)
    except (ResponseError, BusyLoadingError, RedisFull) as exc:
        refused = refusal(exc)  # a key of the wrong type, an ACL, Redis busy...
        if refused is None:
            raise
        status, message = refused
    if status != 200:
        log.warning("%s failed: %s", done, clean(message))
        return refuse(status, message)
    log.info("%s: %s", done, clean(message))
    return JSONResponse({"ok": True, "message": message})
