"""msgspec msgpack encoding of jobs, results and errors; no pickle anywhere.

Encoders and decoders are built once and reused. Arguments travel as msgpack's own types;
the worker converts each one back to the type its task declares (a ``UUID``, a dataclass,
a ``msgspec.Struct``, a ``datetime``...), so tasks receive what they were typed to receive.
"""

from __future__ import annotations

import inspect
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ._model import ErrorInfo, JobSpec, Progress
from .exceptions import SerializationError

_encoder = msgspec.msgpack.Encoder()
_any_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()
_spec_decoder = msgspec.msgpack.Decoder(JobSpec)
_errors_decoder = msgspec.msgpack.Decoder(list[ErrorInfo])
_progress_decoder = msgspec.msgpack.Decoder(Progress)
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)

# Types that msgpack gives back exactly as they went in: a result needs no conversion.
_NATIVE: frozenset[Any] = frozenset({Any, object, int, str, float, bool, bytes, type(None)})
# Parameter annotations that accept anything: arguments pass unchecked.
_UNCHECKED: frozenset[Any] = frozenset({Any, object})


def encode_spec(spec: JobSpec, param_names: Sequence[str] = ()) -> bytes:
    """Encode a job spec, or raise ``SerializationError`` naming the argument that failed."""
    try:
        return _encoder.encode(spec)
    except _ENCODE_ERRORS as exc:
        raise _explain(spec, param_names, exc) from exc


def _explain(spec: JobSpec, names: Sequence[str], exc: Exception) -> SerializationError:
    for index, value in enumerate(spec.args):
        if not _encodes(value):
            name = names[index] if index < len(names) else f"*args[{index - len(names)}]"
            where = f"argument {name!r} (position {index})"
            return _unsupported(where, spec.task, value, exc)
    for key, value in spec.kwargs.items():
        if not _encodes(value):
            return _unsupported(f"argument {key!r}", spec.task, value, exc)
    return SerializationError(f"cannot serialize job of task {spec.task!r}: {exc}")


def _unsupported(where: str, task: str, value: object, exc: Exception) -> SerializationError:
    kind = type(value).__qualname__
    return SerializationError(
        f"cannot serialize {where} of task {task!r}: a value of type {kind} ({exc}); "
        "pass primitives, lists, dicts, datetimes, UUIDs, dataclasses or msgspec Structs"
    )


def _encodes(value: object) -> bool:
    try:
        _encoder.encode(value)
    except _ENCODE_ERRORS:
        return False
    return True


def decode_spec(data: bytes) -> JobSpec:
    """Decode a job spec; raises ``msgspec.DecodeError`` / ``ValidationError`` when corrupt."""
    return _spec_decoder.decode(data)


def encode_value(value: object, what: str = "result") -> bytes:
    """Encode a task's return value (or any value), naming it in the error."""
    try:
        return _encoder.encode(value)
    except _ENCODE_ERRORS as exc:
        raise SerializationError(
            f"cannot serialize the {what}: a value of type {type(value).__qualname__} ({exc})"
        ) from exc


def decode_value(data: bytes, type_: Any = Any) -> Any:
    """Decode a value, converting it to ``type_`` when one is given."""
    if type_ in _NATIVE:
        return _any_decoder.decode(data)
    return msgspec.msgpack.decode(data, type=type_)


def encode_errors(errors: Sequence[ErrorInfo]) -> bytes:
    """Encode an error history."""
    return _encoder.encode(list(errors))


def decode_errors(data: bytes | None) -> tuple[ErrorInfo, ...]:
    """Decode an error history; an absent field is an empty history."""
    return tuple(_errors_decoder.decode(data)) if data else ()


def encode_progress(progress: Progress) -> bytes:
    """Encode a progress report."""
    return _encoder.encode(progress)


def decode_progress(data: bytes | None) -> Progress | None:
    """Decode a progress report, if any."""
    return _progress_decoder.decode(data) if data else None


_PACKAGE_DIR = str(Path(__file__).parent)


def error_info(exc: BaseException, attempt: int, at_ms: int) -> ErrorInfo:
    """Capture an exception's type, message and traceback text (without asyncjobs' own
    frames in front of the task's)."""
    kind = type(exc)
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(
        _PACKAGE_DIR
    ):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(kind, exc, tb))
    return ErrorInfo(f"{kind.__module__}.{kind.__qualname__}", str(exc), text, attempt, at_ms)


class ArgConverter:
    """Checks decoded arguments against a task's parameter types and converts them back
    (a ``UUID`` from its string, a dataclass or Struct from its map...).

    Built once per task from its signature (the first parameter, the context, is skipped).
    Unannotated parameters (and ``Any``) pass unchecked; a task annotated only so costs nothing.
    """

    __slots__ = ("_keyword", "_positional", "_varargs", "_varkw", "names", "trivial")

    def __init__(self, fn: Callable[..., Any]) -> None:
        params = list(inspect.signature(fn).parameters.values())[1:]
        hints = _type_hints(fn)
        kind = inspect.Parameter
        self.names = tuple(
            p.name for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)
        )
        self._positional = [hints.get(name, Any) for name in self.names]
        self._varargs: Any = Any
        self._varkw: Any = Any
        self._keyword: dict[str, Any] = {}
        for p in params:
            if p.kind is kind.VAR_POSITIONAL:
                self._varargs = hints.get(p.name, Any)
            elif p.kind is kind.VAR_KEYWORD:
                self._varkw = hints.get(p.name, Any)
            else:
                self._keyword[p.name] = hints.get(p.name, Any)
        wanted = [*self._positional, self._varargs, self._varkw, *self._keyword.values()]
        self.trivial = all(t in _UNCHECKED for t in wanted)

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
        converted = {
            k: _convert(v, self._keyword.get(k, self._varkw), k) for k, v in kwargs.items()
        }
        return out, converted


_SCALARS: frozenset[Any] = frozenset({int, str, bytes, bool})


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
