"""A task's call shape: which arguments it takes, checked at enqueue and in the worker, and
converted back to the types it declares. No Redis.

``ArgConverter`` is built once per task from its signature (the first parameter, the
context, is skipped):

- ``check(args, kwargs)`` raises ``TypeError`` naming the task when the arguments cannot
  bind (too few, too many, an unknown or repeated keyword): the producer hears it at
  enqueue, and the worker dead-letters such a job at once instead of retrying a call that
  can never work;
- ``convert(args, kwargs)`` checks each argument against its annotation and converts it
  (a ``UUID`` from its string, a dataclass or Struct from its map...); unannotated
  parameters (and ``Any``) pass unchecked, so a task annotated only so costs nothing.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import msgspec

# Parameter annotations that accept anything: arguments pass unchecked.
_UNCHECKED: frozenset[Any] = frozenset({Any, object})
_SCALARS: frozenset[Any] = frozenset({int, str, bytes, bool})
_P = inspect.Parameter


class ArgConverter:
    """The arguments a task function takes after its context; see the module docstring."""

    __slots__ = ("_fn", "_keyword", "_max_pos", "_min_pos", "_positional",
                 "_required_kw", "_varargs", "_varkw", "names", "trivial")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        params = list(inspect.signature(fn).parameters.values())[1:]
        hints = _type_hints(fn)
        positional = [p for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
        self.names = tuple(p.name for p in positional)
        self._positional = [hints.get(name, Any) for name in self.names]
        self._min_pos = sum(1 for p in positional if p.default is _P.empty)
        self._max_pos: int | None = len(positional)
        self._varargs: Any = Any
        self._varkw: Any = None  # None: no **kwargs parameter
        self._keyword: dict[str, Any] = {}
        self._required_kw = frozenset(p.name for p in params if p.kind is _P.KEYWORD_ONLY
                                      and p.default is _P.empty)
        for p in params:
            if p.kind is _P.VAR_POSITIONAL:
                self._varargs = hints.get(p.name, Any)
                self._max_pos = None
            elif p.kind is _P.VAR_KEYWORD:
                self._varkw = hints.get(p.name, Any)
            elif p.kind is not _P.POSITIONAL_ONLY:
                self._keyword[p.name] = hints.get(p.name, Any)
        wanted = [*self._positional, self._varargs, self._varkw, *self._keyword.values()]
        self.trivial = all(t in _UNCHECKED or t is None for t in wanted)

    def check(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` if a call with these arguments could not bind."""
        count = len(args)
        if not kwargs and not self._required_kw and count >= self._min_pos and (
                self._max_pos is None or count <= self._max_pos):
            return  # the common case: positional arguments only, and they fit
        try:
            inspect.signature(self._fn).bind(None, *args, **kwargs)
        except TypeError as exc:
            name = getattr(self._fn, "__name__", repr(self._fn))
            raise TypeError(f"{name}(ctx, {', '.join(self.names)}...): {exc}") from None

    def convert(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Return checked, converted copies; raises ``msgspec.ValidationError`` naming the
        argument that does not fit."""
        if self.trivial:
            return args, kwargs
        out = []
        for index, value in enumerate(args):
            if index < len(self._positional):
                type_, name = self._positional[index], self.names[index]
            else:
                type_, name = self._varargs, f"*args[{index - len(self._positional)}]"
            out.append(_convert(value, type_, name))
        varkw = Any if self._varkw is None else self._varkw
        converted = {k: _convert(v, self._keyword.get(k, varkw), k) for k, v in kwargs.items()}
        return out, converted


def _convert(value: Any, type_: Any, name: str) -> Any:
    if type_ in _UNCHECKED or (type_ in _SCALARS and type(value) is type_):
        return value  # the common case, without a call into msgspec
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise msgspec.ValidationError(f"argument {name!r}: {exc}") from exc


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = inspect.unwrap(fn)
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to no conversion
        return {}


def return_type(fn: Callable[..., Any]) -> Any:
    """The declared return type of a task function (``Any`` when absent or unresolvable)."""
    return _type_hints(fn).get("return", Any)
