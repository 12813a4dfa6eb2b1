"""``asyncjobs worker ... --processes N``: N worker processes under one small supervisor, so
one command uses every core.

The supervisor runs no jobs and touches no Redis. It starts each child as
``python -m asyncjobs worker <the same arguments>`` (a fresh interpreter: no fork of a
process with threads or an event loop), then:

- restarts a child that dies, after a backoff that doubles from 1 s up to 30 s per slot
  (reset once the child has run for a minute), and logs it;
- gives up when children keep crashing (``CRASH_LIMIT`` deaths within ``CRASH_WINDOW_S``):
  stops the others and exits 1; a child that exits 2 (a configuration error: every child
  would hit it) stops everything at once with exit 2;
- forwards SIGTERM and SIGINT to every child, so each drains within its grace period, and
  waits for them (a second SIGINT reaches them too: they cancel at once); a child still
  running ``grace + STOP_MARGIN_S`` after the stop is killed; and a child whose supervisor
  died (even by SIGKILL) gets SIGTERM, so no worker is ever left orphaned;
- in burst mode a child that exits 0 is done and not restarted; the supervisor exits when
  all are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("asyncjobs.supervisor")

CRASH_LIMIT = 10
CRASH_WINDOW_S = 60.0
STOP_MARGIN_S = 10.0
_STABLE_S = 60.0
_TICK_S = 0.2
INDEX_ENV = "ASYNCJOBS_WORKER_PROCESS"
"""Set in each child to its slot number (0, 1, ...): only slot 0 prints the banner."""


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = 1.0
    restart_at: float | None = None
    done: bool = False


@dataclass
class Supervisor:
    """Runs ``count`` children of ``argv`` (arguments after ``asyncjobs worker``)."""

    argv: list[str]
    count: int
    grace_s: float
    burst: bool = False
    _slots: list[_Slot] = field(default_factory=list)
    _crashes: deque[float] = field(default_factory=deque)
    _stop_at: float | None = None
    _signals: int = 0

    def run(self) -> int:
        """Supervise until stopped (or, in burst mode, until every child is done);
        returns the exit code."""
        self._slots = [_Slot(i) for i in range(self.count)]
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("supervisor pid %d: %d worker processes", os.getpid(), self.count)
            for slot in self._slots:
                self._start(slot)
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> int:
        code = 0
        while True:
            now = time.monotonic()
            for slot in self._slots:
                code = max(code, self._check(slot, now))
            if code == 2 and self._stop_at is None:
                self._stop(signal.SIGTERM)
            alive = [s for s in self._slots if s.proc is not None and s.proc.poll() is None]
            if self._stop_at is not None or all(s.done for s in self._slots):
                if not alive:
                    return code
                if self._stop_at is not None and now > self._stop_at:
                    for slot in alive:
                        log.error("worker process %d did not stop in time: killed",
                                  _pid(slot))
                        slot.proc.kill()  # type: ignore[union-attr]
            time.sleep(_TICK_S)

    def _check(self, slot: _Slot, now: float) -> int:
        """Reap and restart one slot; returns the exit code it asks for (0, 1 or 2)."""
        if slot.proc is not None and (rc := slot.proc.poll()) is not None:
            slot.proc = None
            if self._stop_at is not None or (self.burst and rc == 0):
                slot.done = True
                return 0 if rc in (0, -signal.SIGTERM, -signal.SIGINT) else 1
            if rc == 2:
                log.error("worker process %d exited 2 (a configuration error): stopping",
                          slot.index)
                slot.done = True
                return 2
            return self._crashed(slot, rc, now)
        if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
            self._start(slot)
        return 0

    def _crashed(self, slot: _Slot, rc: int, now: float) -> int:
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > CRASH_WINDOW_S:
            self._crashes.popleft()
        if len(self._crashes) >= CRASH_LIMIT:
            log.error("worker processes keep crashing (%d deaths in %.0f s): stopping",
                      len(self._crashes), CRASH_WINDOW_S)
            slot.done = True
            self._stop(signal.SIGTERM)
            return 1
        if now - slot.started > _STABLE_S:
            slot.backoff_s = 1.0
        log.warning("worker process %d died (exit %s); restarting it in %.0f s", slot.index,
                    rc, slot.backoff_s)
        slot.restart_at = now + slot.backoff_s
        slot.backoff_s = min(slot.backoff_s * 2, 30.0)
        return 0

    def _start(self, slot: _Slot) -> None:
        env = {**os.environ, INDEX_ENV: str(slot.index)}
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", "asyncjobs", "worker", *self.argv], env=env,
            preexec_fn=_die_with_parent)
        slot.started, slot.restart_at = time.monotonic(), None
        log.info("worker process %d started (pid %d)", slot.index, slot.proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic() + self.grace_s + STOP_MARGIN_S
            log.info("supervisor stopping %d worker process(es)", self.count)
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)


def _die_with_parent() -> None:
    """In the child, before it runs: get SIGTERM (a graceful stop) if the supervisor dies,
    even by SIGKILL, so no worker process is ever orphaned (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _pid(slot: _Slot) -> int:
    return slot.proc.pid if slot.proc is not None else -1


def child_argv(argv: list[str]) -> list[str]:
    """The arguments after ``worker`` in ``argv`` (``sys.argv``), without ``--processes``."""
    rest = argv[argv.index("worker") + 1:] if "worker" in argv else []
    out: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out


MAX_PROCESSES = 1024
"""The most worker processes one supervisor runs (each is a whole worker: its connections,
its ~40 MiB)."""


def processes(value: str) -> int:
    """``--processes``: a number of processes (1 to ``MAX_PROCESSES``), or 'auto' for one per
    CPU this process may run on (its affinity: a container's cpuset, ``taskset``)."""
    if value == "auto":
        usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return min(MAX_PROCESSES, len(usable) if usable else os.cpu_count() or 1)
    count = int(value)
    if not 1 <= count <= MAX_PROCESSES:
        raise ValueError(f"--processes must be 1 to {MAX_PROCESSES} (or auto)")
    return count
