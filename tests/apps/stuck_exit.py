"""A worker module whose tasks leave a non-daemon thread running, which Python waits for at
exit, or an ``atexit`` callback that blocks: the worker stops, but its process does not exit
(``asyncjobs worker tests.apps.stuck_exit:worker``)."""

from __future__ import annotations

import atexit
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


@asyncjobs.task
async def block_at_exit(ctx: Context) -> None:
    atexit.register(_NEVER.wait, 600)  # runs before asyncjobs' own (registered earlier)


worker = asyncjobs.Worker([leave_a_thread, block_at_exit], prefix=PREFIX)
