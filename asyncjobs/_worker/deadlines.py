"""The hard timeouts of the running attempts, on one event-loop timer.

A timer per attempt (``loop.call_later``) costs an allocation, a heap insert and a
removal in the event loop, job after job; most jobs end long before their timeout. Here
the attempts' deadlines sit in a dict and one timer is set at the earliest of them. When
it fires it expires every attempt then due and sets itself for the next deadline.

Contract: ``expire(running)`` is called once, when the loop runs the timer set for the
deadline given to ``add`` (or a later one), as ``loop.call_later`` would, unless ``discard``
came first; a deadline up to ``CLOCK_SLACK_S`` after the timer's is taken with it. An
``expire`` that raises is logged and does not keep the others due at the same time from
expiring. Nothing is left on the loop once no attempt is tracked.
"""

from __future__ import annotations

import asyncio
import logging
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
        self._timer: asyncio.TimerHandle | None = None
        self._at = float("inf")

    def __len__(self) -> int:
        return len(self._due)

    @property
    def armed(self) -> bool:
        """True while the loop holds a timer of ours."""
        return self._timer is not None

    def add(self, running: Running, timeout_s: float) -> None:
        """Expire ``running`` in ``timeout_s`` seconds (from the loop's clock now)."""
        when = self._loop.time() + timeout_s
        self._due[running] = when
        if when < self._at:
            self._arm(when)

    def discard(self, running: Running) -> None:
        """Forget ``running`` (its attempt ended in time): the timer's ``cancel``."""
        self._due.pop(running, None)
        if not self._due and self._timer is not None:
            # Nothing left to time: leave nothing on the loop (an embedded worker that
            # stopped must not be kept alive by its timer until the longest timeout).
            self._timer.cancel()
            self._timer, self._at = None, float("inf")

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # The timer was set for self._at: what is due by then expires now, as a timer of
        # its own would, however early the loop runs it (so it never runs again at once).
        now = max(self._loop.time() + CLOCK_SLACK_S, self._at)
        self._timer, self._at = None, float("inf")
        due = [running for running, when in self._due.items() if when <= now]
        for running in due:
            del self._due[running]
        if self._due:  # a deadline discarded early leaves the timer set: move it on
            self._arm(min(self._due.values()))
        for running in due:
            try:
                self._expire(running)
            except Exception:
                log.exception("could not expire job %s at its timeout", running.job_id)
