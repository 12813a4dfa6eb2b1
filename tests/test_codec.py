"""msgpack encoding of specs, values, errors and progress; argument conversion on the worker."""

from __future__ import annotations

import socket
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest

import asyncjobs
from asyncjobs._codec import (
    decode_errors,
    decode_progress,
    decode_spec,
    decode_value,
    encode_errors,
    encode_progress,
    encode_spec,
    encode_value,
    error_info,
)
from asyncjobs._model import ErrorInfo, JobSpec, Progress
from asyncjobs._signature import ArgConverter, return_type
from asyncjobs._worker.runner import run_attempt
from asyncjobs.exceptions import SerializationError

PACKAGE_DIR = str(Path(asyncjobs.__file__).parent)
AN_ID = UUID("12345678-1234-5678-1234-567812345678")
A_MOMENT = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)


@dataclass
class Point:
    x: int
    y: int


class User(msgspec.Struct):
    id: UUID
    name: str
    tags: list[str] = []


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Boom(Exception):
    pass


class Outer:
    class Inner(Exception):
        pass


# --- encode_spec -----------------------------------------------------------------------------


def typed_task(
    ctx: object,
    uid: UUID,
    point: Point,
    user: User,
    when: datetime,
    pair: tuple[int, str],
    tags: set[str],
    color: Color,
    amount: Decimal,
    plain: dict[str, list[int]],
) -> None:
    raise NotImplementedError


TYPED_VALUES: dict[str, Any] = {
    "uid": AN_ID,
    "point": Point(1, 2),
    "user": User(AN_ID, "ann", ["a", "b"]),
    "when": A_MOMENT,
    "pair": (3, "three"),
    "tags": {"x", "y"},
    "color": Color.BLUE,
    "amount": Decimal("12.34"),
    "plain": {"k": [1, 2, 3]},
}


def test_spec_round_trips_with_options() -> None:
    spec = JobSpec(
        task="send",
        args=[1, "two", 3.5, None, True, b"raw", [1, [2]], {"a": {"b": 1}}],
        kwargs={"note": "hi"},
        timeout_s=1.5,
        max_tries=4,
        result_ttl_s=60.0,
        headers={"trace": "abc"},
    )
    assert decode_spec(encode_spec(spec)) == spec


def test_spec_round_trips_rich_arguments_through_the_converter() -> None:
    names = list(TYPED_VALUES)
    half = len(names) // 2
    spec = JobSpec(
        task="typed",
        args=[TYPED_VALUES[n] for n in names[:half]],
        kwargs={n: TYPED_VALUES[n] for n in names[half:]},
    )
    decoded = decode_spec(encode_spec(spec))
    args, kwargs = ArgConverter(typed_task).convert(decoded.args, decoded.kwargs)
    assert dict(zip(names[:half], args, strict=True)) | kwargs == TYPED_VALUES


def test_datetimes_and_uuids_decode_without_types() -> None:
    decoded = decode_spec(encode_spec(JobSpec("t", [A_MOMENT, AN_ID])))
    assert decoded.args == [A_MOMENT, str(AN_ID)]


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        pytest.param(object(), "object", id="object"),
        pytest.param(lambda: 1, "function", id="lambda"),
        pytest.param(2**64, "int", id="int-over-2**64"),
        pytest.param(-(2**63) - 1, "int", id="int-under-minus-2**63"),
        pytest.param([1, object()], "list", id="nested-in-list"),
    ],
)
def test_unencodable_positional_argument_is_named(value: object, type_name: str) -> None:
    spec = JobSpec("send", args=[1, value])
    with pytest.raises(SerializationError) as info:
        encode_spec(spec, ["user_id", "note"])
    message = str(info.value)
    assert "argument 'note' (position 1)" in message
    assert f"of type {type_name} " in message
    assert "task 'send'" in message
    assert isinstance(info.value.__cause__, TypeError | OverflowError)


def test_unencodable_socket_is_named() -> None:
    with socket.socket() as sock:
        spec = JobSpec("send", args=[sock])
        with pytest.raises(SerializationError, match=r"argument 'conn' .* type socket"):
            encode_spec(spec, ["conn"])


def test_unencodable_keyword_argument_is_named_by_keyword() -> None:
    spec = JobSpec("send", args=[1], kwargs={"ok": 2, "callback": print})
    with pytest.raises(SerializationError) as info:
        encode_spec(spec, ["user_id"])
    message = str(info.value)
    assert "argument 'callback' of task 'send'" in message
    assert "builtin_function_or_method" in message


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param(["a", "b"], "argument '*args[1]' (position 3)", id="beyond-two-names"),
        pytest.param([], "argument '*args[3]' (position 3)", id="no-names"),
        pytest.param(["a", "b", "c", "d"], "argument 'd' (position 3)", id="named"),
    ],
)
def test_unencodable_extra_positional_is_named_by_index(names: list[str], expected: str) -> None:
    spec = JobSpec("fanout", args=[1, 2, 3, object()])
    with pytest.raises(SerializationError) as info:
        encode_spec(spec, names)
    assert expected in str(info.value)
    assert "task 'fanout'" in str(info.value)


def test_serialization_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode_spec(JobSpec("t", args=[object()]))


# --- encode_value / decode_value -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        pytest.param(object(), "object", id="object"),
        pytest.param(Boom("x"), "Boom", id="exception"),
        pytest.param(2**70, "int", id="big-int"),
    ],
)
def test_encode_value_names_the_type(value: object, type_name: str) -> None:
    with pytest.raises(SerializationError, match=f"cannot serialize the result: a value of type "
                                                 f"{type_name} "):
        encode_value(value)


def test_encode_value_names_what_it_encodes() -> None:
    with pytest.raises(SerializationError, match="cannot serialize the cron payload"):
        encode_value(object(), "cron payload")


@pytest.mark.parametrize(
    ("value", "type_", "expected"),
    [
        pytest.param(str(AN_ID), UUID, AN_ID, id="uuid"),
        pytest.param({"x": 1, "y": 2}, Point, Point(1, 2), id="dataclass"),
        pytest.param([1, "a"], tuple[int, str], (1, "a"), id="tuple"),
        pytest.param({"a": 1}, Any, {"a": 1}, id="any"),
        pytest.param(7, int, 7, id="int"),
    ],
)
def test_decode_value_converts_to_the_type(value: object, type_: Any, expected: object) -> None:
    assert decode_value(encode_value(value), type_) == expected


# --- ArgConverter ----------------------------------------------------------------------------


def convert_one(annotation_fn: Any, value: Any) -> Any:
    """Encode, decode and convert one positional argument."""
    spec = decode_spec(encode_spec(JobSpec("t", args=[value])))
    args, _ = ArgConverter(annotation_fn).convert(spec.args, {})
    return args[0]


def takes_uuid(ctx: object, v: UUID) -> None: ...
def takes_point(ctx: object, v: Point) -> None: ...
def takes_user(ctx: object, v: User) -> None: ...
def takes_tuple(ctx: object, v: tuple[int, ...]) -> None: ...
def takes_set(ctx: object, v: set[int]) -> None: ...
def takes_datetime(ctx: object, v: datetime) -> None: ...
def takes_enum(ctx: object, v: Color) -> None: ...
def takes_decimal(ctx: object, v: Decimal) -> None: ...
def takes_optional_uuid(ctx: object, v: UUID | None) -> None: ...


@pytest.mark.parametrize(
    ("fn", "sent", "expected_type", "expected"),
    [
        pytest.param(takes_uuid, AN_ID, UUID, AN_ID, id="uuid-from-str"),
        pytest.param(takes_point, Point(3, 4), Point, Point(3, 4), id="dataclass-from-dict"),
        pytest.param(takes_user, User(AN_ID, "bo"), User, User(AN_ID, "bo"), id="struct"),
        pytest.param(takes_tuple, (1, 2, 3), tuple, (1, 2, 3), id="tuple-from-list"),
        pytest.param(takes_set, {1, 2}, set, {1, 2}, id="set-from-list"),
        pytest.param(takes_datetime, A_MOMENT, datetime, A_MOMENT, id="datetime"),
        pytest.param(takes_enum, Color.RED, Color, Color.RED, id="enum-from-value"),
        pytest.param(takes_decimal, Decimal("0.10"), Decimal, Decimal("0.10"), id="decimal"),
        pytest.param(takes_optional_uuid, None, type(None), None, id="optional-none"),
        pytest.param(takes_optional_uuid, AN_ID, UUID, AN_ID, id="optional-uuid"),
    ],
)
def test_converter_restores_annotated_types(
    fn: Any, sent: object, expected_type: type, expected: object
) -> None:
    got = convert_one(fn, sent)
    assert type(got) is expected_type
    assert got == expected


def test_datetime_in_another_timezone_keeps_its_instant() -> None:
    moment = datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    got = convert_one(takes_datetime, moment)
    assert got == moment
    assert got.tzinfo is not None


def native(ctx: object, a: int, b: str, c: float, d: bytes, e: bool, f: Any, g=None,
           *rest: Any, **extra: object) -> None: ...


def test_native_annotations_are_checked_and_unannotated_pass_through() -> None:
    converter = ArgConverter(native)
    assert converter.trivial is False
    args = [1, "b", 2.5, b"d", True, object(), None, 3, 4]
    kwargs = {"z": [1]}
    assert converter.convert(args, kwargs) == (args, kwargs)
    with pytest.raises(msgspec.ValidationError, match="argument 'a'"):
        converter.convert(["not-an-int", "b", 2.5, b"d", True, None], {})


def test_unannotated_signature_is_trivial_and_passes_values_through() -> None:
    def loose(ctx, a, b=None, *rest, **extra):  # type: ignore[no-untyped-def]
        ...

    converter = ArgConverter(loose)
    assert converter.trivial is True
    args, kwargs = ["anything", 1, 2], {"z": object()}
    out_args, out_kwargs = converter.convert(args, kwargs)
    assert out_args is args and out_kwargs is kwargs


def test_converter_skips_the_context_parameter() -> None:
    assert ArgConverter(typed_task).names == tuple(TYPED_VALUES)
    assert ArgConverter(typed_task).trivial is False


def mixed(ctx: object, uid: UUID, raw, n: int, *ids: UUID, when: datetime, **kw: Any) -> None:
    ...


def test_converter_converts_annotated_params_and_leaves_the_rest() -> None:
    raw = {"x": 1}
    args, kwargs = ArgConverter(mixed).convert(
        [str(AN_ID), raw, 7, str(AN_ID)], {"when": A_MOMENT, "other": str(AN_ID)}
    )
    assert args == [AN_ID, raw, 7, AN_ID]
    assert args[1] is raw
    assert kwargs == {"when": A_MOMENT, "other": str(AN_ID)}
    with pytest.raises(msgspec.ValidationError, match="argument 'n'"):
        ArgConverter(mixed).convert([str(AN_ID), raw, "7"], {"when": A_MOMENT})


def unresolvable(ctx: object, v: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
    ...


def test_unresolvable_annotations_mean_no_conversion() -> None:
    converter = ArgConverter(unresolvable)
    assert converter.trivial is True
    assert converter.convert([str(AN_ID)], {}) == ([str(AN_ID)], {})


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        pytest.param(["not-a-uuid", {"x": 1, "y": 2}], {}, "uid", id="positional"),
        pytest.param([str(AN_ID), {"x": "one", "y": 2}], {}, "point", id="dataclass-field"),
        pytest.param([str(AN_ID)], {"point": [1, 2, 3]}, "point", id="keyword"),
    ],
)
def test_mismatching_value_names_the_argument(
    args: list[Any], kwargs: dict[str, Any], name: str
) -> None:
    def fn(ctx: object, uid: UUID, point: Point) -> None: ...
    with pytest.raises(msgspec.ValidationError, match=f"argument '{name}': "):
        ArgConverter(fn).convert(args, kwargs)


def varargs(ctx: object, first: UUID, *more: UUID) -> None: ...


def test_varargs_are_converted_and_named_by_index() -> None:
    converter = ArgConverter(varargs)
    args, _ = converter.convert([str(AN_ID), str(AN_ID)], {})
    assert args == [AN_ID, AN_ID]
    with pytest.raises(msgspec.ValidationError, match=r"argument '\*args\[1\]'"):
        converter.convert([str(AN_ID), str(AN_ID), "bad"], {})


def var_keywords(ctx: object, **ids: UUID) -> None: ...


def test_var_keyword_values_are_converted() -> None:
    _, kwargs = ArgConverter(var_keywords).convert([], {"a": str(AN_ID)})
    assert kwargs == {"a": AN_ID}


# --- return_type -----------------------------------------------------------------------------


async def returns_user(ctx: object) -> User: ...
def returns_list(ctx: object) -> list[int]: ...
def returns_nothing_declared(ctx):
    ...
def returns_unknown(ctx: object) -> Unknown:  # type: ignore[name-defined]  # noqa: F821
    ...


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        pytest.param(returns_user, User, id="struct"),
        pytest.param(returns_list, list[int], id="generic"),
        pytest.param(returns_nothing_declared, Any, id="unannotated"),
        pytest.param(returns_unknown, Any, id="unresolvable"),
    ],
)
def test_return_type(fn: Any, expected: Any) -> None:
    assert return_type(fn) == expected


# --- error_info ------------------------------------------------------------------------------


def raise_nested() -> None:
    raise Outer.Inner("inner trouble")


@pytest.mark.parametrize(
    ("exc_factory", "type_name", "message"),
    [
        pytest.param(lambda: ValueError("bad value"), "builtins.ValueError", "bad value",
                     id="builtin"),
        pytest.param(lambda: Boom("kaboom"), f"{__name__}.Boom", "kaboom", id="user-defined"),
        pytest.param(lambda: Outer.Inner("in"), f"{__name__}.Outer.Inner", "in", id="nested"),
        pytest.param(lambda: KeyError("k"), "builtins.KeyError", "'k'", id="key-error"),
    ],
)
def test_error_info_captures_type_and_message(
    exc_factory: Any, type_name: str, message: str
) -> None:
    try:
        raise exc_factory()
    except Exception as exc:
        info = error_info(exc, attempt=2, at_ms=1_700_000_000_000)
    assert info.type == type_name
    assert info.message == message
    assert info.attempt == 2
    assert info.at_ms == 1_700_000_000_000
    assert info.traceback.startswith("Traceback (most recent call last):")
    assert info.traceback.rstrip().endswith(f"{type_name.rsplit('.', 1)[-1]}: {message}")


def first_frame_file(text: str) -> str:
    line = next(ln for ln in text.splitlines() if ln.lstrip().startswith("File "))
    return line.split('"')[1]


@pytest.mark.asyncio
async def test_error_info_starts_at_the_users_code() -> None:
    async def user_task() -> None:
        raise_nested()

    outcome = await run_attempt(user_task, None)
    assert outcome.error is not None
    raw = "".join(traceback.format_exception(outcome.error))
    assert first_frame_file(raw).startswith(PACKAGE_DIR)  # the case is real

    info = error_info(outcome.error, 1, 0)
    assert first_frame_file(info.traceback) == __file__
    assert PACKAGE_DIR not in info.traceback
    assert "in user_task" in info.traceback
    assert "in raise_nested" in info.traceback
    assert info.type == f"{__name__}.Outer.Inner"


def test_error_info_of_an_unraised_exception_has_no_frames() -> None:
    info = error_info(Boom("never raised"), 1, 0)
    assert info.traceback == f"{__name__}.Boom: never raised\n"


def test_error_info_keeps_the_cause() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise Boom("outer") from inner
    except Boom as exc:
        info = error_info(exc, 1, 0)
    assert "KeyError: 'inner'" in info.traceback
    assert "direct cause" in info.traceback


# --- error history and progress --------------------------------------------------------------


def test_error_history_round_trips() -> None:
    history = [
        ErrorInfo("builtins.ValueError", "bad", "Traceback...", 1, 1000),
        ErrorInfo("Timeout", "too slow", "", 2, 2000),
    ]
    assert decode_errors(encode_errors(history)) == tuple(history)


@pytest.mark.parametrize("absent", [None, b""], ids=["none", "empty"])
def test_absent_error_history_is_empty(absent: bytes | None) -> None:
    assert decode_errors(absent) == ()


def test_progress_round_trips() -> None:
    progress = Progress(0.75, "three quarters", 1234)
    assert decode_progress(encode_progress(progress)) == progress


@pytest.mark.parametrize("absent", [None, b""], ids=["none", "empty"])
def test_absent_progress_is_none(absent: bytes | None) -> None:
    assert decode_progress(absent) is None


def test_native_annotations_are_checked_not_trusted() -> None:
    def task(ctx: object, count: int, label: str) -> None: ...

    converter = ArgConverter(task)
    assert converter.convert([3, "x"], {}) == ([3, "x"], {})
    with pytest.raises(msgspec.ValidationError, match="argument 'count'"):
        converter.convert(["7", "x"], {})
    with pytest.raises(msgspec.ValidationError, match="argument 'label'"):
        converter.convert([7], {"label": 5})
