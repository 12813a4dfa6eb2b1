"""msgspec msgpack encoding of jobs, results and errors; no pickle anywhere.

Encoders and decoders are built once and reused. Arguments travel as msgpack's own types;
the worker converts each one back to the type its task declares (see ``_signature``).

Data nested deeper than ``MAX_DEPTH`` levels is refused when it is encoded (an argument at
enqueue, a result when the task returns): msgspec's decoder recurses on the C stack and a
payload that encodes may not decode in the worker. Errors are captured so that nothing a
task raises can break the capture: a ``__str__`` that raises, a message of megabytes.
"""

from __future__ import annotations

import dataclasses
import math
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ._model import ErrorInfo, JobSpec, Progress
from ._text import class_name, safe_str
from .exceptions import SerializationError

MAX_DEPTH = 100
"""The deepest nesting of lists, dicts, tuples, sets, dataclasses and Structs accepted in an
argument or a result."""

MAX_MESSAGE = 4096
"""An error message longer than this is cut (characters)."""

MAX_TRACEBACK = 16384
"""A traceback longer than this keeps its first and last parts (characters)."""

_encoder = msgspec.msgpack.Encoder()
_any_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()
_spec_decoder = msgspec.msgpack.Decoder(JobSpec)
_errors_decoder = msgspec.msgpack.Decoder(list[ErrorInfo])
_progress_decoder = msgspec.msgpack.Decoder(Progress)
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)

# Types that msgpack gives back exactly as they went in: a result needs no conversion.
_NATIVE: frozenset[Any] = frozenset({Any, object, int, str, float, bool, bytes, type(None)})
_LEAVES: frozenset[type] = frozenset({int, float, str, bytes, bool, type(None)})


def encode_spec(spec: JobSpec, param_names: Sequence[str] = ()) -> bytes:
    """Encode a job spec, or raise ``SerializationError`` naming the argument that failed."""
    try:
        data = _encoder.encode(spec)
    except RecursionError:
        data = b"\x00" * (MAX_DEPTH + 1)  # too deep for the stack: find the argument below
    except _ENCODE_ERRORS as exc:
        raise _explain(spec, param_names, exc) from exc
    if len(data) > MAX_DEPTH:  # each level takes at least a byte: shallower data is smaller
        for index, value in enumerate(spec.args):
            name = param_names[index] if index < len(param_names) else f"*args[{index}]"
            _check_depth(value, f"argument {name!r} of task {spec.task!r}")
        for key, value in spec.kwargs.items():
            _check_depth(value, f"argument {key!r} of task {spec.task!r}")
    if not _plain(spec):
        _check_decodes(spec, data, param_names)
    return data


def _plain(spec: JobSpec) -> bool:
    """A spec that decodes as it was encoded, seen without decoding it: a str task name, no
    headers and arguments of exactly the leaf types (the usual job). Anything else may
    encode to what no worker can decode: a ``msgspec.Raw`` is written verbatim, an ``Ext``
    as given (a timestamp ``Ext`` of garbage), a header provider may give a non-str."""
    return (type(spec.task) is str and not spec.headers
            and all(type(v) in _LEAVES for v in spec.args)
            and all(type(v) in _LEAVES for v in spec.kwargs.values()))


def _check_decodes(spec: JobSpec, data: bytes, names: Sequence[str]) -> None:
    """Decode ``data`` as a worker will; ``SerializationError`` naming the part at fault
    when it does not (nothing is written then)."""
    try:
        _spec_decoder.decode(data)
        return
    except Exception as exc:
        error: Exception = exc
    for index, value in enumerate(spec.args):
        if not _decodes(value):
            name = names[index] if index < len(names) else f"*args[{index - len(names)}]"
            raise _undecodable(f"argument {name!r} (position {index})", spec.task, value)
    for key, value in spec.kwargs.items():
        if not _decodes(value):
            raise _undecodable(f"argument {key!r}", spec.task, value)
    raise SerializationError(f"cannot serialize job of task {safe_str(spec.task, 200)}: "
                             f"a worker could not decode it (its task name or headers: "
                             f"{safe_str(error, 200)})")


def _decodes(value: object) -> bool:
    try:
        _any_decoder.decode(_encoder.encode(value))
    except Exception:
        return False
    return True


def _undecodable(where: str, task: str, value: object) -> SerializationError:
    return SerializationError(
        f"cannot serialize {where} of task {task!r}: a value of type "
        f"{type(value).__qualname__} encodes to what no worker can decode (a msgspec.Raw "
        "that is not one msgpack value, or an Ext of a reserved type holding garbage)")


def _check_depth(value: object, what: str) -> None:
    """Raise ``SerializationError`` if ``value`` nests deeper than ``MAX_DEPTH``."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) in _LEAVES:
            continue
        children = _children(item)
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise SerializationError(
                f"cannot serialize {what}: nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _children(item: object) -> Iterable[object] | None:
    if isinstance(item, list | tuple | set | frozenset):
        return item
    if isinstance(item, dict):  # dict's own methods: a subclass's may lie or raise
        return [*dict.keys(item), *dict.values(item)]
    if isinstance(item, msgspec.Struct):
        return [getattr(item, f, None) for f in item.__struct_fields__]
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return [getattr(item, f.name, None) for f in dataclasses.fields(item)]
    return None


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
    """Decode a job spec. Corrupt data raises ``msgspec.DecodeError`` / ``ValidationError``;
    data too deep for the stack raises ``RecursionError``: callers catch ``Exception``."""
    return _spec_decoder.decode(data)


def encode_value(value: object, what: str = "result") -> bytes:
    """Encode a task's return value (or any value), naming it in the error."""
    try:
        data = _encoder.encode(value)
    except RecursionError:
        _check_depth(value, f"the {what}")
        raise
    except _ENCODE_ERRORS as exc:
        raise SerializationError(
            f"cannot serialize the {what}: a value of type "
            f"{class_name(type(value), '__qualname__')} ({safe_str(exc, 200)})"
        ) from exc
    if len(data) > MAX_DEPTH:
        _check_depth(value, f"the {what}")
    return data


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


MAX_PROGRESS = 8192
"""The largest progress report (encoded bytes) a task may send."""


def encode_progress(progress: Progress) -> bytes:
    """Encode a progress report."""
    return _encoder.encode(progress)


def progress_report(value: float, detail: object, at_ms: int) -> bytes:
    """A task's progress report, encoded: ``detail`` text is the message (500 characters
    kept), anything else is data. ``ValueError`` for a value that is not a finite number or
    a report over ``MAX_PROGRESS`` bytes; ``SerializationError`` for data msgspec cannot
    encode."""
    number = _finite(value)
    if isinstance(detail, str):
        report = Progress(number, detail[:500], at_ms)
    else:
        report = Progress(number, "", at_ms, detail)
    data = encode_value(report, "progress")
    if len(data) > MAX_PROGRESS:
        raise ValueError(f"progress report of {len(data)} bytes: at most {MAX_PROGRESS}")
    return data


def _finite(value: object) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite number (text, None, NaN,
    infinities and ints too large for a float are not)."""
    try:
        number = math.nan if isinstance(value, str | bytes) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"progress must be a finite number, got {safe_str(value, 100)}")
    return number


def decode_progress(data: bytes | None) -> Progress | None:
    """Decode a progress report, if any."""
    return _progress_decoder.decode(data) if data else None


_PACKAGE_DIR = str(Path(__file__).parent)


def error_info(exc: BaseException, attempt: int, at_ms: int) -> ErrorInfo:
    """Capture an exception's type, message and traceback text (without asyncjobs' own
    frames in front of the task's). Never raises, whatever the exception does: what it
    cannot read (its class's names, its text, its traceback) is a placeholder."""
    kind = type(exc)  # type() runs no code of the exception's; its class's attributes may
    name = class_name(kind)
    message = safe_str(exc, MAX_MESSAGE)
    try:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None and \
                tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            tb = tb.tb_next
        text = "".join(traceback.format_exception(kind, exc, tb))
    except BaseException:  # a hostile exception can break even the traceback module
        text = f"{name}: {message}\n(the traceback could not be formatted)\n"
    return ErrorInfo(name, message, _cut_middle(text, MAX_TRACEBACK), attempt, at_ms)


def _cut_middle(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - 2 * half} characters cut) ...\n{text[-half:]}"
