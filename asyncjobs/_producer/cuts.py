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
from collections.abc import Callable
from types import TracebackType
from typing import Any


class Cuts:
    """The tasks in a step a close may cut (how many steps each: they nest), and those it
    cut. ``closed_error`` makes the error a cut step raises."""

    def __init__(self, closed_error: Callable[[], BaseException]) -> None:
        self._closed_error = closed_error
        self._in: dict[asyncio.Task[Any], int] = {}
        self._cut: set[asyncio.Task[Any]] = set()

    def step(self) -> _Step:
        """A step a close may cut (``with cuts.step(): ...``): inside it, the close's
        cancellation is raised as ``closed_error()``."""
        return _Step(self)

    def cut(self) -> None:
        """Cancel every task in a step (but the one calling: a close from inside a step
        ends that step by what it raises next)."""
        current = asyncio.current_task()
        for task in self._in:
            if task is not current and task not in self._cut and not task.done():
                self._cut.add(task)
                task.cancel()


class _Step:
    """One step of ``Cuts`` (a class, not a generator: a pool's every call runs one)."""

    __slots__ = ("_before", "_cuts", "_task")

    def __init__(self, cuts: Cuts) -> None:
        self._cuts = cuts
        self._task: asyncio.Task[Any] | None = None
        self._before = 0

    def __enter__(self) -> None:
        task = asyncio.current_task()
        if task is not None:  # not in a task (a callback): nothing a close could cancel
            self._task = task
            self._before = task.cancelling()
            steps = self._cuts._in
            steps[task] = steps.get(task, 0) + 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        task = self._task
        if task is None:
            return
        cuts = self._cuts
        left = cuts._in.pop(task) - 1
        if left:
            cuts._in[task] = left
        if task in cuts._cut:
            # The close's cancellation is taken back, whatever the step made of it (its
            # code may have turned it into another error); raised as the close's error when
            # it is what ends the step, and the caller's own is not pending too.
            cuts._cut.discard(task)
            if task.uncancel() <= self._before and isinstance(error, asyncio.CancelledError):
                raise cuts._closed_error() from None
