"""Runs plain ``def`` tasks on daemon threads. No Redis.

Why not ``anyio.to_thread`` or a ``ThreadPoolExecutor``: their threads are not daemons, so a
task blocked past its timeout (a thread cannot be killed) kept the whole process from
exiting after SIGTERM, for ever. Here every thread is a daemon: the process exits when the
worker is done, whatever a task's thread is doing.

At most ``size`` calls run at once. A call cancelled while it waits for a thread never
starts; a call cancelled while it runs is *abandoned*: its thread finishes on its own (its
result is dropped) and then ends, and a new thread takes its place, so abandoned calls never
eat the capacity of live ones. ``on_done`` tells the caller when an abandoned body really
stopped, so it never hands back a job whose body still runs in this process.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("asyncjobs.worker")

_WAITING, _RUNNING, _CANCELLED, _ABANDONED = 0, 1, 2, 3


class _Call:
    __slots__ = ("context", "fn", "future", "loop", "on_done", "state")

    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop,
                 on_done: Callable[[], None] | None) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.context = contextvars.copy_context()
        self.on_done = on_done
        self.state = _WAITING


Inbox = SimpleQueue[_Call | None]


class ThreadRunner:
    """A small pool of daemon threads for sync task bodies; see the module docstring."""

    def __init__(self, size: int) -> None:
        self._limit = asyncio.Semaphore(size)
        self._idle: list[Inbox] = []
        self._lock = threading.Lock()  # guards each call's state between loop and thread
        self.abandoned = 0
        """Calls abandoned while running whose thread has not finished yet."""

    async def run(self, fn: Callable[[], T], on_done: Callable[[], None] | None = None) -> T:
        """Run ``fn()`` on a thread and return its result (or raise its exception).
        ``on_done`` is called on the loop when the body has finished, also when this
        call was cancelled (abandoned) while the body ran."""
        async with self._limit:
            call = _Call(fn, asyncio.get_running_loop(), on_done)
            inbox = self._idle.pop() if self._idle else self._spawn()
            inbox.put(call)
            try:
                result: T = await call.future
            except asyncio.CancelledError:
                with self._lock:
                    running = call.state == _RUNNING
                    call.state = _ABANDONED if running else _CANCELLED
                if running:
                    self.abandoned += 1
                elif on_done is not None:
                    on_done()  # it never started
                raise
            return result

    def _spawn(self) -> Inbox:
        inbox: Inbox = SimpleQueue()
        thread = threading.Thread(target=self._work, args=(inbox,), daemon=True,
                                  name="asyncjobs-sync")
        thread.start()
        return inbox

    def _work(self, inbox: Inbox) -> None:
        while True:
            call = inbox.get()
            if call is None:
                return
            with self._lock:
                skip = call.state == _CANCELLED
                if not skip:
                    call.state = _RUNNING
            ok, value = False, None
            if not skip:
                try:
                    value, ok = call.context.run(call.fn), True
                except BaseException as exc:  # delivered to the awaiting task as it is
                    value = exc
            try:
                call.loop.call_soon_threadsafe(self._finished, call, inbox, ok, value)
            except RuntimeError:  # the loop is closed: the worker is gone
                return

    def _finished(self, call: _Call, inbox: Inbox, ok: bool, value: Any) -> None:
        """On the loop: deliver the result, then reuse the thread (or let it end if its call
        was abandoned, since a replacement thread may already serve its capacity)."""
        with self._lock:
            state = call.state
        if state == _ABANDONED:  # a replacement thread may already serve its capacity
            inbox.put(None)
            self.abandoned -= 1
            if call.on_done is not None:
                call.on_done()
            return
        self._idle.append(inbox)
        if state == _CANCELLED:  # never ran; on_done was called at the cancellation
            return
        if call.on_done is not None:
            call.on_done()
        if not call.future.done():
            if ok:
                call.future.set_result(value)
            else:
                call.future.set_exception(value)

    def close(self) -> None:
        """Let idle threads end (abandoned ones end when their call returns)."""
        while self._idle:
            self._idle.pop().put(None)
