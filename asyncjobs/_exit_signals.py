"""SIGINT and SIGTERM in a program that is exiting after its worker (or supervisor) stopped.

Once the run is over, the exit's own work is short and bounded (closing the event loop:
``close_loop`` waits at most 2 s), and its exit code is the stop's. A signal that comes then
is one pressed once too often: it is ignored, instead of its default action turning exit 0
into -2 (130 in a shell). One that comes later than ``QUIET_S`` after the stop means the
exit is stuck (task code left a non-daemon thread running, which Python waits for): it
takes its default action, so a Ctrl-C still ends such a process.

A Python-level handler, not ``SIG_IGN``, until Python's exit has joined the non-daemon
threads and run the ``atexit`` callbacks: a process started meanwhile (by a thread task code
left behind) does not inherit ignored signals, and a Ctrl-C ends an exit stuck in either.
Then ``SIG_IGN``, because Python's finalization puts its own handlers back to the defaults
(but leaves ``SIG_IGN``) a few ms before the process is gone: a Ctrl-C there ended it as
SIGINT does, as without a handler. ``ignore`` is registered with ``atexit`` when this module
is imported, first thing in the package, so that it runs after the callbacks registered
later (atexit runs the newest first); only those of modules imported before asyncjobs run
after it.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

QUIET_S = 3.0
"""How long after the stop a SIGINT or SIGTERM is ignored (``close_loop``'s bound, 2 s, and
a margin)."""

SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals a worker program stops on (and quiets while it exits)."""

Handler = Callable[[int, "FrameType | None"], None]


def while_exiting(until: float, *, clock: Callable[[], float] = time.monotonic,
                  kill: Callable[[int, int], None] = os.kill,
                  exit_now: Callable[[int], object] = os._exit) -> Handler:
    """The handler: a signal before ``until`` (on ``clock``) is ignored; one after puts
    back the signal's default action and sends it again, ending the process as it would
    have without a handler (or, where that was dropped, ``exit_now`` with 128 + the
    signal's number, as a shell reports a signal's end)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if clock() < until:
            return
        signal.signal(signum, signal.SIG_DFL)
        kill(os.getpid(), signum)
        # Still here: the signal was dropped (a container's PID 1 gets no default action).
        exit_now(128 + signum)

    return on_signal


def quiet_exit(quiet_s: float = QUIET_S) -> None:
    """Install ``while_exiting`` for SIGTERM and SIGINT, quiet for ``quiet_s`` from now,
    and ``ignore`` at exit. Main thread only (as any ``signal.signal``); for a process that
    exits next."""
    handler = while_exiting(time.monotonic() + quiet_s)
    for signum in SIGNALS:
        signal.signal(signum, handler)
    _armed[0] = True


_armed = [False]
"""Whether ``quiet_exit`` ran in this process: ``ignore`` does nothing otherwise."""


def ignore() -> None:
    """At exit, after ``quiet_exit``: ``SIG_IGN`` for SIGTERM and SIGINT (the last of the
    exit: see the module docstring)."""
    if _armed[0]:
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


atexit.register(ignore)
