"""SIGINT and SIGTERM in a program that is exiting after its worker (or supervisor) stopped.

Once the run is over, the exit's own work is short and bounded (closing the event loop:
``close_loop`` waits at most 2 s), and its exit code is the stop's. A signal that comes then
is one pressed once too often: it is ignored, instead of its default action turning exit 0
into -2 (130 in a shell). One that comes later than ``QUIET_S`` after the stop means the
exit is stuck (task code left a non-daemon thread running, which Python waits for): it
takes its default action, so a Ctrl-C still ends such a process.

A Python-level handler, not ``SIG_IGN``, until Python's exit has joined the non-daemon
threads: a process started meanwhile (by a thread task code left behind) does not inherit
ignored signals. Then (``atexit``, which runs after that join) ``SIG_IGN``, because Python's
finalization puts its own handlers back to the defaults (not ``SIG_IGN``) a few ms before the
process is gone: a Ctrl-C there ended it as SIGINT does, as without a handler.
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

Handler = Callable[[int, "FrameType | None"], None]


def while_exiting(until: float, *, clock: Callable[[], float] = time.monotonic,
                  kill: Callable[[int, int], None] = os.kill) -> Handler:
    """The handler: a signal before ``until`` (on ``clock``) is ignored; one after puts
    back the signal's default action and sends it again, ending the process as it would
    have without a handler."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if clock() < until:
            return
        signal.signal(signum, signal.SIG_DFL)
        kill(os.getpid(), signum)

    return on_signal


def quiet_exit(quiet_s: float = QUIET_S) -> None:
    """Install ``while_exiting`` for SIGTERM and SIGINT, quiet for ``quiet_s`` from now,
    and ``ignore`` at exit. Main thread only (as any ``signal.signal``); for a process that
    exits next."""
    handler = while_exiting(time.monotonic() + quiet_s)
    for signum in SIGNALS:
        signal.signal(signum, handler)
    atexit.register(ignore)


def ignore() -> None:
    """``SIG_IGN`` for SIGTERM and SIGINT (the last of the exit: see the module docstring)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
