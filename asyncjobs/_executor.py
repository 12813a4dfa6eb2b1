"""Runs started jobs: one asyncio task per attempt, decided and handed to the settler.

The executor never talks to Redis itself. It turns what start.lua said about a delivery,
and how the attempt went, into exactly one settle operation; a job cancelled by shutdown
or by losing its entry produces none (its entry stays pending and runs again).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from ._codec import (
    decode_spec,
    encode_progress,
    encode_value,
)
from ._context import Context
from ._middleware import Invoke, Observer
from ._model import ErrorInfo, JobSpec, Progress
from ._outcomes import (
    after_attempt,
    dead,
    ended,
    first,
    garbage,
    history_of,
    log_end,
    log_start,
    now_ms,
    task_name,
)
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
        name = task_name(started)
        if running.cancel_reason == "abort":
            self._emit("aborted", running.queue, name, 0.0)
            log_end("aborted", running.job_id, name, running.queue, started.attempts, 0.0)
            return ended(started.delivery, "aborted")
        self._emit("interrupted", running.queue, name, 0.0)
        log_end("interrupted", running.job_id, name, running.queue, started.attempts, 0.0,
                f" reason={running.cancel_reason}")
        return None

    async def _attempt(self, running: Running, st: Started) -> SettleOp:
        """Check what start.lua said and what the job carries, then run it."""
        queue = running.queue
        if st.verdict == "stale":
            return SettleOp(st.delivery.entry, st.delivery.job_id, "ack")
        if st.verdict == "missing":
            self._emit("failed", queue, "", 0.0)
            return garbage(st.delivery)
        if st.verdict in ("expired", "aborted"):
            name = task_name(st)
            self._emit(st.verdict, queue, name, 0.0)
            log_end(st.verdict, running.job_id, name, queue, st.attempts, 0.0)
            return ended(st.delivery, st.verdict)
        try:
            spec = decode_spec(st.spec)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._dead(st, (), "asyncjobs.UndecodablePayload",
                              f"the job's payload cannot be decoded: {exc}", queue)
        history = history_of(st)
        task = self.rt.tasks.get(spec.task)
        if task is None:
            known = ", ".join(sorted(self.rt.tasks)) or "none"
            return self._dead(st, history, "asyncjobs.UnknownTask",
                              f"unknown task {spec.task!r} (this worker knows: {known})", queue)
        if st.delivery.deliveries > self.rt.config.max_deliveries:
            return self._dead(st, history, "asyncjobs.PoisonJob",
                              f"delivered {st.delivery.deliveries} times without finishing: the "
                              "worker died or was killed each time it ran this job", queue)
        try:
            args, kwargs = task.converter.convert(spec.args, spec.kwargs)
        except msgspec.ValidationError as exc:
            return self._dead(st, history, "asyncjobs.BadArguments",
                              f"arguments do not match task {task.name!r}: {exc}", queue)
        return await self._execute(running, st, spec, task, args, kwargs, history)

    def _dead(self, st: Started, history: tuple[ErrorInfo, ...], kind: str, why: str,
              queue: str) -> SettleOp:
        self._emit("failed", queue, task_name(st), 0.0)
        return dead(st, history, kind, why, queue)

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
        log_start(running.job_id, task.name, running.queue, st.attempts)
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
        event = "complete" if decision.action is Action.COMPLETE else decision.action.value
        self._emit(event, running.queue, task.name, outcome.duration_s)
        ttl = first(spec.result_ttl_s, task.result_ttl_s, self.rt.config.result_ttl_s)
        return after_attempt(st, outcome, decision, payload, history, ttl, running.queue,
                             task.name)

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
                     first(spec.timeout_s, task.timeout_s, cfg.job_timeout_s))
            self._policies[key] = found
        return found

    def _emit(self, event: str, queue: str, task: str, duration_s: float) -> None:
        for observer in self._observers:
            try:
                observer.job_event(event, queue, task, duration_s)
            except Exception:  # an observer must never break a job
                log.exception("observer %r failed on %s", observer, event)

    async def _report_progress(self, queue: str, job_id: str, value: float, message: str) -> None:
        data = encode_progress(Progress(value, message[:500], now_ms()))
        await self.rt.stores[queue].progress(job_id, data, self.rt.consumer)
