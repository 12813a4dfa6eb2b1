"""``asyncjobs worker ... --processes N``: N worker processes under one small supervisor, so
one command uses every core.

The supervisor runs no jobs and touches no Redis. It starts each child as
``python -m _asyncjobs_entry worker <the same arguments>`` (a fresh interpreter: no fork of a
process with threads or an event loop), each in a process group of its own (a terminal's
Ctrl-C reaches the supervisor alone, which forwards it once), then:

- starts the first child alone, and the others once it is ready, or ``ALONE_S`` after it
  has loaded the application, however long its imports take (``LOAD_S`` after its start
  at most): a worker that cannot start (Redis unreachable, a lifespan that fails)
  then fails as one process would, with one error and a prompt exit, whatever N. While no
  child has ever been ready, a child that dies is not restarted; when none is left, the
  supervisor exits with the first one's code;
- restarts a child that dies, after a backoff that doubles from 1 s up to 30 s per slot
  (reset once the child has run for a minute), and logs it;
- gives up when children keep crashing (``CRASH_LIMIT`` deaths within ``CRASH_WINDOW_S``):
  stops the others and exits 1; a child that exits 2 (a configuration error: every child
  would hit it) stops everything at once with exit 2;
- forwards SIGTERM and SIGINT to every child, so each drains within its grace period, and
  waits for them (a second SIGINT reaches them too: they cancel at once; a child not ready
  yet gets SIGTERM for either, which ends its start-up quietly); once stopping it starts
  no child; a child still running ``grace + STOP_MARGIN_S`` after the stop is killed; and
  a child whose supervisor died (even by SIGKILL) gets SIGTERM, so no worker is ever left
  orphaned;
- in burst mode a child that exits 0 is done and not restarted, and so is one that exits
  ``NOT_DRAINED`` (it drained all but a queue it cannot read, and said so; the supervisor
  then exits 1); any other exit is a crash, restarted as ever; the supervisor exits when
  every child is done.

A child says it has loaded the application (``<pid> loaded``), then that it is ready
(``<pid>``), each a line on a pipe whose write end it inherits (its fd number in
``READY_ENV``; see ``ready_notice``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from .._exit_signals import quiet_exit
from .._worker.shutdown import AFTER_GRACE_S
from . import entry

log = logging.getLogger("asyncjobs.supervisor")

CRASH_LIMIT = 10
CRASH_WINDOW_S = 60.0
STOP_MARGIN_S = AFTER_GRACE_S + 2.0
"""Past its grace period, how long a stopping child may take before it is killed: what a
worker needs at most (``AFTER_GRACE_S``), and 2 s for its interpreter to exit."""
ALONE_S = 5.0
"""How long the first child starts alone once it has loaded the application: the others
start once it is ready, or after this."""
LOAD_S = 30.0
"""How long the others wait at most for the first child to load the application."""
_STABLE_S = 60.0
_TICK_S = 0.2
INDEX_ENV = "ASYNCJOBS_WORKER_PROCESS"
"""Set in each child to its slot number (0, 1, ...): only slot 0 prints the banner."""
READY_ENV = "ASYNCJOBS_READY_FD"
"""Set in each child to the fd of the pipe it tells the supervisor it is ready on."""
_CLEAN = (0, -signal.SIGTERM, -signal.SIGINT)
"""How a child asked to stop may end without a fault."""

NOT_DRAINED = 3
"""A burst child's exit when it drained every queue but one it cannot read (``NotDrained``):
done, not restarted. Only a child exits so (``INDEX_ENV`` set); a worker command of its own
exits 1, as for any failure."""


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = 1.0
    restart_at: float | None = None
    done: bool = False
    ready: bool = False
    signalled: int = 0
    """How many of the stop signals (``Supervisor._signals``) this child was sent."""


@dataclass
class Supervisor:
    """Runs ``count`` children of ``argv`` (arguments after ``asyncjobs worker``)."""

    argv: list[str]
    count: int
    grace_s: float
    burst: bool = False
    exiting: bool = False
    """The process exits once ``run`` returns (the program): SIGTERM and SIGINT are then
    ignored for a while (``_exit_signals``), not given back, so that a Ctrl-C pressed once
    too often does not turn the exit code into 130."""
    _slots: list[_Slot] = field(default_factory=list)
    _crashes: deque[float] = field(default_factory=deque)
    _stop_at: float | None = None
    _signals: list[int] = field(default_factory=list)
    _ever_ready: bool = False
    _failed: int | None = None
    """The exit code of the first child that died while none had ever been ready."""
    _fds: dict[str, int] = field(default_factory=dict)
    _heard: bytes = b""

    def run(self) -> int:
        """Supervise until stopped (or, in burst mode, until every child is done);
        returns the exit code."""
        now = time.monotonic()
        self._slots = [_Slot(i, restart_at=now if i == 0 else now + LOAD_S)
                       for i in range(self.count)]
        self._fds["ready_r"], self._fds["ready_w"] = os.pipe()
        self._fds["wake_r"], self._fds["wake_w"] = os.pipe()
        for fd in self._fds.values():
            os.set_blocking(fd, False)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        wakeup = signal.set_wakeup_fd(self._fds["wake_w"], warn_on_full_buffer=False)
        try:
            log.info("supervisor pid %d: %d worker processes", os.getpid(), self.count)
            return self._loop()
        finally:
            signal.set_wakeup_fd(wakeup)
            if self.exiting:
                quiet_exit()
            else:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            for fd in self._fds.values():
                os.close(fd)

    def _loop(self) -> int:
        code = 0
        while True:
            self._hear()
            now = time.monotonic()
            for slot in self._slots:
                code = max(code, self._check(slot, now))
            if code == 2 and self._stop_at is None:
                self._stop(signal.SIGTERM)
            self._forward()
            alive = [s for s in self._slots if s.proc is not None]
            if self._failed is not None and not alive and not self._ever_ready:
                log.info("no worker process could start: stopping (exit %d)", self._failed)
                return self._failed
            if self._stop_at is not None or all(s.done for s in self._slots):
                if not alive:
                    return code
                if self._stop_at is not None and now > self._stop_at:
                    for slot in alive:
                        log.error("worker process %d did not stop in time: killed",
                                  _pid(slot))
                        slot.proc.kill()  # type: ignore[union-attr]
            self._wait()

    def _wait(self) -> None:
        """Until a child says it is ready, a signal comes, or ``_TICK_S`` passes."""
        with contextlib.suppress(InterruptedError):
            select.select([self._fds["ready_r"], self._fds["wake_r"]], [], [], _TICK_S)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fds["wake_r"], 512):
                pass

    def _hear(self) -> None:
        """Read the notices the children wrote (``<pid> loaded``, then ``<pid>``: ready)."""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._fds["ready_r"], 65536):
                self._heard += chunk
        *lines, self._heard = self._heard.split(b"\n")
        now = time.monotonic()
        for line in lines:
            for slot in self._slots:
                if slot.proc is None:
                    continue
                pid = str(slot.proc.pid).encode()
                if line == pid:
                    slot.ready = True
                elif line == pid + b" loaded" and not self._ever_ready:
                    for other in self._slots:  # the others start ALONE_S from now at most
                        if other.proc is None and other.restart_at is not None:
                            other.restart_at = min(other.restart_at, now + ALONE_S)
        if not self._ever_ready and any(s.ready for s in self._slots):
            self._ever_ready = True  # the others start now (those that died too)
            for slot in self._slots:
                if slot.proc is None and not slot.done and (slot.restart_at or now) >= now:
                    slot.restart_at = now

    def _check(self, slot: _Slot, now: float) -> int:
        """Reap and restart one slot; returns the exit code it asks for (0, 1 or 2)."""
        if slot.proc is not None and (rc := slot.proc.poll()) is not None:
            self._hear()  # a notice written just before the exit
            slot.proc, ready, slot.ready = None, slot.ready, False
            if self._stop_at is not None or (self.burst and rc in (0, NOT_DRAINED)):
                # (NOT_DRAINED: drained but for a queue it cannot read, as it said in one
                # line: run again, it would say it again. Any other exit is a crash.)
                slot.done = True
                return 0 if rc in _CLEAN else 1
            if rc == 2:
                log.error("worker process %d exited 2 (a configuration error): stopping",
                          slot.index)
                slot.done = True
                return 2
            if not ready and not self._ever_ready:
                # It could not start, and no other has yet: not restarted unless one does.
                self._failed = rc if self._failed is None else self._failed
                if self._failed < 0:
                    self._failed = 1
                return 0
            return self._crashed(slot, rc, now)
        if (slot.proc is None and slot.restart_at is not None and now >= slot.restart_at
                and self._stop_at is None):
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
        ready_w = self._fds["ready_w"]
        env = {**os.environ, INDEX_ENV: str(slot.index), READY_ENV: str(ready_w)}
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", entry.module(), "worker", *self.argv], env=env,
            process_group=0, pass_fds=(ready_w,),
            preexec_fn=functools.partial(_in_child, os.getpid()))
        slot.started, slot.restart_at, slot.ready, slot.signalled = (
            time.monotonic(), None, False, 0)
        log.info("worker process %d started (pid %d)", slot.index, slot.proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        """Stop: every child gets ``signum`` (``_forward``); no child starts again."""
        self._signals.append(signum)
        if self._stop_at is None:
            self._stop_at = time.monotonic() + self.grace_s + STOP_MARGIN_S
            log.info("supervisor stopping %d worker process(es)", self.count)

    def _forward(self) -> None:
        """Send each running child the stop signals it has not had yet: SIGINT as SIGTERM
        to a child not ready yet (it has no job to drain, and may not handle SIGINT yet)."""
        count = len(self._signals)  # (one the handler adds meanwhile goes next time)
        for slot in self._slots:
            if self._stop_at is not None and slot.proc is None:
                slot.done, slot.restart_at = True, None  # waiting to (re)start: done
            if slot.proc is None:
                continue
            for signum in self._signals[slot.signalled:count]:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signum if slot.ready else signal.SIGTERM)
            slot.signalled = count


def ready_notice() -> Callable[[], None] | None:
    """In a child that has loaded the application: tells the supervisor so, and returns what
    tells it the worker is ready (None outside one). Reads and removes ``READY_ENV``, and
    keeps the pipe from whatever the worker starts."""
    value = os.environ.pop(READY_ENV, None)
    if value is None or INDEX_ENV not in os.environ:
        return None
    try:
        fd = int(value)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None
        os.set_inheritable(fd, False)
    except (ValueError, OSError):
        return None
    with contextlib.suppress(OSError):
        os.write(fd, f"{os.getpid()} loaded\n".encode())

    def notice() -> None:
        with contextlib.suppress(OSError):
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)

    return notice


def _in_child(parent: int) -> None:
    """In the child, before it runs: get SIGTERM (a graceful stop) if the supervisor dies,
    even by SIGKILL, so no worker process is ever orphaned (Linux; elsewhere a no-op); and
    write to a terminal from its own process group even under ``stty tostop``."""
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)


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
    """``--processes``: a number of processes (1 to ``MAX_PROCESSES``, in ASCII digits only:
    no sign, space, underscore or other script's digits), or 'auto' in any case for one per
    CPU this process may run on (its affinity: a container's cpuset, ``taskset``);
    ``ValueError`` otherwise."""
    if value.lower() == "auto":
        usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return min(MAX_PROCESSES, len(usable) if usable else os.cpu_count() or 1)
    if not (value.isascii() and value.isdigit()):  # int() takes " 2", "+2", "1_0", other digits
        raise ValueError(f"--processes takes a number or auto, not {value!r:.40}")
    count = int(value)  # (ValueError past 4300 digits, as Python caps int() of text)
    if not 1 <= count <= MAX_PROCESSES:
        raise ValueError(f"--processes must be 1 to {MAX_PROCESSES} (or auto)")
    return count
