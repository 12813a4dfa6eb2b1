"""A worker module whose task leaves a non-daemon thread running, which Python waits for at
exit: the worker stops, but its process does not exit (``asyncjobs worker
tests.apps.stuck_exit:worker``)."""

from __future__ import annotations

import os
import threading

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")
_NEVER = threading.Event()


@asyncjobs.task
async def leave_a_thread(ctx: Context) -> None:
    # Started from the loop's (main) thread, the thread is not a daemon.
    threading.Thread(target=_NEVER.wait, args=(600,), name="left-by-task").start()


worker = asyncjobs.Worker([leave_a_thread], prefix=PREFIX)
