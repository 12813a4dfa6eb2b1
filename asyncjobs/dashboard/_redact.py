"""Hiding arguments before they are rendered (``create_app(redact=...)``). No I/O.

Per task: a collection of argument names (and positions, as ints) whose values are shown
as ``***``, or a function ``(args, kwargs) -> (args, kwargs)`` that returns what to show.
A task given as a ``Task`` or a function (rather than its name) also maps positional
arguments to their names. A redactor that raises hides every argument of the job.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from .._task import Task, as_task
from .._text import safe_str

HIDDEN = "***"
"""What a hidden argument is shown as."""

ArgsRedactor = Callable[[list[Any], dict[str, Any]], tuple[list[Any], dict[str, Any]]]
"""``(args, kwargs) -> (args, kwargs)``: what the dashboard shows of a job's arguments."""

Redaction = Collection[str | int] | ArgsRedactor
"""Argument names (or positions) to hide, or an ``ArgsRedactor``."""

TaskKey = str | Task[Any, Any] | Callable[..., Any]
"""A task by name, or the task itself (then positional arguments are known by name)."""


def redactors(spec: Mapping[TaskKey, Redaction] | None) -> dict[str, ArgsRedactor]:
    """Task name -> redactor, from ``create_app``'s ``redact`` option."""
    found: dict[str, ArgsRedactor] = {}
    for key, how in (spec or {}).items():
        task = as_task(key)
        if callable(how):
            found[task.name] = how
        elif isinstance(how, str | bytes) or not isinstance(how, Collection):
            raise TypeError(f"redact[{task.name!r}]: give a set of argument names or a "
                            f"function, not {type(how).__name__}")
        else:
            found[task.name] = by_name(set(how), _positional(task))
    return found


def _positional(task: Task[Any, Any]) -> tuple[str, ...]:
    try:
        return task.param_names
    except Exception:  # a signature that cannot be read: names apply to keywords only
        return ()


def by_name(hidden: Collection[str | int], names: tuple[str, ...] = ()) -> ArgsRedactor:
    """A redactor hiding the arguments named (keyword, or positional by its parameter name
    in ``names``) or at the positions given."""

    def redact(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        shown = [HIDDEN if i in hidden or (i < len(names) and names[i] in hidden) else a
                 for i, a in enumerate(args)]
        return shown, {k: HIDDEN if k in hidden else v for k, v in kwargs.items()}

    return redact


def apply(found: Mapping[str, ArgsRedactor], task: str, args: list[Any],
          kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any], str | None]:
    """The arguments to show, and a note when a redactor failed (then all are hidden)."""
    redactor = found.get(task)
    if redactor is None:
        return args, kwargs, None
    try:
        shown_args, shown_kwargs = redactor(list(args), dict(kwargs))
        return list(shown_args), dict(shown_kwargs), None
    except Exception as exc:
        note = f"the redactor of {task!r} raised {safe_str(exc, 200)}: every argument hidden"
        return [HIDDEN] * len(args), dict.fromkeys(kwargs, HIDDEN), note
