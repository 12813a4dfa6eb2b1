"""Ending the steps under way when a pool closes.

Closing a pool's connections does not end every step that uses them: with redis-py 8.2, a
step whose connection was still in its handshake when the pool closed went on reading a
socket the close had not reached, for ever. So a close cancels the tasks inside such a
step (``Cuts.cut``), and the step (``Cuts.step``) turns that cancellation into the close's
error, the way ``asyncio.timeout`` turns its own into ``TimeoutError``: a cancellation of
the caller's own, before or with the close's, stays a cancellation, and each task's cancel
count (``Task.cancelling``) comes back to what it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class Cuts:
    """The tasks in a step a close may cut (how many steps each: they nest), and those it
    cut. ``closed_error`` makes the error a cut step raises."""

    def __init__(self, closed_error: Callable[[], BaseException]) -> None:
        self._closed_error = closed_error
        self._in: dict[asyncio.Task[Any], int] = {}
        self._cut: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """A step a close may cut: inside it, the close's cancellation is raised as
        ``closed_error()``."""
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cancel
            yield
            return
        before = task.cancelling()
        self._in[task] = self._in.get(task, 0) + 1
        try:
            yield
        except asyncio.CancelledError:
            if task in self._cut:
                self._cut.discard(task)
                if task.uncancel() <= before:  # the close's alone: the caller's own is not
                    raise self._closed_error() from None
            raise
        finally:
            left = self._in.pop(task) - 1
            if left:
                self._in[task] = left
            if task in self._cut:  # the step turned the cancellation into another error
                self._cut.discard(task)
                task.uncancel()

    def cut(self) -> None:
        """Cancel every task in a step (but the one calling: a close from inside a step
        ends that step by what it raises next)."""
        current = asyncio.current_task()
        for task in self._in:
            if task is not current and task not in self._cut and not task.done():
                self._cut.add(task)
                task.cancel()
