"""One attempt's decision path, from a started delivery to the one operation that records
it: admit it (``admission.admit``), check its task's rate limit (``RateChecks``), take a
lease of its concurrency limit (``LeaseChecks``), run the task under its timeout (and soft
timeout) with the worker's middleware, and decide what the outcome means (``_retry.decide``,
``outcomes.after_attempt``).

A deferral by a limit, and an entry that is no longer this worker's, produce no operation
(None); every other path produces exactly one. The bookkeeping of running attempts (slots,
cancellation, abandoned bodies, hand-back) is the ``Executor``'s; this path calls back into
it only to cancel an attempt at its timeout and to note a thread body that finally ended.
Observers hear each decision through ``emit``. Nothing here talks to Redis but through the
limit checks and the progress report.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, cast

from .._codec import encode_value
from .._context import Context
from .._events import JobEvent
from .._middleware import Invoke, LogContext, Observer, check_log_context
from .._model import ErrorInfo, JobSpec
from .._redis import kept
from .._redis.values import SettleOp, Started
from .._retry import Action, Decision, RetryPolicy, decide
from .._task import Task
from .._text import class_name, clean, safe_str
from ..exceptions import ConfigurationError, SerializationError
from . import late
from .admission import Refused, admit
from .attempt import Plan, Running
from .deadlines import Deadlines
from .limiter import LeaseChecks, RateChecks
from .outcomes import (
    after_attempt,
    attempt_error,
    dead,
    ended,
    first,
    log_end,
    log_start,
    record_ttl,
    sized,
    task_name,
    unserializable_reason,
)
from .runner import Outcome, await_attempt
from .runtime import Runtime
from .threads import ThreadRunner

log = logging.getLogger("asyncjobs.worker")

BAD_POLICY = "asyncjobs.BadRetryPolicy"
"""The error type of a job dead-lettered because its task's retry options cannot work."""


class AttemptPath:
    """Decides and runs one attempt at a time (many at once: it keeps no per-attempt
    state of its own; each attempt's is its ``Running``)."""

    def __init__(self, rt: Runtime, threads: ThreadRunner,
                 cancel: Callable[[Running, str], None],
                 body_ended: Callable[[Running], None], invoke: Invoke | None = None,
                 observers: Sequence[Observer] = (),
                 log_context: LogContext | None = None) -> None:
        self.rt = rt
        self.threads = threads
        self.rate_checks = RateChecks(rt)
        self.lease_checks = LeaseChecks(rt)
        self._cancel = cancel
        self._zombie_gone = body_ended
        self._invoke = invoke
        self._observers = tuple(observers)
        check_log_context(log_context)
        self._log_context = log_context
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop, self._timed_out)
        self._policies: dict[tuple[str, int | None, float | None],
                             tuple[RetryPolicy, float | None]] = {}
        self._failed_hooks: set[object] = set()
        """The hooks (by id) whose failure was logged with its traceback already."""

    async def run(self, running: Running, st: Started) -> SettleOp | None:
        """Run the delivery if ``admit`` (and its rate limit) lets it, else record why not
        (None: a rate limit deferred it, or the entry is no longer ours)."""
        verdict = admit(st, self.rt.tasks, self.rt.config.max_deliveries, running.queue)
        if isinstance(verdict, Refused):
            if verdict.event:
                self.emit(verdict.event, running, st, task=verdict.task, error=verdict.error,
                           reason=verdict.error.message if verdict.error else None)
            return verdict.op
        checked = time.monotonic()
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
        if (verdict.rate_key is not None or verdict.lease is not None) \
                and not await self._still_ours(running, st, checked):
            return None
        return await self._execute(running, st, verdict.spec, verdict.task, verdict.args,
                                   verdict.kwargs, verdict.history)

    async def _still_ours(self, running: Running, st: Started, checked: float) -> bool:
        """After the limit checks begun at ``checked`` (monotonic): whether the job may
        begin. The keep-alive leaves an entry alone while a check decides it, so checks
        answered late (a stall) are confirmed like a late start (``late``): an entry
        taken over meanwhile is not run here (its new owner runs it)."""
        late.stamp([(running.queue, st)], checked, self.rt.keepalive_every_s)
        try:
            await late.confirmed(self.rt, [(running.queue, st)])
        except Exception as exc:  # the entry stays pending: it runs after the claim timeout
            log.warning("could not confirm job id=%s queue=%s is still this worker's after "
                        "its limit checks: %s", running.job_id, running.queue, exc)
            return False
        if st.verdict == "run":
            return True
        log.warning("job id=%s queue=%s not started: %s after its limit checks",
                    running.job_id, running.queue,
                    "taken over by another worker" if st.verdict == "lost"
                    else "Redis answered too late to confirm it is still this worker's")
        return False

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
            self.emit("rate_limited", running, st, task=task.name,
                       retry_in_s=max(0, slot_ms - st.now_ms) / 1000)
            log.debug("job deferred id=%s task=%s queue=%s: rate limit %s, its slot is in "
                      "%d ms", running.job_id, task.name, running.queue,
                      task.rate_limit.spec, slot_ms - st.now_ms)
            return False, None
        if verdict == "aborted":
            return False, self.aborted(running, st)
        if verdict == "expired":
            self.emit("expired", running, st, task=task.name)
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
            self.emit("concurrency_limited", running, st, task=task.name,
                       retry_in_s=max(0, due_ms - st.now_ms) / 1000)
            log.debug("job waits id=%s task=%s queue=%s: concurrency limit %d of %s is "
                      "full", running.job_id, task.name, running.queue,
                      task.concurrency_limit, clean(name))
            return False, None
        if verdict == "aborted":
            return False, self.aborted(running, st)
        return False, None  # lost: its new owner starts it

    async def _execute(
        self, running: Running, st: Started, spec: JobSpec, task: Task[Any, Any],
        args: list[Any], kwargs: dict[str, Any], history: tuple[ErrorInfo, ...],
    ) -> SettleOp:
        try:
            policy, timeout = self._policy(task, spec)
        except (ConfigurationError, TypeError, ValueError) as exc:  # its task's retry options
            why = f"task {task.name!r} cannot run: {safe_str(exc, 500)}"
            self.emit("failed", running, st, task=task.name, reason=why, error=ErrorInfo(
                BAD_POLICY, why, "", st.attempts, st.now_ms))
            return dead(st, history, BAD_POLICY, why, running.queue)
        ttl = first(spec.result_ttl_s, task.result_ttl_s, self.rt.config.result_ttl_s)
        ctx = Context(
            job_id=running.job_id, task=task.name, queue=running.queue, attempt=st.attempts,
            max_tries=policy.max_tries, enqueued_ms=st.enqueued_ms, errors=history,
            headers=spec.headers, state=self.rt.state, pool=self.rt.pool,
            worker=self.rt.consumer, report=functools.partial(self._report_progress, running),
            loop=self._loop,
            args=tuple(args), kwargs=kwargs,
        )
        self._add_log_context(ctx)
        plan = running.plan = Plan(st, task, policy, timeout, ttl, history, ctx.log_context,
                                   spec.headers)
        running.started = True
        running.began = time.monotonic()
        if self._observers:
            self.emit("started", running, st)
        call = functools.partial(self._call, running, task, ctx, args, kwargs)
        soft = None
        try:
            if timeout:
                self._deadlines.add(running, timeout)
            if task.soft_timeout_s and (not timeout or task.soft_timeout_s < timeout):
                soft = self._loop.call_later(task.soft_timeout_s, _soft_timeout, ctx,
                                             task.soft_timeout_s)
            outcome = await await_attempt(call, timeout, running.timed_out, running.task)
        finally:
            if timeout:
                self._deadlines.discard(running)
            if soft is not None:
                soft.cancel()
        if running.cancel_reason == "abort":  # the code swallowed the abort's cancellation
            return self.aborted(running, st)  # (a value it returned is not a result)
        return self.record(running, plan, outcome)

    def record(self, running: Running, plan: Plan, outcome: Outcome) -> SettleOp:
        """Decide what an attempt that ran means and build the operation recording it."""
        st = plan.started
        try:
            decision = decide(outcome.kind, outcome.error, st.attempts, plan.policy,
                              random.random())
        except BaseException as exc:  # retry_on's types ran code of their own, and it raised
            decision = Decision(Action.FAIL, reason="the retry policy could not decide: "
                                f"{class_name(type(exc), '__name__')}: {safe_str(exc, 200)}")
        payload = b""
        if decision.action is Action.COMPLETE:
            try:
                payload = sized(encode_value(outcome.value), self.rt.bulk_limit())
            except BaseException as exc:  # SerializationError, or the value's own code raised
                # (whatever it raises: the encode awaits nothing, so even a CancelledError
                # is the value's, never this attempt's cancellation, which the runner saw)
                outcome = Outcome("error", error=_unserializable(exc),
                                  duration_s=outcome.duration_s)
                decision = Decision(Action.FAIL, reason=unserializable_reason(outcome.error))
        kind = "complete" if decision.action is Action.COMPLETE else decision.action.value
        error = attempt_error(outcome, st.attempts)
        if self._observers:
            self.emit(kind, running, st, duration_s=outcome.duration_s, error=error,
                      has_result=decision.action is Action.COMPLETE,
                      retry_in_s=decision.delay_s if decision.action is Action.RETRY else None,
                      reason=decision.reason if decision.action is Action.FAIL else None)
        head = b""
        if (decision.action is Action.COMPLETE and st.plain and not running.reported
                and record_ttl(plan.ttl_s) >= kept.MIN_TTL_S and kept.tag_of(running.job_id)):
            head = kept.packed_head(st.attempts, st.enqueued_ms, st.now_ms, st.spec,
                                    self.rt.consumer.encode())
        return after_attempt(st, outcome, decision, payload, plan.history, plan.ttl_s,
                             running.queue, plan.task.name, error, plan.fields, head)

    def aborted(self, running: Running, started: Started | None) -> SettleOp:
        self.tell_aborted(running, started)
        return ended(running.delivery, "aborted")

    def tell_aborted(self, running: Running, started: Started | None, tail: str = "") -> None:
        """Tell the observers and the log that the job ``running`` holds ended aborted."""
        name = task_name(started) if started else ""
        duration = time.monotonic() - running.began
        self.emit("aborted", running, started, duration_s=duration)
        log_end("aborted", running.job_id, name, running.queue,
                started.attempts if started else 0, duration, tail=tail,
                fields=running.plan.fields if running.plan else None)

    def _add_log_context(self, ctx: Context) -> None:
        """``Worker(log_context=...)``'s fields for this attempt; a hook that fails
        (whatever it raises) is logged, never allowed to stop the job: its first failure
        with the traceback, later ones in one line each."""
        hook = self._log_context
        if hook is None:
            return
        fields: object = None
        try:
            fields = hook(ctx)
            ctx.log_context.update(fields)
        except BaseException as exc:  # no await here: never a real cancellation
            if isinstance(fields, Coroutine):  # an async __call__ that slipped through
                fields.close()
            self._hook_failed(self._log_context, exc, "log_context hook failed for job "
                              f"id={clean(ctx.job_id)}")

    def _hook_failed(self, hook: object, exc: BaseException, what: str) -> None:
        """Log a user hook's failure: with its traceback the first time that hook fails,
        in one line (naming the error) after that."""
        key = id(hook)
        if key not in self._failed_hooks:
            self._failed_hooks.add(key)
            log.error("%s", what, exc_info=exc)
        else:
            log.error("%s: %s: %s (traceback logged at its first failure)", what,
                      class_name(type(exc), '__name__'), clean(safe_str(exc, 200)))

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
        if self._invoke is None:
            log_start(running.job_id, task.name, running.queue, attempt, fields)
            return await call()

        async def logged() -> Any:  # innermost: the start line has what middleware added
            log_start(running.job_id, task.name, running.queue, attempt, fields)
            return await call()

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

    def emit(self, kind: str, running: Running, st: Started | None, **details: Any) -> None:
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
            job_event: Callable[[JobEvent], object] = observer.job_event
            try:
                told = job_event(event)
            except BaseException as exc:  # an observer must never break a job (no await
                # here: never a real cancellation; SystemExit from a hook is not a stop)
                self._hook_failed(observer, exc, f"observer {clean(safe_str(observer, 200))} "
                                  f"failed on {kind} of job id={clean(running.job_id)}")
                continue
            if told is not None:
                self._not_awaited(observer, told)

    def _not_awaited(self, observer: Observer, told: object) -> None:
        """An observer returned something: a coroutine (it is async after all) is closed,
        never awaited, and said once."""
        if isinstance(told, Coroutine):
            told.close()
            key = ("coroutine", id(observer))
            if key not in self._failed_hooks:
                self._failed_hooks.add(key)
                log.error("observer %s returned a coroutine, which is not awaited: "
                          "job_event must be a plain def (hand async work to a task)",
                          clean(safe_str(observer, 200)))

    def _timed_out(self, running: Running) -> None:
        self._cancel(running, "timeout")

    async def _report_progress(self, running: Running, queue: str, job_id: str,
                               data: bytes) -> None:
        running.reported = True
        await self.rt.stores[queue].progress(job_id, data, self.rt.consumer)


def _unserializable(exc: BaseException) -> SerializationError:
    """The error recorded for a result that cannot be encoded: ``exc`` itself when it is a
    ``SerializationError``; else one naming what the value's own code raised (its cause,
    so its traceback is recorded too)."""
    if issubclass(type(exc), SerializationError):  # (isinstance reads its __class__)
        return cast(SerializationError, exc)
    error = SerializationError(f"cannot serialize the result: "
                               f"{class_name(type(exc), '__name__')}: {safe_str(exc, 200)}")
    error.__cause__ = exc
    return error


def _soft_timeout(ctx: Context, after_s: float) -> None:
    """The task's soft timeout passed: tell it (``ctx.soft_timeout``), and the log."""
    ctx.soft_timeout.set()
    log.warning("job soft timeout id=%s task=%s queue=%s attempt=%d after %gs: the hard "
                "timeout comes next", clean(ctx.job_id), clean(ctx.task), ctx.queue,
                ctx.attempt, after_s)
