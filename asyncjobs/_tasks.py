"""Stopping an asyncio task reliably.

A single ``task.cancel()`` can be lost on Python 3.11: ``asyncio.wait_for`` (used inside
libraries, fakeredis' reads among them) swallows a cancellation that arrives as the future
it waits for completes (fixed in 3.12). So stopping a task means cancelling it until it is
done, within a bound, never awaiting it blindly.
"""

from __future__ import annotations

import asyncio
from typing import Any

_AGAIN_S = 0.05


async def cancel_and_wait(task: asyncio.Task[Any], timeout_s: float = 5.0) -> bool:
    """Cancel ``task`` (again and again) until it is done or ``timeout_s`` passed; returns
    whether it is done. Its result or exception, if any, is retrieved and dropped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            return False
        await asyncio.wait([task], timeout=min(_AGAIN_S, left))
    if not task.cancelled():
        task.exception()
    return True
