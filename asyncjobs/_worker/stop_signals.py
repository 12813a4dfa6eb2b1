"""The worker's own SIGTERM and SIGINT handlers, kept: task code that installs a handler of
its own for either with ``loop.add_signal_handler`` took the stop away from the worker,
which then ran on past any grace period until killed (one installed with ``signal.signal``
runs too, beside the loop's: ``sys.exit`` there raises wherever the worker happens to be).
``keep`` looks every ``EVERY_S`` whether the handlers are still the worker's, and puts back
one that is not, saying each time which handler had replaced it.

How it sees a change: the process-level handler (``signal.getsignal``) is no longer the
very object the worker's install left (uvloop installs a new bound method at each
``add_signal_handler``; ``signal.signal`` installs the task's function), or asyncio's own
loop holds another callback in its table of handlers. A change made and undone between
two looks goes unseen, as it did no harm.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from .._text import clean, safe_str

log = logging.getLogger("asyncjobs.worker")

EVERY_S = 1.0
"""How often the handlers are looked at (two dictionary reads a signal)."""


def handler_of(loop: asyncio.AbstractEventLoop, signum: int) -> tuple[Any, Any]:
    """What handles ``signum`` now: the process-level handler, and the loop's callback for
    it where the loop shows its table (asyncio's own), else None."""
    table = getattr(loop, "_signal_handlers", None)
    handle = table.get(signum) if isinstance(table, dict) else None
    return signal.getsignal(signum), getattr(handle, "_callback", None)


def replaced_by(now: tuple[Any, Any], ours: tuple[Any, Any],
                loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Who replaced the handler ``ours`` with ``now`` (as a person reads it), or '' if it
    is still ours (the process-level handler compared by identity: see the module's
    docstring)."""
    process, callback = now
    if callback != ours[1]:
        return _named(callback, loop)
    if process is not ours[0]:
        return _named(process, loop)
    return ""


def _named(handler: object, loop: asyncio.AbstractEventLoop | None) -> str:
    if isinstance(handler, signal.Handlers):  # SIG_IGN, SIG_DFL (their str is a number)
        return handler.name
    if loop is not None and getattr(handler, "__self__", None) is loop:
        return "a handler added by loop.add_signal_handler"
    name = getattr(handler, "__qualname__", None)
    if isinstance(name, str):
        return clean(name[:200])
    return clean(safe_str(handler, 200))


def keep(loop: asyncio.AbstractEventLoop, handlers: dict[int, Callable[[], object]], *,
         every_s: float = EVERY_S) -> Coroutine[Any, Any, None]:
    """Put ``handlers`` back (``loop.add_signal_handler``) whenever task code replaced
    one, until cancelled. They must be installed already: what handles each signal is
    noted now, not when the coroutine starts."""
    ours = {signum: handler_of(loop, signum) for signum in handlers}
    return _keep(loop, handlers, ours, every_s)


async def _keep(loop: asyncio.AbstractEventLoop, handlers: dict[int, Callable[[], object]],
                ours: dict[int, tuple[Any, Any]], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        for signum, callback in handlers.items():
            who = replaced_by(handler_of(loop, signum), ours[signum], loop)
            if not who:
                continue
            log.warning("task code replaced the worker's %s handler (with %s): put back, "
                        "so that the worker still stops on it; tasks must leave the "
                        "worker's signals alone", signal.Signals(signum).name, who)
            loop.add_signal_handler(signum, callback)
            ours[signum] = handler_of(loop, signum)
