"""Runs started jobs: one asyncio task per attempt, decided and handed to the settler.

The executor never talks to Redis itself. It turns what start.lua said about a delivery,
and how the attempt went, into exactly one settle operation; a job cancelled by shutdown
or by losing its entry produces none (its entry stays pending and runs again). A job of a
task with a rate limit is first checked through ``RateChecks`` (batched, like the
settler); one the limit defers produces none either (rate.lua moved it to its slot). A job
of a task with a concurrency limit then takes a lease through ``LeaseChecks`` (batched the
same way); one that finds the limit full produces none (concurrency.lua made it wait), and
whatever op records an attempt that asked for a lease releases it.

Task code is not trusted to cooperate. A cancelled attempt (timeout, abort, lost entry)
whose body is still running ``ESCALATE_S`` later ignored its cancellation: it is
*abandoned*. Its outcome is recorded at once (a timeout follows the retry policy, an abort
ends the job aborted), its slot is freed, and it is cancelled again every ``ESCALATE_S``
until it stops; whatever it does afterwards is ignored. Bodies that may still run in this
process (abandoned tasks, abandoned threads) are *zombies*: a shutdown never hands their
jobs back (they run again after the claim timeout, once this process is gone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._codec import encode_value
from .._context import Context
from .._events import JobEvent
from .._middleware import Invoke, LogContext, Observer
from .._model import ErrorInfo, JobSpec
from .._redis.store import Delivery, SettleOp, Started
from .._retry import Action, Decision, RetryPolicy, decide
from .._task import Task
from .._text import clean
from ..exceptions import SerializationError
from .admission import Refused, admit
from .attempt import Plan, Running
from .limiter import LeaseChecks, RateChecks
from .outcomes import (
    after_attempt,
    attempt_error,
    ended,
    first,
    log_end,
    log_start,
    task_name,
)
from .runner import Outcome, await_attempt, timeout_outcome
from .runtime import Runtime, Slots
from .settler import Settler
from .threads import ThreadRunner

log = logging.getLogger("asyncjobs.worker")

LEFT_BEHIND: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
"""Attempt tasks that ignored their cancellation when the worker stopped: the process exits
without waiting for them."""

ESCALATE_S = 1.0
"""How long a cancelled attempt may take to stop before it is abandoned (and the period of
the repeated cancellations after that)."""


class Executor:
    """Owns the running attempts of a worker."""

    def __init__(self, rt: Runtime, settler: Settler, invoke: Invoke | None = None,
                 observers: Sequence[Observer] = (),
                 log_context: LogContext | None = None) -> None:
        self.rt = rt
        self.settler = settler
        self.slots = Slots(rt.config.concurrency)
        self.threads = ThreadRunner(rt.config.sync_concurrency)
        self.rate_checks = RateChecks(rt)
        self.lease_checks = LeaseChecks(rt)
        self.running: dict[tuple[str, str], Running] = {}  # (queue, entry id)
        self.zombies: dict[tuple[str, str], Running] = {}
        """Attempts no longer tracked as running whose body may still run here."""
        self._invoke = invoke
        self._executing = 0
        self._loop = asyncio.get_running_loop()
        self._policies: dict[tuple[str, int | None, float | None],
                             tuple[RetryPolicy, float | None]] = {}
        self._observers = tuple(observers)
        self._log_context = log_context
        self._idle = asyncio.Event()
        self._idle.set()

    # -- bookkeeping ---------------------------------------------------------------------

    def held(self, queue: str) -> list[Delivery]:
        """Deliveries this worker holds on ``queue``: running or being settled, and those
        of bodies that outlived their cancellation (kept fresh until the process exits, so
        nobody takes over a job whose code still runs here)."""
        held = [r.delivery for (q, _), r in self.running.items() if q == queue]
        held += [r.delivery for (q, _), r in self.zombies.items()
                 if q == queue and r.holds_entry and r.body_alive()]
        return held

    def to_touch(self, queue: str) -> list[Delivery]:
        """What the keep-alive refreshes on ``queue``: what this worker holds, but the
        deliveries a limit check is deciding (its script checks the entry is ours, and may
        release it as it defers the job)."""
        checking = {r.delivery.entry for (q, _), r in self.running.items()
                    if q == queue and r.checking}
        return [d for d in self.held(queue) if d.entry not in checking]

    def alive_entries(self, queue: str) -> list[str]:
        """Entries of ``queue`` whose task body may still run in this process."""
        found = {e for (q, e), r in self.running.items() if q == queue and r.body_alive()}
        found.update(e for (q, e), r in self.zombies.items()
                     if q == queue and r.holds_entry and r.body_alive())
        return sorted(found)

    def leave_behind(self) -> int:
        """Mark every task whose body still runs as left behind (the process exits without
        waiting for it: see ``close_loop``); returns how many."""
        count = 0
        for running in [*self.running.values(), *self.zombies.values()]:
            if running.task is not None and not running.task.done():
                LEFT_BEHIND.add(running.task)
                count += 1
        return count

    def describe(self, task: asyncio.Task[object]) -> str | None:
        """Which job an asyncio task runs (for the loop watchdog, from another thread)."""
        for running in list(self.running.values()):
            if running.task is task:
                name = running.plan.task.name if running.plan else "?"
                return (f"job id={clean(running.job_id)} task={clean(name)} "
                        f"queue={running.queue}")
        return None

    def find_job(self, queue: str, job_id: str) -> Running | None:
        """The running attempt of a job, if this worker has one."""
        for (q, _), r in self.running.items():
            if q == queue and r.job_id == job_id:
                return r
        return None

    def cancel(self, running: Running, reason: str) -> None:
        """Cancel an attempt: 'timeout' and 'abort' end the job (timed out, aborted);
        'shutdown' and 'lost' leave its entry pending. An attempt that does not stop
        within ``ESCALATE_S`` is abandoned (see the module docstring)."""
        if running.task is None or running.task.done() or running.cancel_reason:
            return
        running.cancel_reason = reason
        running.task.cancel()
        if reason != "shutdown":  # shutdown waits for the stragglers itself
            running.escalation = self._loop.call_later(ESCALATE_S, self._escalate, running)

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
        waiters = [asyncio.ensure_future(self._idle.wait())]
        if hurry is not None:
            waiters.append(asyncio.ensure_future(hurry.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return self._idle.is_set()

    def cancel_all(self, reason: str) -> int:
        """Cancel every attempt still running; returns how many."""
        count = 0
        for running in list(self.running.values()):
            if running.task is not None and not running.task.done():
                self.cancel(running, reason)
                count += 1
        return count

    def _forget(self, running: Running, settled: bool = True) -> None:
        key = (running.queue, running.delivery.entry)
        self.running.pop(key, None)
        if running.body_alive():
            self.zombies[key] = running
        if not settled:
            log.warning(
                "job lost id=%s queue=%s: another worker reclaimed it; this result is dropped",
                running.job_id, running.queue,
            )
        if not self.running:
            self._idle.set()

    def _release(self, running: Running, op: SettleOp | None) -> None:
        """The attempt is over for this worker: free its slot and record ``op``."""
        self.slots.give()
        self._executing -= 1
        running.holds_entry = op is None and running.cancel_reason != "lost"
        if op is not None and running.lease:
            op = dataclasses.replace(op, lease=running.lease)
        if op is None:
            self._forget(running)
        else:
            self.settler.submit(running.queue, op, functools.partial(self._forget, running))

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
        if running.escalation is not None:
            running.escalation.cancel()
        if running.abandoned:  # recorded already; the body has stopped at last
            if not task.cancelled():
                task.exception()  # retrieved: nothing left to report
            self._zombie_gone(running)
            return
        if not running.entered or task.cancelled():
            op = self._cancelled(running, started)
        else:
            op = task.result()
        self._release(running, op)

    def _zombie_gone(self, running: Running) -> None:
        key = (running.queue, running.delivery.entry)
        if not running.body_alive() and self.zombies.get(key) is running:
            del self.zombies[key]
            log.warning("abandoned job id=%s queue=%s finally stopped", running.job_id,
                        running.queue)

    def _escalate(self, running: Running) -> None:
        """A cancelled attempt still runs: record its outcome now, cancel it again later."""
        task = running.task
        if task is None or task.done():
            return
        task.cancel()
        running.escalation = self._loop.call_later(ESCALATE_S, self._escalate, running)
        if running.abandoned:
            return
        running.abandoned = True
        name = running.plan.task.name if running.plan else ""
        log.warning("job id=%s task=%s queue=%s ignored its cancellation (%s) for %.0f s: "
                    "abandoned; it is recorded now and cancelled again every %.0f s",
                    running.job_id, name, running.queue, running.cancel_reason, ESCALATE_S,
                    ESCALATE_S)
        op: SettleOp | None = None
        if running.cancel_reason == "timeout" and running.plan is not None:
            plan = running.plan
            outcome = timeout_outcome(plan.timeout_s, time.monotonic() - running.began,
                                      " and ignored its cancellation")
            op = self._record(running, plan, outcome)
        elif running.cancel_reason == "abort":
            op = self._aborted(running, running.plan.started if running.plan else None)
        self._release(running, op)

    def _cancelled(self, running: Running, started: Started) -> SettleOp | None:
        if running.cancel_reason == "abort":
            return self._aborted(running, started)
        name = task_name(started)
        duration = time.monotonic() - running.began
        self._emit("interrupted", running, started, duration_s=duration)
        log_end("interrupted", running.job_id, name, running.queue, started.attempts, duration,
                f" reason={running.cancel_reason or 'cancelled'}",
                fields=running.plan.fields if running.plan else None)
        return None

    def _aborted(self, running: Running, started: Started | None) -> SettleOp:
        name = task_name(started) if started else ""
        duration = time.monotonic() - running.began
        self._emit("aborted", running, started, duration_s=duration)
        log_end("aborted", running.job_id, name, running.queue,
                started.attempts if started else 0, duration,
                fields=running.plan.fields if running.plan else None)
        return ended(running.delivery, "aborted")

    async def _attempt(self, running: Running, st: Started) -> SettleOp | None:
        """Run the delivery if ``admit`` (and its rate limit) lets it, else record why not
        (None: a rate limit deferred it, or the entry is no longer ours)."""
        verdict = admit(st, self.rt.tasks, self.rt.config.max_deliveries, running.queue)
        if isinstance(verdict, Refused):
            if verdict.event:
                self._emit(verdict.event, running, st, task=verdict.task, error=verdict.error,
                           reason=verdict.error.message if verdict.error else None)
            return verdict.op
        if verdict.rate_key is not None:
            running.checking = True
            try:
                go, op = await self._check_rate(running, st, verdict.task, verdict.rate_key)
            finally:
                running.checking = False
            if not go:
                return op
        if verdict.lease is not None:
            running.checking = True
            try:
                go, op = await self._take_lease(running, st, verdict.task, verdict.lease)
            finally:
                running.checking = False
            if not go:
                return op
        return await self._execute(running, st, verdict.spec, verdict.task, verdict.args,
                                   verdict.kwargs, verdict.history)

    async def _check_rate(self, running: Running, st: Started, task: Task[Any, Any],
                          key: str) -> tuple[bool, SettleOp | None]:
        """Ask rate.lua whether the job may start now (one round trip, shared with the
        checks of the jobs started with it): (True, None) to run it; else (False, the
        operation recording why not, or None when nothing is left to record: the script
        deferred the job, or the entry is no longer ours)."""
        assert task.rate_limit is not None
        d = st.delivery
        limit_key = self.rt.stores[running.queue].keys.rate(task.name, key)
        try:
            verdict, slot_ms = await self.rate_checks.check(running.queue, d, limit_key,
                                                            task.rate_limit.interval_us)
        except Exception as exc:  # the entry stays pending: it runs after the claim timeout
            log.warning("rate limit check failed for job id=%s task=%s queue=%s: %s",
                        running.job_id, task.name, running.queue, exc)
            return False, None
        if verdict == "run":
            return True, None
        if verdict == "deferred":
            self._emit("rate_limited", running, st, task=task.name,
                       retry_in_s=max(0, slot_ms - st.now_ms) / 1000)
            log.debug("job deferred id=%s task=%s queue=%s: rate limit %s, its slot is in "
                      "%d ms", running.job_id, task.name, running.queue,
                      task.rate_limit.spec, slot_ms - st.now_ms)
            return False, None
        if verdict == "aborted":
            return False, self._aborted(running, st)
        if verdict == "expired":
            self._emit("expired", running, st, task=task.name)
            log_end("expired", running.job_id, task.name, running.queue, st.attempts, 0.0)
            return False, ended(d, "expired")
        return False, None  # lost: its new owner starts it

    async def _take_lease(self, running: Running, st: Started, task: Task[Any, Any],
                          name: str) -> tuple[bool, SettleOp | None]:
        """Ask concurrency.lua for a lease of the task's limit (one round trip, shared
        with the jobs started with it): (True, None) to run; else (False, the operation
        recording why not, or None: the job waits for a slot, or the entry is no longer
        ours). ``running.lease`` is set first, so an attempt cancelled while it asks still
        releases whatever it got."""
        assert task.concurrency_limit is not None
        running.lease = name
        try:
            verdict, due_ms = await self.lease_checks.acquire(
                running.queue, st.delivery, name, task.concurrency_limit)
        except Exception as exc:  # the entry stays pending: it runs after the claim timeout
            log.warning("concurrency lease failed for job id=%s task=%s queue=%s: %s",
                        running.job_id, task.name, running.queue, exc)
            return False, None
        if verdict == "run":
            return True, None
        running.lease = ""
        if verdict == "waiting":
            self._emit("concurrency_limited", running, st, task=task.name,
                       retry_in_s=max(0, due_ms - st.now_ms) / 1000)
            log.debug("job waits id=%s task=%s queue=%s: concurrency limit %d of %s is "
                      "full", running.job_id, task.name, running.queue,
                      task.concurrency_limit, clean(name))
            return False, None
        if verdict == "aborted":
            return False, self._aborted(running, st)
        return False, None  # lost: its new owner starts it

    async def _execute(
        self, running: Running, st: Started, spec: JobSpec, task: Task[Any, Any],
        args: list[Any], kwargs: dict[str, Any], history: tuple[ErrorInfo, ...],
    ) -> SettleOp:
        policy, timeout = self._policy(task, spec)
        ttl = first(spec.result_ttl_s, task.result_ttl_s, self.rt.config.result_ttl_s)
        ctx = Context(
            job_id=running.job_id, task=task.name, queue=running.queue, attempt=st.attempts,
            max_tries=policy.max_tries, enqueued_ms=st.enqueued_ms, errors=history,
            headers=spec.headers, state=self.rt.state, pool=self.rt.pool,
            worker=self.rt.consumer, report=self._report_progress, loop=self._loop,
            args=tuple(args), kwargs=kwargs,
        )
        self._add_log_context(ctx)
        plan = running.plan = Plan(st, task, policy, timeout, ttl, history, ctx.log_context,
                                   spec.headers)
        running.started = True
        running.began = time.monotonic()
        self._emit("started", running, st)
        call = functools.partial(self._call, running, task, ctx, args, kwargs)
        timer = soft = None
        if timeout:
            timer = self._loop.call_later(timeout, self.cancel, running, "timeout")
        if task.soft_timeout_s and (not timeout or task.soft_timeout_s < timeout):
            soft = self._loop.call_later(task.soft_timeout_s, _soft_timeout, ctx,
                                         task.soft_timeout_s)
        try:
            outcome = await await_attempt(call, timeout, running.timed_out)
        finally:
            if timer is not None:
                timer.cancel()
            if soft is not None:
                soft.cancel()
        return self._record(running, plan, outcome)

    def _record(self, running: Running, plan: Plan, outcome: Outcome) -> SettleOp:
        """Decide what an attempt that ran means and build the operation recording it."""
        st = plan.started
        decision = decide(outcome.kind, outcome.error, st.attempts, plan.policy,
                          random.random())
        payload = b""
        if decision.action is Action.COMPLETE:
            try:
                payload = encode_value(outcome.value)
            except SerializationError as exc:
                outcome = Outcome("error", error=exc, duration_s=outcome.duration_s)
                decision = Decision(Action.FAIL, reason="the result cannot be serialized")
        kind = "complete" if decision.action is Action.COMPLETE else decision.action.value
        error = attempt_error(outcome, st.attempts)
        self._emit(kind, running, st, duration_s=outcome.duration_s, error=error,
                   has_result=decision.action is Action.COMPLETE,
                   retry_in_s=decision.delay_s if decision.action is Action.RETRY else None,
                   reason=decision.reason if decision.action is Action.FAIL else None)
        return after_attempt(st, outcome, decision, payload, plan.history, plan.ttl_s,
                             running.queue, plan.task.name, error, plan.fields)

    def _add_log_context(self, ctx: Context) -> None:
        """``Worker(log_context=...)``'s fields for this attempt; a hook that fails is
        logged, never allowed to stop the job."""
        hook = self._log_context
        if hook is None:
            return
        try:
            ctx.log_context.update(hook(ctx))
        except Exception:
            log.exception("log_context hook failed for job id=%s", clean(ctx.job_id))

    async def _call(
        self, running: Running, task: Task[Any, Any], ctx: Context, args: list[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        assert task.fn is not None
        fn = task.fn
        if task.is_async:
            call: Callable[[], Awaitable[Any]] = functools.partial(fn, ctx, *args, **kwargs)
        else:
            sync = functools.partial(fn, ctx, *args, **kwargs)
            call = functools.partial(self._in_thread, running, sync)
        attempt, fields = ctx.attempt, ctx.log_context  # as they are before middleware runs

        async def logged() -> Any:  # innermost: the start line has what middleware added
            log_start(running.job_id, task.name, running.queue, attempt, fields)
            return await call()

        if self._invoke is None:
            return await logged()
        return await self._invoke(ctx, logged)

    async def _in_thread(self, running: Running, sync: Callable[[], Any]) -> Any:
        def body_done() -> None:
            running.in_thread = False
            self._zombie_gone(running)

        running.in_thread = True
        return await self.threads.run(sync, body_done)

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

    def _emit(self, kind: str, running: Running, st: Started | None, **details: Any) -> None:
        """Tell the observers (if any) about a decision on the job ``running`` holds."""
        if not self._observers:
            return
        plan = running.plan
        event = JobEvent(
            kind, job_id=running.job_id, queue=running.queue,
            task=details.pop("task", plan.task.name if plan else (task_name(st) if st else "")),
            attempt=st.attempts if st else 0, spec=st.spec if st else b"",
            headers=plan.headers if plan else None, **details)
        for observer in self._observers:
            try:
                observer.job_event(event)
            except Exception:  # an observer must never break a job
                log.exception("observer %r failed on %s", observer, kind)

    async def _report_progress(self, queue: str, job_id: str, data: bytes) -> None:
        await self.rt.stores[queue].progress(job_id, data, self.rt.consumer)


def _soft_timeout(ctx: Context, after_s: float) -> None:
    """The task's soft timeout passed: tell it (``ctx.soft_timeout``), and the log."""
    ctx.soft_timeout.set()
    log.warning("job soft timeout id=%s task=%s queue=%s attempt=%d after %gs: the hard "
                "timeout comes next", clean(ctx.job_id), clean(ctx.task), ctx.queue,
                ctx.attempt, after_s)
