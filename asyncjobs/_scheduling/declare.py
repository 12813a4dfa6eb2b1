"""Declaring cron jobs: ``CronJob``, built and checked by ``asyncjobs.cron(...)``, and
``cron_record``, what a worker publishes about each of its cron jobs in the registry. Which
ticks fire is decided in ``cron``; the ``Scheduler`` (``scheduler``) fires them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .._codec import encode_spec
from .._durations import Seconds, to_seconds
from .._model import JobSpec
from .._task import Task, as_task
from .cron import (
    MAX_CATCH_UP,
    MIN_GRACE,
    CatchUp,
    CronExpr,
    Every,
    Schedule,
    schedule_record,
)


@dataclass(frozen=True)
class CronJob:
    """A task run on a schedule; declare it with ``asyncjobs.cron(...)``."""

    name: str
    task: Task[Any, Any]
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    catch_up: CatchUp = CatchUp.LATEST
    grace: timedelta = timedelta(seconds=60)
    max_catch_up: int = 10
    no_overlap: bool = False
    queue: str | None = None
    spec: bytes = b""


def cron(
    task: Task[Any, Any] | Any,
    schedule: str | None = None,
    *,
    every: Seconds | None = None,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    timezone: str = "UTC",
    catch_up: CatchUp | str = CatchUp.LATEST,
    grace: Seconds = 60.0,
    max_catch_up: int = 10,
    no_overlap: bool = False,
    queue: str | None = None,
    timeout: Seconds | None = None,
) -> CronJob:
    """Declare a scheduled task: ``cron(task, "*/5 * * * *")`` or ``cron(task, every=30)``.

    ``schedule`` is a 5-field cron expression, or 6 fields with seconds first, evaluated in
    ``timezone`` (DST-correct). ``catch_up`` says what to do with ticks missed while no
    worker ran: "skip", "latest" (run the most recent once; the default) or "all" (each of
    up to ``max_catch_up``). Ticks late by less than ``grace`` (at least 1 s) always run.
    ``no_overlap`` skips a tick while the previous run is still queued or running.
    """
    if (schedule is None) == (every is None):
        raise ValueError("give exactly one of a cron expression or every=")
    when: Schedule
    if schedule is not None:
        when = CronExpr(schedule, timezone)
    else:
        when = Every(timedelta(seconds=to_seconds(every, "every") or 0))
    if (isinstance(max_catch_up, bool) or not isinstance(max_catch_up, int)
            or not 1 <= max_catch_up <= MAX_CATCH_UP):
        # (checked by every scheduler step too: too late, it stopped the queue's scheduler)
        raise ValueError(f"max_catch_up must be 1 to {MAX_CATCH_UP:,}, not "
                         f"{max_catch_up!r:.80} (catch_up='skip' runs no missed tick)")
    ref = as_task(task)
    if ref.fn is not None:
        ref.converter.check(tuple(args), dict(kwargs or {}))
    job_name = name or ref.name
    if job_name.endswith(":job"):
        raise ValueError(f"cron name {job_name!r}: a name may not end with ':job'")
    grace_s = to_seconds(grace, "grace") or 0.0
    if grace_s < MIN_GRACE.total_seconds():
        raise ValueError(f"grace must be at least {MIN_GRACE.total_seconds():g} s, not "
                         f"{grace!r:.80}: the leader wakes a moment after each tick, and a "
                         "tick later than grace counts as missed")
    timeout_s = to_seconds(timeout, "timeout")
    spec = JobSpec(ref.name, list(args), dict(kwargs or {}), timeout_s=timeout_s)
    return CronJob(
        name=job_name, task=ref, schedule=when, args=tuple(args), kwargs=dict(kwargs or {}),
        catch_up=CatchUp(catch_up), grace=timedelta(seconds=grace_s),
        max_catch_up=max_catch_up, no_overlap=no_overlap, queue=queue,
        spec=encode_spec(spec, ref.param_names),
    )


def cron_record(job: CronJob, queue: str) -> dict[str, Any]:
    """What a worker publishes about one of its cron jobs in the registry (plain data)."""
    return {"name": job.name, "task": job.task.name, "queue": queue,
            "schedule": job.schedule.describe(), "catch_up": job.catch_up.value,
            "no_overlap": job.no_overlap, **schedule_record(job.schedule)}
