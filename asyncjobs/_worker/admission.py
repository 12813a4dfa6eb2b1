"""Whether a started delivery may run: one pure decision, no Redis, no clock.

``admit`` reads what start.lua said about a delivery and what the job carries (its spec,
its task, its arguments) and returns either ``Admitted`` (run it; first check its task's
rate limit when ``rate_key`` says so, and take a lease of its concurrency limit when
``lease`` names one) or ``Refused``: the one settle operation that records
why it does not run (acknowledged as stale, dead-lettered, expired or aborted), with the
job event to report. Every refusal is final: none of these jobs could succeed on another
try, so none is retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._codec import decode_spec
from .._durations import MAX_DURATION_S
from .._limits import RateKeyError, keeps_slot, limit_key
from .._model import ErrorInfo, JobSpec
from .._redis.keys import limit_name
from .._redis.values import SettleOp, Started
from .._task import Task
from .._text import safe_str
from .outcomes import dead, ended, garbage, history_of, log_end, task_name


@dataclass(slots=True)
class Admitted:
    """A delivery to run: its spec, task, converted arguments and error history."""

    spec: JobSpec
    task: Task[Any, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    history: tuple[ErrorInfo, ...]
    rate_key: str | None = None
    """The key to check the task's rate limit under ('' for the task-wide limit) before
    running; None: no check (no limit, or the job comes back to the slot it was given)."""
    lease: str | None = None
    """The concurrency limit to take a lease of before running (``limit_name``); None:
    the task has no concurrency limit."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A delivery that does not run: the operation recording it, and the event to report
    ('' for none: a stale entry is only acknowledged)."""

    op: SettleOp
    event: str = ""
    task: str = ""
    error: ErrorInfo | None = None
    """Why it was dead-lettered, as recorded in its history."""


def admit(st: Started, tasks: Mapping[str, Task[Any, Any]], max_deliveries: int,
          queue: str) -> Admitted | Refused:
    """Decide whether a started delivery runs (see the module docstring)."""
    d = st.delivery
    if st.verdict == "stale":
        return Refused(SettleOp(d.entry, d.job_id, "ack"))
    if st.verdict == "missing":
        op = garbage(d)
        return Refused(op, "failed", error=ErrorInfo("asyncjobs.NoRecord", str(op.payload),
                                                      "", 0, st.now_ms))
    if st.verdict == "unreadable":  # the job key is not a hash: leave it as it is
        why = st.spec.decode(errors="replace")
        return Refused(garbage(d, why), "failed",
                       error=ErrorInfo("asyncjobs.UnreadableRecord", why, "", 0, st.now_ms))
    if st.verdict == "corrupt":  # a hash with a field that cannot be read
        return _dead(st, (), "asyncjobs.CorruptRecord", st.spec.decode(errors="replace"),
                     queue)
    if st.verdict in ("expired", "aborted"):
        name = task_name(st)
        log_end(st.verdict, d.job_id, name, queue, st.attempts, 0.0)
        return Refused(ended(d, st.verdict), st.verdict, name)
    try:
        spec = decode_spec(st.spec)
    except Exception as exc:  # corrupt, or too deep for the stack: never runnable
        return _dead(st, (), "asyncjobs.UndecodablePayload",
                     f"the job's payload cannot be decoded: {safe_str(exc, 500)}", queue)
    history = history_of(st)
    task = tasks.get(spec.task)
    if task is None:
        known = ", ".join(sorted(tasks)) or "none"
        return _dead(st, history, "asyncjobs.UnknownTask",
                     f"unknown task {spec.task!r} (this worker knows: {known})", queue)
    if spec.timeout_s is not None and not 0 <= spec.timeout_s <= MAX_DURATION_S:
        # NaN, infinite or negative (a spec written by hand): no timer can be set for it
        return _dead(st, history, "asyncjobs.BadTimeout",
                     f"the job's timeout is not a duration: {spec.timeout_s!r} s", queue)
    if d.deliveries > max_deliveries:
        return _dead(st, history, "asyncjobs.PoisonJob",
                     f"delivered {d.deliveries} times without finishing: the worker died or "
                     "was killed each time it ran this job", queue)
    try:
        task.converter.check(spec.args, spec.kwargs)
        args, kwargs = task.converter.convert(spec.args, spec.kwargs)
    except Exception as exc:  # no attempt can succeed with these arguments
        return _dead(st, history, "asyncjobs.BadArguments",
                     f"arguments do not match task {task.name!r}: {safe_str(exc, 500)}", queue)
    limit, rate_key = task.rate_limit, None
    if limit is not None:
        try:
            key = limit_key(task.rate_key, args, kwargs)
        except RateKeyError as exc:
            return _dead(st, history, "asyncjobs.BadRateKey",
                         f"task {task.name!r}: {exc}", queue)
        if not keeps_slot(st.reserved_ms, st.now_ms, limit.interval_us):
            rate_key = key
    lease = None
    if task.concurrency_limit is not None:
        try:
            key = limit_key(task.concurrency_key, args, kwargs, "concurrency_key")
        except RateKeyError as exc:
            return _dead(st, history, "asyncjobs.BadConcurrencyKey",
                         f"task {task.name!r}: {exc}", queue)
        lease = limit_name(task.name, key)
    return Admitted(spec, task, args, kwargs, history, rate_key, lease)


def _dead(st: Started, history: tuple[ErrorInfo, ...], kind: str, why: str,
          queue: str) -> Refused:
    return Refused(dead(st, history, kind, why, queue), "failed", task_name(st),
                   ErrorInfo(kind, why, "", st.attempts, st.now_ms))
