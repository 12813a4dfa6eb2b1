"""Runs started jobs: one asyncio task per attempt, decided and handed to the settler.

The executor owns the bookkeeping of running attempts: slots, the running and zombie
tables, cancellation (timeout, abort, lost entry, shutdown) and its escalation, and what
the keep-alive and the hand-back see. Each attempt's decision path (admission, rate and
concurrency limits, the task's call, what its outcome means) is ``AttemptPath``'s
(``attempt_path.py``). The executor never talks to Redis itself. Every attempt ends in
exactly one settle operation, except a job cancelled by shutdown or by losing its entry
(its entry stays pending and runs again) and one a limit deferred (the limit's script
moved it); whatever op records an attempt that asked for a lease releases it.

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
import contextvars
import dataclasses
import functools
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any

from .._middleware import Invoke, LogContext, Observer
from .._redis.values import Delivery, SettleOp, Started
from .._text import clean
from .attempt import Running
from .attempt_path import AttemptPath
from .outcomes import (
    log_end,
    task_name,
)
from .runner import current_task, timeout_outcome
from .runtime import Runtime, Slots
from .settler import ABORTED_INSTEAD, NOT_OURS, SETTLED, Settler
from .threads import ThreadRunner

log = logging.getLogger("asyncjobs.worker")

RUNNING_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "asyncjobs_running_job", default=None)
"""The id of the job whose attempt runs the current code: set in each attempt's task, and
so in every task or thread its code starts (they copy the context). Tells a cancel sent by
a job's code from one sent by the app or the event loop (``serving.Settling``)."""

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
        self.path = AttemptPath(rt, self.threads, self.cancel, self._zombie_gone, invoke,
                                observers, log_context)
        self.running: dict[tuple[str, str], Running] = {}  # (queue, entry id)
        self.zombies: dict[tuple[str, str], Running] = {}
        """Attempts no longer tracked as running whose body may still run here."""
        self._executing = 0
        self._loop = asyncio.get_running_loop()
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

    def _forget(self, running: Running, settled: int = SETTLED) -> None:
        key = (running.queue, running.delivery.entry)
        self.running.pop(key, None)
        if running.body_alive():
            self.zombies[key] = running
        if settled == NOT_OURS:
            log.warning(
                "job lost id=%s queue=%s: another worker reclaimed it; this result is dropped",
                running.job_id, running.queue,
            )
        elif settled == ABORTED_INSTEAD:  # the retry told at the attempt's end is not made
            self.path.tell_aborted(
                running, running.plan.started if running.plan else None,
                tail=" reason='its abort was requested as the attempt ended: no retry'")
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
        RUNNING_JOB.set(running.job_id)  # (this task's own context: it leaks nowhere)
        try:
            return await self.path.run(running, started)
        except asyncio.CancelledError:
            return self._cancelled(running, started)
        except Exception:  # a bug of ours: keep the entry pending, it will run again
            log.exception("internal error running job id=%s", running.job_id)
            return None
        except BaseException:
            if current_task() is not running.task:
                raise  # GeneratorExit: the coroutine itself is being closed
            # Raised by user code where we did not expect it: escaping here would end the
            # event loop (KeyboardInterrupt, SystemExit) or leave the slot taken for ever.
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
            try:
                op = task.result()
            except BaseException as failure:  # (``_run`` lets nothing through)
                log.error("internal error running job id=%s", running.job_id,
                          exc_info=failure)
                op = None
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
            op = self.path.record(running, plan, outcome)
        elif running.cancel_reason == "abort":
            op = self.path.aborted(running, running.plan.started if running.plan else None)
        self._release(running, op)

    def _cancelled(self, running: Running, started: Started) -> SettleOp | None:
        if running.cancel_reason == "abort":
            return self.path.aborted(running, started)
        name = task_name(started)
        duration = time.monotonic() - running.began
        self.path.emit("interrupted", running, started, duration_s=duration)
        log_end("interrupted", running.job_id, name, running.queue, started.attempts, duration,
                f" reason={running.cancel_reason or 'cancelled'}",
                fields=running.plan.fields if running.plan else None)
        return None
