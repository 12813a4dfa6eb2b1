"""What to record about a delivery, and the job log lines: pure functions, no Redis.

The executor runs attempts; these turn what happened (start.lua's verdict, an attempt's
outcome and the retry decision) into the one settle operation that records it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from .._codec import decode_errors, decode_spec, encode_errors, error_info
from .._durations import MAX_DURATION_S
from .._model import ENDED_TTL_S, ErrorInfo
from .._redis.values import Delivery, SettleOp, Started
from .._retry import Action, Decision
from .._text import clean, safe_str
from ..exceptions import SerializationError
from .runner import Outcome

log = logging.getLogger("asyncjobs.worker")

WORKER_LOST = ("an earlier delivery ended without a result: its worker stopped (killed, "
               "crashed, or lost Redis)")


def now_ms() -> int:
    """The local clock in ms (error timestamps; Redis keeps the authoritative times)."""
    return int(time.time() * 1000)


def first(*values: float | None) -> float | None:
    """The first value that is not None."""
    for value in values:
        if value is not None:
            return value
    return None


def record_ttl(seconds: float | None) -> int:
    """A record TTL in whole seconds: 0 (drop the record at once) stays 0; anything else is
    held between 1 s and 10 years (``MAX_DURATION_S``), whatever a job's spec says (a spec
    read from Redis may hold any number: infinite, not a number, 1e300), so that the
    settle's EXPIRE always takes it."""
    if not seconds:
        return 0
    if not seconds <= MAX_DURATION_S:  # longer, infinite, or not a number
        return math.floor(MAX_DURATION_S)
    return max(1, math.ceil(seconds))


def task_name(st: Started) -> str:
    """The task name of a delivery, best effort (for events about jobs that did not run)."""
    if st.verdict in ("missing", "unreadable", "corrupt"):
        return ""
    try:
        return decode_spec(st.spec).task
    except Exception:  # corrupt or too deep: it has no usable name
        return ""


def history_of(st: Started) -> tuple[ErrorInfo, ...]:
    """Earlier attempts' errors, plus a WorkerLost entry for the attempt before this one
    when it never ended: the entry was delivered before (a reclaim), or the record said
    ``running`` when this attempt started (also an entry put back by a group made again or
    by the leader's repair, which start with one delivery)."""
    try:
        history = decode_errors(st.history)
    except Exception:  # a corrupt history does not stop the job; the next one replaces it
        history = ()
    if st.delivery.deliveries > 1 or st.resumed:
        history += (ErrorInfo("asyncjobs.WorkerLost", WORKER_LOST, "", st.attempts - 1,
                              st.now_ms),)
    return history


def ended(d: Delivery, state: str) -> SettleOp:
    """An expired or aborted job: its record is kept a day, so the ending stays visible."""
    return SettleOp(d.entry, d.job_id, state, number=ENDED_TTL_S)


def garbage(d: Delivery, reason: str | None = None) -> SettleOp:
    """An entry without a usable job record (none, or one that cannot be read): its raw
    fields go to the dead letters with the reason; the record, if any, is not touched."""
    if reason is None:
        reason = f"no job record for job id {d.job_id!r}" if d.job_id else "entry has no job id"
    log.error("job dead-lettered entry=%s id=%s reason=%s", clean(d.entry), clean(d.job_id),
              clean(reason))
    return SettleOp(d.entry, d.job_id, "garbage", reason)


def dead(st: Started, history: tuple[ErrorInfo, ...], kind: str, why: str,
         queue: str) -> SettleOp:
    """A job dead-lettered before running (undecodable, unknown task, poison, bad args)."""
    history += (ErrorInfo(kind, why, "", st.attempts, st.now_ms),)
    d = st.delivery
    log.error("job dead-lettered id=%s queue=%s attempt=%d reason=%s", clean(d.job_id), queue,
              st.attempts, clean(why))
    return SettleOp(d.entry, d.job_id, "failed", why, 0, encode_errors(history))


TOO_LARGE = "the result is larger than Redis takes"
"""How the reason of a job whose result Redis cannot take begins."""

SMALLEST_BULK = 1024 * 1024
"""The smallest ``proto-max-bulk-len`` Redis takes: a value up to this size fits any Redis."""


def too_large(size: int, most: int | None,
              how: str = "Redis would refuse the call recording it") -> str:
    """Why a value of ``size`` bytes cannot be sent to a Redis whose ``proto-max-bulk-len``
    is ``most`` (None: not known); ``how``: how that shows."""
    limit = f" of {most:,}" if most is not None else ""
    return f"{TOO_LARGE}: {size:,} bytes encoded, over its proto-max-bulk-len{limit} ({how})"


def sized(payload: bytes, most: int | None) -> bytes:
    """``payload`` (an encoded result), or ``SerializationError`` when it is larger than
    Redis takes (``most``: its ``proto-max-bulk-len``, None when not known yet): the call
    recording it would be refused as a whole, with the other jobs of its batch."""
    if most is not None and len(payload) > most:
        raise SerializationError(too_large(len(payload), most))
    return payload


def unserializable_reason(error: BaseException | None) -> str:
    """The dead-letter reason of a job whose result cannot be recorded (``error``: what
    encoding it raised, as recorded)."""
    text = safe_str(error, 300) if error is not None else ""
    return text if text.startswith(TOO_LARGE) else "the result cannot be serialized"


def largest_value(op: SettleOp) -> int:
    """The size of the largest value a settle op sends (Redis's ``proto-max-bulk-len``
    bounds each one)."""
    return max(_size(op.entry), _size(op.job_id), _size(op.payload), len(op.history),
               _size(op.lease))


def _size(value: bytes | str) -> int:
    if isinstance(value, bytes):
        return len(value)
    if len(value) * 4 <= SMALLEST_BULK:  # (UTF-8 takes at most 4 bytes a character)
        return len(value)
    return len(value.encode("utf-8", "surrogatepass"))


def unrecordable(op: SettleOp, queue: str, reason: str) -> SettleOp:
    """The op that records a finished attempt whose own op Redis will not take (a result
    over its ``proto-max-bulk-len``, a call it refuses): the job fails, dead-lettered with
    ``reason``; what the op carried (a result, a history) is dropped, the record's error
    history left as it was; the lease the attempt held is released all the same. An entry
    that was to be dead-lettered as garbage still is, with ``reason``."""
    log.error("job dead-lettered id=%s queue=%s reason=%s", clean(safe_str(op.job_id, 200)),
              queue, clean(reason))
    if op.outcome == "garbage":
        return SettleOp(op.entry, op.job_id, "garbage", reason, lease=op.lease)
    return SettleOp(op.entry, op.job_id, "failed", reason, 0, b"", op.lease)


def after_attempt(st: Started, outcome: Outcome, decision: Decision, payload: bytes,
                  history: tuple[ErrorInfo, ...], result_ttl_s: float | None,
                  queue: str, task: str, error: ErrorInfo | None = None,
                  fields: Mapping[str, object] | None = None, head: bytes = b"") -> SettleOp:
    """Record an attempt that ran: complete, retry later, or dead-letter. ``error`` is the
    attempt's error as captured (``attempt_error``); ``fields`` go on the log line.
    ``head``: the packed head of a plain record (``kept.packed_head``), whose result may
    then be kept in a shared hash (settle.lua's 'keep')."""
    d = st.delivery
    if error is None and outcome.error is not None:
        error = attempt_error(outcome, st.attempts)
    if error is not None:
        history += (error,)
    hist = encode_errors(history) if history else b""
    err = f" error={clean(error.type)}: {clean(error.message)}" if error else ""
    line = (d.job_id, task, queue, st.attempts, outcome.duration_s)
    if decision.action is Action.COMPLETE:
        log_end("complete", *line, fields=fields)
        if head and not history:
            return SettleOp(d.entry, d.job_id, "keep", payload, record_ttl(result_ttl_s), head)
        return SettleOp(d.entry, d.job_id, "complete", payload, record_ttl(result_ttl_s), hist)
    if decision.action is Action.RETRY:
        log_end("retry", *line, tail=f" retry_in={decision.delay_s:.3f}s{err}", fields=fields)
        return SettleOp(d.entry, d.job_id, "retry", b"", round(decision.delay_s * 1000), hist)
    log_end("failed", *line, tail=f" reason={clean(decision.reason)!r}{err}",
            level=logging.WARNING, fields=fields)
    return SettleOp(d.entry, d.job_id, "failed", decision.reason, 0, hist)


def attempt_error(outcome: Outcome, attempt: int) -> ErrorInfo | None:
    """The attempt's error as it is recorded (type, message, traceback), if it failed."""
    return None if outcome.error is None else error_info(outcome.error, attempt, now_ms())


JOBS_LOGGER = "asyncjobs.worker.jobs"
"""The logger of the per-job lines: an attempt's end (INFO, WARNING when a job fails), and
as its child ``asyncjobs.worker.jobs.started`` an attempt's start (INFO). Set their levels
to choose: both lines, one line per job (``...jobs.started`` at WARNING), or only jobs that
went wrong (``...jobs`` at WARNING)."""

_ends = logging.getLogger(JOBS_LOGGER)
_starts = logging.getLogger(f"{JOBS_LOGGER}.started")


def log_start(job_id: str, task: str, queue: str, attempt: int,
              fields: Mapping[str, object] | None = None) -> None:
    """The line logged when an attempt starts (``fields``: the job's log context)."""
    if _starts.isEnabledFor(logging.INFO):
        _emit(_starts, logging.INFO, "job started id=%s task=%s queue=%s attempt=%d%s",
              (clean(job_id), clean(task), queue, attempt, _context(fields)),
              {"job_id": job_id, "task": task, "queue": queue, "attempt": attempt,
               "context": dict(fields or {})}, "log_start")


def log_end(event: str, job_id: str, task: str, queue: str, attempt: int, duration_s: float,
            tail: str = "", level: int = logging.INFO,
            fields: Mapping[str, object] | None = None) -> None:
    """The line logged when an attempt (or a job that never ran) ends."""
    if _ends.isEnabledFor(level):
        extra: dict[str, Any] = {"job_id": job_id, "task": task, "queue": queue,
                                 "attempt": attempt, "duration_s": duration_s, "outcome": event,
                                 "context": dict(fields or {})}
        _emit(_ends, level, "job %s id=%s task=%s queue=%s attempt=%d duration=%.3fs%s%s",
              (event, clean(job_id), clean(task) or "-", queue, attempt, duration_s,
               _context(fields), tail), extra, "log_end")


def _emit(logger: logging.Logger, level: int, msg: str, args: tuple[object, ...],
          extra: dict[str, Any], func: str) -> None:
    """Hand a job line to ``logger``'s filters and handlers as ``Logger.log`` does, without
    its walk up the stack to find the caller (a fifth of a line's cost, twice a job): the
    record names this module and ``func`` as where it was logged."""
    logger.handle(logger.makeRecord(logger.name, level, __file__, 0, msg, args, None, func,
                                    extra))


def _context(fields: Mapping[str, object] | None) -> str:
    """A job's log context as ` key=value` pairs, one line whatever they hold."""
    if not fields:
        return ""
    return "".join(f" {clean(safe_str(k, 64))}={clean(safe_str(v, 200))}"
                   for k, v in fields.items())
