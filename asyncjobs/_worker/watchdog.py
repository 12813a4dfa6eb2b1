"""Notices when task code blocks the worker's event loop, and says which job did it.

An ``async def`` task that calls ``time.sleep``, does CPU-bound work or a blocking read
holds the whole event loop: no other job, timer, keep-alive or heartbeat runs meanwhile.
The loop cannot see that itself, so a daemon thread watches a timestamp the loop refreshes
every ``TICK_S``; when it is older than ``BLOCKED_S`` the thread logs a warning naming the
job whose code is running, and once the loop runs again, for how long it was blocked.

What a long block costs is stated in the README (Guarantees): past half the claim timeout
the worker's entries look abandoned and other workers take its jobs over (each shows a
``WorkerLost`` entry in its history); the blocked worker, once it runs again, drops the
outcomes it can no longer record. The watchdog only reports; it never touches Redis.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from .._text import clean

log = logging.getLogger("asyncjobs.worker")

TICK_S = 0.25
BLOCKED_S = 1.0
"""A loop that has not run for this long is reported as blocked."""


class LoopWatchdog:
    """Watches ``loop`` from a daemon thread; ``describe(task)`` names the job a task runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 describe: Callable[[asyncio.Task[object] | None], str],
                 blocked_s: float = BLOCKED_S) -> None:
        self._loop = loop
        self._describe = describe
        self._blocked_s = blocked_s
        self._last = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="asyncjobs-watchdog")
        self.blocks = 0
        """How many times the loop was seen blocked."""

    def start(self) -> None:
        """Start ticking (call from the loop) and watching."""
        self._tick()
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (call from the loop); waits for the watching thread to finish."""
        self._last = time.monotonic()
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        self._thread.join(timeout=1.0)

    def _tick(self) -> None:
        self._last = time.monotonic()
        self._handle = self._loop.call_later(TICK_S, self._tick)

    def _watch(self) -> None:
        blocked_since: float | None = None
        culprit = ""
        while not self._stop.wait(TICK_S):
            lag = time.monotonic() - self._last
            if lag > self._blocked_s and blocked_since is None:
                blocked_since = self._last
                culprit = self._culprit()
                self.blocks += 1
                log.warning("event loop blocked for %.1f s by %s: an async def task is running "
                            "blocking code (make it a plain def task: it runs in a thread)",
                            lag, culprit)
            elif lag <= TICK_S * 2 and blocked_since is not None:
                self._recovered(blocked_since, culprit)
                blocked_since = None
        if blocked_since is not None:  # stopped (from the loop, so it runs again)
            self._recovered(blocked_since, culprit)

    def _recovered(self, since: float, culprit: str) -> None:
        log.warning("event loop ran again after being blocked for %.1f s by %s",
                    self._last - since, culprit)

    def _culprit(self) -> str:
        try:
            task = asyncio.current_task(self._loop)
            return self._describe(task)
        except Exception:  # racing the loop: describe what we can
            return "unknown code"


def describe_with(find: Callable[[asyncio.Task[object]], str | None]
                  ) -> Callable[[asyncio.Task[object] | None], str]:
    """A ``describe`` that asks ``find`` for the job of a task, else names the task."""

    def describe(task: asyncio.Task[object] | None) -> str:
        if task is None:
            return "code outside any task (a callback)"
        found = find(task)
        return found if found is not None else f"task {clean(task.get_name())}"

    return describe
