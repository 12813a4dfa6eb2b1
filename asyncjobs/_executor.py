"""Runs started jobs: one asyncio task per attempt, decided and handed to the settler.

The executor never talks to Redis itself. It turns what start.lua said about a delivery,
and how the attempt went, into exactly one settle operation; a job cancelled by shutdown
or by losing its entry produces none (its entry stays pending and runs again).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from ._codec import (
    decode_errors,
    decode_spec,
    encode_errors,
    encode_progress,
    encode_value,
    error_info,
)
from ._context import Context
from ._middleware import Invoke, Observer
from ._model import ErrorInfo, JobSpec, Progress
from ._retry import Action, Decision, RetryPolicy, decide
from ._runner import Outcome, await_attempt
from ._runtime import Runtime, Slots
from ._settler import Settler
from ._store import Delivery, SettleOp, Started
from ._task import Task
from .exceptions import SerializationError

log = logging.getLogger("asyncjobs.worker")



class Running:
    """One attempt in flight (or waiting for its settle to be recorded)."""

    __slots__ = ("cancel_reason", "delivery", "entered", "job_id", "queue", "started", "task")

    def timed_out(self) -> bool:
        """True once the attempt's timer cancelled it."""
        return self.cancel_reason == "timeout"

    def __init__(self, queue: str, delivery: Delivery) -> None:
        self.queue = queue
        self.delivery = delivery
        self.job_id = delivery.job_id
        self.task: asyncio.Task[SettleOp | None] | None = None
        self.cancel_reason = ""
        self.entered = False
        self.started = False


class Executor:
    """Owns the running attempts of a worker."""

    def __init__(self, rt: Runtime, settler: Settler, invoke: Invoke | None = None,
                 observers: Sequence[Observer] = ()) -> None:
        self.rt = rt
        self.settler = settler
        self.slots = Slots(rt.config.concurrency)
        self.limiter = anyio.CapacityLimiter(rt.config.sync_concurrency)
        self.running: dict[tuple[str, str], Running] = {}  # (queue, entry id)
        self._invoke = invoke
        self._executing = 0
        self._loop = asyncio.get_running_loop()
        self._policies: dict[tuple[str, int | None, float | None],
                             tuple[RetryPolicy, float | None]] = {}
        self._observers = tuple(observers)
        self._idle = asyncio.Event()
        self._idle.set()

    # -- bookkeeping ---------------------------------------------------------------------

    def held(self, queue: str) -> list[Delivery]:
        """Deliveries this worker holds on ``queue`` (running or being settled)."""
        return [r.delivery for (q, _), r in self.running.items() if q == queue]

    def find_job(self, queue: str, job_id: str) -> Running | None:
        """The running attempt of a job, if this worker has one."""
        for (q, _), r in self.running.items():
            if q == queue and r.job_id == job_id:
                return r
        return None

    def cancel(self, running: Running, reason: str) -> None:
        """Cancel an attempt: 'abort' ends the job aborted; 'shutdown' / 'lost' leave it."""
        if running.task is not None and not running.task.done() and not running.cancel_reason:
            running.cancel_reason = reason
            running.task.cancel()

    def cancel_entry(self, queue: str, entry: str, reason: str) -> None:
        """Cancel the attempt holding a stream entry, if any."""
        running = self.running.get((queue, entry))
        if running is not None:
            self.cancel(running, reason)

    @property
    def active(self) -> int:
        """Attempts still running (not counting those only waiting for their settle)."""
        return self._executing

    async def wait_idle(self, timeout_s: float, hurry: asyncio.Event | None = None) -> bool:
        """Wait until nothing runs or is being settled; False on timeout, or as soon as
        ``hurry`` is set."""
        with anyio.move_on_after(timeout_s):
            if hurry is None:
                await self._idle.wait()
                return True
            async with anyio.create_task_group() as tg:
                async def watch(event: asyncio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(watch, self._idle)
                tg.start_soon(watch, hurry)
            return self._idle.is_set()
        return False

    def cancel_all(self, reason: str) -> int:
        """Cancel every attempt still running; returns how many."""
        count = 0
        for running in list(self.running.values()):
            if running.task is not None and not running.task.done():
                self.cancel(running, reason)
                count += 1
        return count

    def _forget(self, running: Running, settled: bool = True) -> None:
        self.running.pop((running.queue, running.delivery.entry), None)
        if not settled:
            log.warning(
                "job lost id=%s queue=%s: another worker reclaimed it; this result is dropped",
                running.job_id, running.queue,
            )
        if not self.running:
            self._idle.set()

    # -- running -------------------------------------------------------------------------

    def start(self, queue: str, started: Started) -> None:
        """Run one started delivery; the caller already took a slot for it."""
        running = Running(queue, started.delivery)
        self.running[(queue, started.delivery.entry)] = running
        self._idle.clear()
        self._executing += 1
        running.task = asyncio.create_task(self._run(running, started))
        running.task.add_done_callback(functools.partial(self._done, running, started))

    async def _run(self, running: Running, started: Started) -> SettleOp | None:
        """The attempt, turned into the operation that records it (None: leave the entry
        pending, so the job runs again)."""
        running.entered = True
        try:
            return await self._attempt(running, started)
        except asyncio.CancelledError:
            return self._cancelled(running, started)
        except Exception:  # a bug of ours: keep the entry pending, it will run again
            log.exception("internal error running job id=%s", running.job_id)
            return None

    def _done(self, running: Running, started: Started, task: asyncio.Task[Any]) -> None:
        """Bookkeeping when an attempt's task ends, however it ended: also when it was
        cancelled before its first step (then ``_run`` never ran)."""
        self.slots.give()
        self._executing -= 1
        if not running.entered or task.cancelled():
            op = self._cancelled(running, started)
        else:
            op = task.result()
        if op is None:
            self._forget(running)
        else:
            self.settler.submit(running.queue, op, functools.partial(self._forget, running))

    def _cancelled(self, running: Running, started: Started) -> SettleOp | None:
        self._emit("aborted" if running.cancel_reason == "abort" else "interrupted",
                   running.queue, _task_name(started), 0.0)
        if running.cancel_reason == "abort":
            _log_end("aborted", running, started.attempts, 0.0, "")
            return SettleOp(started.delivery.entry, running.job_id, "aborted",
                            number=self._ttl(None, None, aborted=True))
        _log_end("interrupted", running, started.attempts, 0.0, f" reason={running.cancel_reason}")
        return None

    async def _attempt(self, running: Running, st: Started) -> SettleOp:
        d = st.delivery
        if st.verdict == "stale":
            return SettleOp(d.entry, d.job_id, "ack")
        if st.verdict == "missing":
            self._emit("failed", running.queue, "", 0.0)
            reason = f"no job record for job id {d.job_id!r}" if d.job_id else "entry has no job id"
            log.error("job dead-lettered entry=%s queue=%s reason=%s", d.entry, running.queue,
                      reason)
            return SettleOp(d.entry, d.job_id, "garbage", reason)
        if st.verdict in ("expired", "aborted"):
            self._emit(st.verdict, running.queue, _task_name(st), 0.0)
            _log_end(st.verdict, running, st.attempts, 0.0, "")
            return SettleOp(d.entry, d.job_id, st.verdict, number=self._ttl(None, None, True))
        try:
            spec = decode_spec(st.spec)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._dead(running, st, (), "asyncjobs.UndecodablePayload",
                              f"the job's payload cannot be decoded: {exc}")
        history = _decode_history(st.history)
        if d.deliveries > 1:
            lost = ("an earlier delivery ended without a result: its worker stopped (killed, "
                    "crashed, or lost Redis)")
            history += (ErrorInfo("asyncjobs.WorkerLost", lost, "", st.attempts - 1, st.now_ms),)
        task = self.rt.tasks.get(spec.task)
        if task is None:
            known = ", ".join(sorted(self.rt.tasks)) or "none"
            return self._dead(running, st, history, "asyncjobs.UnknownTask",
                              f"unknown task {spec.task!r} (this worker knows: {known})")
        if d.deliveries > self.rt.config.max_deliveries:
            return self._dead(running, st, history, "asyncjobs.PoisonJob",
                              f"delivered {d.deliveries} times without finishing: the worker "
                              "died or was killed each time it ran this job")
        try:
            args, kwargs = task.converter.convert(spec.args, spec.kwargs)
        except msgspec.ValidationError as exc:
            return self._dead(running, st, history, "asyncjobs.BadArguments",
                              f"arguments do not match task {task.name!r}: {exc}")
        return await self._execute(running, st, spec, task, args, kwargs, history)

    async def _execute(
        self, running: Running, st: Started, spec: JobSpec, task: Task[Any, Any],
        args: list[Any], kwargs: dict[str, Any], history: tuple[ErrorInfo, ...],
    ) -> SettleOp:
        policy, timeout = self._policy(task, spec)
        ctx = Context(
            job_id=running.job_id, task=task.name, queue=running.queue, attempt=st.attempts,
            max_tries=policy.max_tries, enqueued_ms=st.enqueued_ms, errors=history,
            headers=spec.headers, state=self.rt.state, pool=self.rt.pool,
            worker=self.rt.consumer, report=self._report_progress,
        )
        running.started = True
        self._emit("started", running.queue, task.name, 0.0)
        if log.isEnabledFor(logging.INFO):
            log.info("job started id=%s task=%s queue=%s attempt=%d", running.job_id,
                     task.name, running.queue, st.attempts, extra=_extra(running, task.name, st))
        call = functools.partial(self._call, task, ctx, args, kwargs)
        timer = None
        if timeout:
            timer = self._loop.call_later(timeout, self.cancel, running, "timeout")
        try:
            outcome = await await_attempt(call, timeout, running.timed_out)
        finally:
            if timer is not None:
                timer.cancel()
        decision = decide(outcome.kind, outcome.error, st.attempts, policy, random.random())
        payload = b""
        if decision.action is Action.COMPLETE:
            try:
                payload = encode_value(outcome.value)
            except SerializationError as exc:
                outcome = Outcome("error", error=exc, duration_s=outcome.duration_s)
                decision = Decision(Action.FAIL, reason="the result cannot be serialized")
        return self._settle_op(running, st, spec, task, outcome, decision, payload, history)

    def _settle_op(
        self, running: Running, st: Started, spec: JobSpec, task: Task[Any, Any],
        outcome: Outcome, decision: Decision, payload: bytes, history: tuple[ErrorInfo, ...],
    ) -> SettleOp:
        d, name = st.delivery, task.name
        if outcome.error is not None:
            history += (error_info(outcome.error, st.attempts, _now_ms()),)
        hist = encode_errors(history) if history else b""
        err = f" error={history[-1].type}: {history[-1].message}" if outcome.error else ""
        event = "complete" if decision.action is Action.COMPLETE else decision.action.value
        self._emit(event, running.queue, name, outcome.duration_s)
        if decision.action is Action.COMPLETE:
            _log_end("complete", running, st.attempts, outcome.duration_s, "", name)
            ttl = self._ttl(spec.result_ttl_s, task.result_ttl_s)
            return SettleOp(d.entry, d.job_id, "complete", payload, ttl, hist)
        if decision.action is Action.RETRY:
            _log_end("retry", running, st.attempts, outcome.duration_s,
                     f" retry_in={decision.delay_s:.3f}s{err}", name)
            return SettleOp(d.entry, d.job_id, "retry", b"", round(decision.delay_s * 1000), hist)
        _log_end("failed", running, st.attempts, outcome.duration_s,
                 f" reason={decision.reason!r}{err}", name, logging.WARNING)
        return SettleOp(d.entry, d.job_id, "failed", decision.reason, 0, hist)

    def _dead(
        self, running: Running, st: Started, history: tuple[ErrorInfo, ...], kind: str, why: str
    ) -> SettleOp:
        history += (ErrorInfo(kind, why, "", st.attempts, st.now_ms),)
        self._emit("failed", running.queue, _task_name(st), 0.0)
        log.error("job dead-lettered id=%s queue=%s attempt=%d reason=%s",
                  running.job_id, running.queue, st.attempts, why)
        return SettleOp(st.delivery.entry, running.job_id, "failed", why, 0, encode_errors(history))

    async def _call(
        self, task: Task[Any, Any], ctx: Context, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        assert task.fn is not None
        fn = task.fn
        if task.is_async:
            call: Callable[[], Awaitable[Any]] = functools.partial(fn, ctx, *args, **kwargs)
        else:
            sync = functools.partial(fn, ctx, *args, **kwargs)
            call = functools.partial(anyio.to_thread.run_sync, sync, limiter=self.limiter,
                                     abandon_on_cancel=True)
        if self._invoke is None:
            return await call()
        return await self._invoke(ctx, call)

    def _policy(self, task: Task[Any, Any], spec: JobSpec) -> tuple[RetryPolicy, float | None]:
        """The retry policy and timeout of a job (cached per task and per-job override)."""
        key = (task.name, spec.max_tries, spec.timeout_s)
        found = self._policies.get(key)
        if found is None:
            cfg = self.rt.config
            found = (task.retry_policy(cfg.retry, spec.max_tries),
                     _first(spec.timeout_s, task.timeout_s, cfg.job_timeout_s))
            self._policies[key] = found
        return found

    def _ttl(self, job: float | None, task: float | None, aborted: bool = False) -> int:
        ttl = _first(job, task, self.rt.config.result_ttl_s)
        if aborted:
            ttl = max(ttl or 0, 3600.0)
        return 0 if not ttl else max(1, math.ceil(ttl))

    def _emit(self, event: str, queue: str, task: str, duration_s: float) -> None:
        for observer in self._observers:
            try:
                observer.job_event(event, queue, task, duration_s)
            except Exception:  # an observer must never break a job
                log.exception("observer %r failed on %s", observer, event)

    async def _report_progress(self, queue: str, job_id: str, value: float, message: str) -> None:
        data = encode_progress(Progress(value, message[:500], _now_ms()))
        await self.rt.stores[queue].progress(job_id, data, self.rt.consumer)


def _task_name(st: Started) -> str:
    """The task name of a delivery, best effort (for events about jobs that did not run)."""
    try:
        return decode_spec(st.spec).task
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def _first(*values: float | None) -> float | None:
    for value in values:
        if value is not None:
            return value
    return None


def _decode_history(raw: bytes) -> tuple[ErrorInfo, ...]:
    try:
        return decode_errors(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _extra(running: Running, task: str, st: Started) -> dict[str, Any]:
    return {"job_id": running.job_id, "task": task, "queue": running.queue,
            "attempt": st.attempts}


def _log_end(
    event: str, running: Running, attempt: int, duration_s: float, tail: str,
    task: str = "", level: int = logging.INFO,
) -> None:
    if log.isEnabledFor(level):
        log.log(level, "job %s id=%s task=%s queue=%s attempt=%d duration=%.3fs%s", event,
                running.job_id, task or "-", running.queue, attempt, duration_s, tail,
                extra={"job_id": running.job_id, "task": task, "queue": running.queue,
                       "attempt": attempt, "duration_s": duration_s, "outcome": event})
