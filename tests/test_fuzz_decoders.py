"""Property tests (Hypothesis) of the decoders: whatever Redis holds, they raise only what
their callers catch.

``decode_spec``, ``decode_errors``, ``decode_progress`` and ``decode_value`` read bytes that
anyone with access to Redis may have written. On arbitrary bytes, on valid msgpack of any
shape, and on data nested far too deep, each one returns or raises an ``Exception`` (the
worker and the job handle catch ``Exception``): never a ``BaseException`` that is not one,
never a crash of the interpreter. ``parse_record`` (``Job.info()``, the CLI) shows garbage
fields as absent and raises ``CorruptJob`` only for a state it cannot read; the job handle
raises only ``AsyncJobsError``. ``encode_spec`` refuses data nested deeper than
``MAX_DEPTH`` with ``SerializationError``, and what it accepts decodes again, also in a
thread whose stack is already 300 Python frames deep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import asyncjobs
from asyncjobs._codec import (
    MAX_DEPTH,
    decode_errors,
    decode_progress,
    decode_spec,
    decode_value,
    encode_spec,
    encode_value,
)
from asyncjobs._model import ErrorInfo, JobInfo, JobSpec, JobState, Progress
from asyncjobs._producer.handle import parse_record
from asyncjobs.exceptions import AsyncJobsError, CorruptJob, SerializationError

from .conftest import Backend

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
T = TypeVar("T")
DEEP_STACK_FRAMES = 300


class Box(msgspec.Struct):
    value: Any


@dataclasses.dataclass
class Pair:
    left: Any
    right: int = 0


TARGET_TYPES: tuple[Any, ...] = (Any, int, float, str, bytes, list[int], dict[str, int],
                                 tuple[int, str], JobSpec, ErrorInfo, Progress, Box, Pair,
                                 datetime, UUID, list[Box], int | None)


def decoders() -> dict[str, Callable[[bytes], object]]:
    """Every decoder applied to data read from Redis (and decode_value for each type a task
    may declare as its return type)."""
    found: dict[str, Callable[[bytes], object]] = {
        "decode_spec": decode_spec, "decode_errors": decode_errors,
        "decode_progress": decode_progress,
    }
    for type_ in TARGET_TYPES:
        found[f"decode_value[{type_}]"] = lambda data, t=type_: decode_value(data, t)
    return found


def check_decoders(data: bytes) -> list[str]:
    """Each decoder returns (a value of its type) or raises an Exception; anything else
    (a BaseException that is not an Exception) propagates and fails the test. Returns what
    each one did (Hypothesis events are reported from the test's own thread)."""
    seen = []
    for name, decode in decoders().items():
        try:
            value = decode(data)
        except Exception as exc:
            seen.append(f"{name} raised {type(exc).__name__}")
            continue
        seen.append(f"{name} returned")
        if name == "decode_spec":
            assert isinstance(value, JobSpec)
        elif name == "decode_errors":
            assert isinstance(value, tuple)
            assert all(isinstance(e, ErrorInfo) for e in value)
        elif name == "decode_progress":
            assert value is None or isinstance(value, Progress)
    return seen


def report(seen: list[str]) -> None:
    for label in seen:
        event(label)


def in_deep_stack(fn: Callable[[], T], frames: int = DEEP_STACK_FRAMES) -> T:
    """``fn()`` run in a new thread, from inside ``frames`` nested Python frames."""
    outcome: dict[str, Any] = {}

    def descend(n: int) -> T:
        if n == 0:
            return fn()
        return descend(n - 1)

    def main() -> None:
        try:
            outcome["value"] = descend(frames)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


# -- msgpack of every shape ----------------------------------------------------------------


def pack_header(small: int, big16: int, n: int) -> bytes:
    return bytes([small | n]) if n < 16 else bytes([big16]) + n.to_bytes(2, "big")


def pack_array(items: list[bytes]) -> bytes:
    return pack_header(0x90, 0xDC, len(items)) + b"".join(items)


def pack_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return pack_header(0x80, 0xDE, len(pairs)) + b"".join(k + v for k, v in pairs)


ints = st.integers(-(2**63), 2**64 - 1)
plain_leaves = st.one_of(st.none(), st.booleans(), ints,
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                         st.binary(max_size=8))


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=5),
                     st.dictionaries(st.one_of(st.text(max_size=4), ints), inner, max_size=4))


plain_values = st.recursive(plain_leaves, containers, max_leaves=24)
values = st.recursive(
    st.one_of(plain_leaves,
              st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=12))),
    containers, max_leaves=24)
# Raw msgpack that no Python value encodes to: maps keyed by arrays or maps, timestamps of
# odd lengths, the reserved byte 0xc1, truncated containers.
odd_leaves = st.one_of(
    values.map(msgspec.msgpack.encode),
    st.sampled_from((b"\xc1", b"\xd4\xff\x00", b"\xd5\xff\x00\x00", b"\xd6\xff\xff\xff\xff\xff",
                     b"\xd7\xff" + b"\xff" * 8, b"\xc7\x0c\xff" + b"\xff" * 12,
                     b"\xc7\x03\xff\x00\x00\x00", b"\x92\xa1x", b"\xdc\xff\xff",
                     b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x01", b"\xa3\xff\xfe\xfd")),
)
raw_msgpack = st.recursive(
    odd_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=5).map(pack_array),
                            st.lists(st.tuples(inner, inner), max_size=3).map(pack_map)),
    max_leaves=16,
)
# Near misses of the shapes the decoders expect (array-like structs).
near_spec = st.lists(st.one_of(st.text(max_size=6), values), max_size=8)
near_errors = st.lists(st.lists(st.one_of(st.text(max_size=6), ints, values),
                                max_size=6), max_size=3)
near_progress = st.lists(st.one_of(st.floats(), ints, st.text(max_size=4), values),
                         max_size=4)
shaped = st.one_of(values, near_spec, near_errors, near_progress).map(msgspec.msgpack.encode)


@settings(FUZZ, max_examples=1000)
@given(data=st.binary(max_size=64))
def test_decoders_on_arbitrary_bytes_return_or_raise_an_exception(data: bytes) -> None:
    report(check_decoders(data))


@settings(FUZZ, max_examples=600)
@given(data=st.one_of(shaped, raw_msgpack))
def test_decoders_on_msgpack_of_any_shape_return_or_raise_an_exception(data: bytes) -> None:
    report(check_decoders(data))


# -- data nested too deep for the stack ----------------------------------------------------

LEVELS = {"array": b"\x91", "map": b"\x81\xa1k", "bin-keyed map": b"\x81\xc4\x01k"}
FRONTS = {
    "bare": b"",
    "spec args": b"\x92\xa1t",  # JobSpec("t", args=<deep>)
    "spec kwargs": b"\x93\xa1t\x90\x81\xa1k",  # JobSpec("t", [], {"k": <deep>})
    "error message": b"\x91\x95\xa1t",  # [ErrorInfo("t", <deep>, ...)]
    "progress value": b"",
}


@settings(FUZZ, max_examples=100)
@given(depth=st.one_of(st.integers(1, 2000), st.integers(2000, 200_000)),
       level=st.sampled_from(sorted(LEVELS)), front=st.sampled_from(sorted(FRONTS)),
       tail=st.sampled_from((b"\xc0", b"", b"\x90", b"\xc1")),
       deep_stack=st.booleans())
def test_decoders_on_deeply_nested_data_return_or_raise_an_exception(
    depth: int, level: str, front: str, tail: bytes, deep_stack: bool
) -> None:
    data = FRONTS[front] + LEVELS[level] * depth + tail
    report(in_deep_stack(lambda: check_decoders(data)) if deep_stack else check_decoders(data))


CRASH_PROBE = textwrap.dedent("""
    import sys, threading
    from asyncjobs._codec import decode_errors, decode_progress, decode_spec, decode_value

    data = sys.stdin.buffer.read()
    def decode_all():
        for decode in (decode_spec, decode_errors, decode_progress, decode_value):
            try:
                decode(data)
            except Exception:
                pass
    def descend(n):
        return decode_all() if n == 0 else descend(n - 1)
    decode_all()
    thread = threading.Thread(target=descend, args=(300,))
    thread.start()
    thread.join()
    print("survived")
""")


@pytest.mark.parametrize("front", ["bare", "spec args", "error message"])
def test_a_million_levels_of_nesting_never_crash_the_interpreter(front: str) -> None:
    """In a child process (a crash there is a failed test, not a dead test run), with the
    default recursion limit: in the main thread and in a thread 300 frames deep."""
    data = FRONTS[front] + b"\x91" * 1_000_000 + b"\xc0"
    done = subprocess.run([sys.executable, "-c", CRASH_PROBE], input=data,
                          capture_output=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, b"survived"), done.stderr[-2000:]


# -- parse_record and the job handle on garbage records --------------------------------------

FIELDS = (b"j", b"s", b"a", b"q", b"d", b"x", b"e", b"st", b"et", b"w", b"r", b"h", b"ab",
          b"p", b"dl", b"de")
STATES = tuple(s.value.encode() for s in JobState)
field_values = st.one_of(
    st.binary(max_size=16),
    st.sampled_from((b"", b"0", b"-1", b"1e3", b"1_000", b"9" * 30, b"-" + b"9" * 30,
                     b"1" * 5000, b" 3 ", b"inf", b"nan", b"1795276503766-0", b"-5-0", b"\xff",
                     *STATES, b"Queued")),
    shaped, raw_msgpack,
    st.builds(lambda: encode_spec(JobSpec("t", [1], {"k": "v"}, 1.5, 3, 60.0, {"h": "v"}))),
    st.builds(lambda: msgspec.msgpack.encode([ErrorInfo("builtins.ValueError", "m", "tb", 1,
                                                        2**63)])),
)
records = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.binary(max_size=3)),
                          field_values, max_size=10)
# A whole record as asyncjobs writes it (a failed job: every field set), some of its fields
# then replaced by garbage.
WHOLE = {b"j": encode_spec(JobSpec("t", [1], {"k": "v"}, 1.5, 3, 60.0, {"h": "v"})),
         b"a": b"2", b"q": b"1795276503766", b"d": b"1795276503800", b"x": b"1795276599999",
         b"e": b"1795276503766-0", b"st": b"1795276503801", b"et": b"1795276503900",
         b"w": b"host:1:abc", b"r": msgspec.msgpack.encode({"v": 1}),
         b"h": msgspec.msgpack.encode([ErrorInfo("builtins.ValueError", "m", "tb", 1, 5)]),
         b"ab": b"1", b"p": msgspec.msgpack.encode(Progress(0.5, "half", 5)), b"dl": b"why",
         b"de": b"1795276503901-0"}
damaged_records = st.builds(lambda state, changes: {**WHOLE, b"s": state, **changes},
                            st.sampled_from(STATES), records)


@settings(FUZZ, max_examples=400)
@given(raw=st.one_of(records, damaged_records))
def test_parse_record_shows_garbage_as_absent_and_raises_only_for_an_unreadable_state(
    raw: dict[bytes, bytes]
) -> None:
    """What ``Job.info()`` and ``asyncjobs job ID`` do with a record: a JobInfo whenever the
    state can be read (garbage fields shown as absent), else ``CorruptJob``."""
    readable_state = raw.get(b"s") in STATES
    try:
        info = parse_record("job-1", "default", raw)
    except CorruptJob:
        assert not readable_state, "a record with a readable state is shown"
        event("CorruptJob")
        return
    assert readable_state
    assert isinstance(info, JobInfo) and info.state.value.encode() == raw[b"s"]
    assert isinstance(info.attempts, int)
    for moment in (info.enqueued_at, info.scheduled_for, info.started_at, info.ended_at,
                   info.expires_at):
        assert moment is None or isinstance(moment, datetime)
    assert all(isinstance(e, ErrorInfo) for e in info.errors)
    assert info.progress is None or isinstance(info.progress, Progress)
    event("JobInfo")


# A record as asyncjobs writes it (a queued job), some of its fields then replaced.
handle_records = st.one_of(
    records.filter(bool),
    st.builds(lambda spec, changes: {b"j": spec, b"s": b"queued", b"a": b"0",
                                     b"e": b"1795276503766-0", **changes},
              st.just(encode_spec(JobSpec("t", [1]))), records),
)
HANDLE_CALLS: dict[str, Callable[[asyncjobs.Job[Any]], Any]] = {
    "status": lambda job: job.status(),
    "info": lambda job: job.info(),
    "progress": lambda job: job.progress(),
    "result": lambda job: job.result(timeout=0.01),
    "abort": lambda job: job.abort(),
}


async def handle_errors(backend: Backend, raw: dict[bytes, bytes], kind: str,
                        seen: list[str]) -> list[str]:
    """Each method of a job handle on the record (or key) given, in a queue in use (its
    stream exists); the errors that are not ``AsyncJobsError``."""
    wrong = []
    async with backend.pool(queue=f"q{secrets.token_hex(5)}", retry_for=0.5) as pool:
        await pool.store(pool.default_queue).ensure_group()
        job = asyncjobs.Job(pool, "job-1", pool.default_queue)
        key = pool.keys(pool.default_queue).job(job.id)
        for method, call in HANDLE_CALLS.items():
            await pool.client.delete(key)
            if kind == "hash":
                await pool.client.hset(key, mapping=raw)  # type: ignore[arg-type,misc]
            elif kind != "none":
                await pool.client.eval(MAKE_KEY[kind], 1, key)
            try:
                await call(job)
            except AsyncJobsError as exc:
                seen.append(f"{method} raised {type(exc).__name__}")
            except Exception as exc:
                wrong.append(f"Job.{method}() raised {type(exc).__name__}: {exc}")
        await pool.client.delete(key, pool.keys(pool.default_queue).stream)
    return wrong


@settings(FUZZ, max_examples=40)
@given(raw=handle_records)
def test_the_job_handle_on_a_record_of_garbage_fields_raises_only_asyncjobs_errors(
    backend: Backend, raw: dict[bytes, bytes]
) -> None:
    """``Job.status()``, ``info()``, ``progress()``, ``result()`` and ``abort()`` on a record
    whose fields hold garbage: a value, or an ``AsyncJobsError`` (Redis and codec errors
    are translated at the boundary)."""
    seen: list[str] = []
    wrong = asyncio.run(handle_errors(backend, raw, "hash", seen))
    report(seen)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("kind", ["string", "list", "set", "zset", "stream"])
def test_the_job_handle_on_a_job_key_of_another_type_raises_only_asyncjobs_errors(
    backend: Backend, kind: str
) -> None:
    wrong = asyncio.run(handle_errors(backend, {}, kind, []))
    assert not wrong, "\n".join(wrong)


MAKE_KEY = {
    "string": "return redis.call('SET', KEYS[1], 'junk')",
    "list": "return redis.call('RPUSH', KEYS[1], 'junk')",
    "set": "return redis.call('SADD', KEYS[1], 'junk')",
    "zset": "return redis.call('ZADD', KEYS[1], 1, 'junk')",
    "stream": "return redis.call('XADD', KEYS[1], '*', 'junk', '1')",
}


# -- encode_spec on deep data ---------------------------------------------------------------

WRAPS: dict[str, Callable[[Any], Any]] = {
    "list": lambda v: [v],
    "dict": lambda v: {"k": v},
    "tuple": lambda v: (v,),
    "frozenset": lambda v: frozenset([v]) if _hashable(v) else [v],
    "struct": Box,
    "dataclass": Pair,
}


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def nest(levels: list[str], leaf: Any) -> Any:
    value = leaf
    for kind in reversed(levels):
        value = WRAPS[kind](value)
    return value


def plain(value: Any) -> Any:
    """What msgpack gives back for a value made of builtins."""
    if isinstance(value, list | tuple | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def depth_of(levels: list[str], leaf: Any) -> int:
    return len(levels) + (1 if isinstance(leaf, list | dict) else 0)


leaf_values = st.one_of(ints, st.text(max_size=3), st.none(),
                        st.floats(allow_nan=False), st.just([]), st.just({}))
around_the_limit = st.one_of(st.integers(1, MAX_DEPTH + 5), st.integers(MAX_DEPTH - 5,
                                                                       MAX_DEPTH + 5),
                             st.integers(MAX_DEPTH + 5, 3000))


@settings(FUZZ, max_examples=150)
@given(depth=around_the_limit, kinds=st.lists(st.sampled_from(sorted(WRAPS)), min_size=1,
                                              max_size=6),
       leaf=leaf_values, as_kwarg=st.booleans(), deep_stack=st.booleans())
def test_encode_spec_refuses_data_nested_deeper_than_max_depth(
    depth: int, kinds: list[str], leaf: Any, as_kwarg: bool, deep_stack: bool
) -> None:
    levels = [kinds[i % len(kinds)] for i in range(depth)]
    value = nest(levels, leaf)
    spec = JobSpec("t", kwargs={"k": value}) if as_kwarg else JobSpec("t", [value])
    call = (lambda: encode_spec(spec)) if not deep_stack else (
        lambda: in_deep_stack(lambda: encode_spec(spec)))
    if depth_of(levels, leaf) > MAX_DEPTH:
        with pytest.raises(SerializationError, match="nested more than"):
            call()
        with pytest.raises(SerializationError):
            encode_value(value)
        event("refused")
        return
    try:
        data = call()
    except SerializationError:
        event("refused at or under MAX_DEPTH")
        return
    decoded = in_deep_stack(lambda: decode_spec(data))
    again = decode_spec(data)
    assert decoded == again
    event("accepted")


plain_levels = st.lists(st.sampled_from(("list", "dict", "tuple")), min_size=1, max_size=140)


@settings(FUZZ, max_examples=150)
@given(levels=plain_levels, leaf=leaf_values, extra=st.lists(plain_values, max_size=3))
def test_what_encode_spec_accepts_decodes_again_also_three_hundred_frames_deep(
    levels: list[str], leaf: Any, extra: list[Any]
) -> None:
    value = nest(levels, leaf)
    spec = JobSpec("t", [value, *extra], {"k": value}, headers={"h": "v"})
    try:
        data = encode_spec(spec)
    except SerializationError:
        assert depth_of(levels, leaf) >= MAX_DEPTH
        return
    for decoded in (decode_spec(data), in_deep_stack(lambda: decode_spec(data))):
        assert decoded.task == "t" and decoded.headers == {"h": "v"}
        assert same_value(decoded.args, plain([value, *extra]))
        assert same_value(decoded.kwargs, {"k": plain(value)})
    event("round trip")


def same_value(a: Any, b: Any) -> bool:
    """Equality where nan equals nan (msgpack keeps it)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b) and type(a) is type(b)


def test_max_depth_is_the_deepest_nesting_accepted() -> None:
    """``MAX_DEPTH`` is documented as the deepest nesting accepted, and the refusal says
    "nested more than MAX_DEPTH levels": a list nested exactly MAX_DEPTH levels is
    accepted, one level more is refused."""
    with pytest.raises(SerializationError):
        encode_spec(JobSpec("t", [nest(["list"] * (MAX_DEPTH + 1), 1)]))
    at_limit = nest(["list"] * MAX_DEPTH, 1)
    assert decode_spec(encode_spec(JobSpec("t", [at_limit]))).args == [at_limit]
    encode_value(at_limit)
