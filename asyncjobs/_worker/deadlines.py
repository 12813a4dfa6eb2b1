"""The hard timeouts of the running attempts, on one event-loop timer.

A timer per attempt (``loop.call_later``) costs an allocation, a heap insert and a
removal in the event loop, job after job; most jobs end long before their timeout. Here
the attempts' deadlines sit in a heap and one timer is set at the earliest of them. When
it fires it expires every attempt then due and sets itself for the next deadline.

Contract: ``expire(running)`` is called once, when the loop runs the timer set for the
deadline given to ``add`` (or a later one), as ``loop.call_later`` would, unless ``discard``
came first; a deadline up to ``CLOCK_SLACK_S`` after the timer's is taken with it. ``add``
refuses a timeout that is not a finite number (``ValueError``, nothing changed). An
``expire`` that raises is logged and does not keep the others due at the same time from
expiring. Nothing is left on the loop once no attempt is tracked: the timer goes in the
loop iteration after the last tracked attempt was discarded (one ``call_soon``; at once
when the loop is closed already), so that attempts that end without awaiting, one after
the other in one iteration, share one timer instead of setting and cancelling one each.

A discarded deadline stays in the heap until it reaches the top (then it is dropped) or
until stale entries outnumber live ones (then the heap is rebuilt): each operation costs
O(log n) amortised, whatever the mix of timeouts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable

from .attempt import Running

log = logging.getLogger("asyncjobs.worker")

CLOCK_SLACK_S = 0.001
"""How early a loop timer may run (uvloop keeps time in milliseconds)."""


class Deadlines:
    """Calls ``expire(running)`` at each tracked attempt's deadline (see the module)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 expire: Callable[[Running], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._due: dict[Running, float] = {}
        self._heap: list[tuple[float, int, Running]] = []
        self._seq = itertools.count()  # ties: never compare two Running
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._idle_check: asyncio.Handle | None = None

    def __len__(self) -> int:
        return len(self._due)

    @property
    def armed(self) -> bool:
        """True while the loop holds a timer of ours."""
        return self._timer is not None

    def add(self, running: Running, timeout_s: float) -> None:
        """Expire ``running`` in ``timeout_s`` seconds (from the loop's clock now); adding
        it again replaces its deadline."""
        if not math.isfinite(timeout_s):
            raise ValueError(f"a timeout must be a finite number of seconds, not {timeout_s}")
        when = self._loop.time() + timeout_s
        self._due[running] = when
        heapq.heappush(self._heap, (when, next(self._seq), running))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [e for e in self._heap if self._due.get(e[2]) == e[0]]
            heapq.heapify(self._heap)
        if when < self._at:
            self._arm(when)

    def discard(self, running: Running) -> None:
        """Forget ``running`` (its attempt ended in time): the timer's ``cancel``."""
        self._due.pop(running, None)
        if self._due:
            return
        if self._timer is None or self._loop.is_closed():
            # (closed: a task left behind at shutdown, ended when its coroutine is
            # finalized; nothing can be scheduled on the loop any more)
            self._disarm_if_idle()
        elif self._idle_check is None:
            # Nothing left to time: leave nothing on the loop (an embedded worker that
            # stopped must not be kept alive by its timer until the longest timeout), once
            # this loop iteration is over (see the module).
            self._idle_check = self._loop.call_soon(self._disarm_if_idle)

    def _disarm_if_idle(self) -> None:
        if self._idle_check is not None:
            self._idle_check.cancel()
            self._idle_check = None
        if not self._due:
            self._heap.clear()
            self._disarm()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._at = None, math.inf

    def _arm(self, when: float) -> None:
        self._disarm()
        self._at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # The timer was set for self._at: what is due by then expires now, as a timer of
        # its own would, however early the loop runs it (so it never runs again at once).
        now = max(self._loop.time() + CLOCK_SLACK_S, self._at)
        self._timer, self._at = None, math.inf
        heap, due = self._heap, self._due
        expired = []
        while heap and (heap[0][0] <= now or due.get(heap[0][2]) != heap[0][0]):
            when, _, running = heapq.heappop(heap)
            if due.get(running) == when:  # else discarded, or added again since
                del due[running]
                expired.append(running)
        for running in expired:
            try:
                self._expire(running)
            except Exception:
                log.exception("could not expire job %s at its timeout", running.job_id)
        if heap and heap[0][0] < self._at:  # (an expire may have added, and set it)
            self._arm(heap[0][0])
