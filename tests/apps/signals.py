"""A worker module whose tasks take the worker's SIGTERM for themselves, as task code
that embeds a server or a library with its own shutdown might
(``asyncjobs worker tests.apps.signals:worker``)."""

from __future__ import annotations

import asyncio
import os
import signal

import asyncjobs
from asyncjobs import Context

PREFIX = os.environ.get("TEST_PREFIX", "asyncjobs")


def _ignore(*args: object) -> None:
    """A handler that does not stop the worker."""


@asyncjobs.task
async def take_with_signal(ctx: Context) -> str:
    signal.signal(signal.SIGTERM, _ignore)
    return "taken"


@asyncjobs.task
async def take_with_loop(ctx: Context) -> str:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _ignore)
    return "taken"


worker = asyncjobs.Worker([take_with_signal, take_with_loop], prefix=PREFIX)
