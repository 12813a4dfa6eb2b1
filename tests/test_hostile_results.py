"""Hostile values at the edges of an attempt: a result whose encoding raises a
``BaseException`` (``CancelledError`` included), an exception whose class cannot even be
named, and an ``expires`` of 0.

Each job must end visibly within its own tries, with the real error recorded: before the
fixes, the first two escaped the recording (``internal error running job``), the job stayed
``running`` and was rerun by every reclaim until it was dead-lettered as a poison pill
("worker died"), and ``expires=0`` meant "never expires".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._codec import encode_errors, error_info
from asyncjobs._model import ErrorInfo
from asyncjobs._retry import RetryPolicy, decide

from .conftest import Backend, running

pytestmark = pytest.mark.asyncio

SERIALIZATION = "asyncjobs.exceptions.SerializationError"
SETTLE_BOUND_S = 5.0
"""How long a job here may take to end (each ends within milliseconds; before the fixes
they never ended before a reclaim, 1 s claim timeout and more later)."""


@asyncjobs.task(name="hr.add")
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


async def ended(job: asyncjobs.Job[Any], bound_s: float = SETTLE_BOUND_S) -> asyncjobs.JobInfo:
    """The job's record once it is final; fails if it is not within ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while not (await job.status()).is_final:
        if time.monotonic() > deadline:
            info = await job.info()
            raise AssertionError(f"job still {info.state} after {bound_s:g} s (attempts "
                                 f"{info.attempts}, errors {[e.type for e in info.errors]})")
        await asyncio.sleep(0.01)
    return await job.info()


# -- D2: a BaseException raised while the result is encoded ---------------------------------


class BoomBase(BaseException):
    """Not an Exception."""


def hostile_result(error: BaseException) -> Any:
    """A dataclass msgspec encodes by reading its attribute ``x``, which raises ``error``."""

    @dataclasses.dataclass
    class Hostile:
        x: int

        def __getattribute__(self, name: str) -> Any:
            if name == "x":
                raise error
            return object.__getattribute__(self, name)

    return Hostile(1)


RESULT_ERRORS: list[Callable[[], BaseException]] = [
    lambda: BoomBase("boom"), lambda: KeyboardInterrupt(), lambda: SystemExit(3),
    lambda: asyncio.CancelledError("the value's own"), lambda: GeneratorExit(),
    lambda: RuntimeError("an Exception, as before"),
]


@pytest.mark.parametrize("make_error", RESULT_ERRORS, ids=[
    "custom-base-exception", "keyboard-interrupt", "system-exit", "cancelled-error",
    "generator-exit", "runtime-error"])
async def test_a_result_whose_encoding_raises_anything_fails_the_job_within_its_tries(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture,
    make_error: Callable[[], BaseException],
) -> None:
    runs = 0
    error = make_error()

    @asyncjobs.task(name="hr.hostile_result", max_tries=2, backoff=0.01)
    async def returns_hostile(ctx: Context) -> Any:
        nonlocal runs
        runs += 1
        return hostile_result(error)

    job = await pool.enqueue(returns_hostile)
    worker = backend.worker([returns_hostile, add], claim_timeout=1, concurrency=4)
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        async with running(backend, worker):
            info = await ended(job)
            after = await pool.enqueue(add, 2, 3)  # the worker still serves jobs
            assert await after.result(timeout=5) == 5
    assert info.state is JobState.FAILED, info
    assert info.attempts == 1 and runs == 1  # a result that cannot be encoded is not retried
    assert [e.type for e in info.errors] == [SERIALIZATION]
    name = type(error).__name__
    assert info.errors[0].message.startswith(f"cannot serialize the result: {name}")
    assert f"{name}" in info.errors[0].traceback  # the value's own error, as its cause
    with pytest.raises(asyncjobs.JobFailed) as caught:
        await job.result(timeout=1)
    assert "cannot serialize the result" in caught.value.remote_message
    assert "internal error" not in caplog.text
    assert "interrupted" not in caplog.text
    assert "reason='the result cannot be serialized'" in caplog.text


async def test_a_result_failing_with_cancelled_error_after_a_swallowed_stop_is_still_recorded(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker's own cancellation (a stop past the grace period) that the body swallowed,
    then a CancelledError raised by its result's encoding: the runner saw the stop's
    cancellation consumed by the body, so the encoding's error is the value's, recorded;
    and the worker still stops."""
    begun = asyncio.Event()

    @asyncjobs.task(name="hr.stubborn_result", max_tries=1)
    async def stubborn(ctx: Context) -> Any:
        begun.set()
        with contextlib.suppress(asyncio.CancelledError):  # it returns a value anyway
            await asyncio.sleep(30)
        return hostile_result(asyncio.CancelledError("the value's own"))

    job = await pool.enqueue(stubborn)
    worker = backend.worker([stubborn], shutdown_grace=0.2)
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        async with running(backend, worker):
            await asyncio.wait_for(begun.wait(), 5)
        # the block's end stopped the worker: it returned within its bound
    info = await ended(job, 1)
    assert info.state is JobState.FAILED
    assert [e.type for e in info.errors] == [SERIALIZATION]
    assert "internal error" not in caplog.text


async def test_a_stop_still_hands_a_running_job_back(backend: Backend,
                                                     pool: asyncjobs.Pool) -> None:
    """A real cancellation of an attempt (the worker's stop) is not an error of the job."""
    begun = asyncio.Event()

    @asyncjobs.task(name="hr.sleeper", max_tries=1)
    async def sleeper(ctx: Context) -> Any:
        begun.set()
        await asyncio.sleep(30)
        return hostile_result(asyncio.CancelledError("never reached"))

    job = await pool.enqueue(sleeper)
    async with running(backend, backend.worker([sleeper], shutdown_grace=0.2)):
        await asyncio.wait_for(begun.wait(), 5)
    info = await job.info()
    assert info.state is JobState.QUEUED and not info.errors  # handed back, not failed


# -- D3: error_info never raises -------------------------------------------------------------


class RaisingMeta(type):
    """A metaclass whose class attributes raise: its exceptions cannot be named."""

    raises: BaseException = RuntimeError("no names")

    def __getattribute__(cls, name: str) -> Any:
        if name in ("__name__", "__qualname__", "__module__"):
            raise type.__getattribute__(cls, "raises")
        return type.__getattribute__(cls, name)


class Nameless(Exception, metaclass=RaisingMeta):
    pass


class NamelessBase(BaseException, metaclass=RaisingMeta):
    raises = KeyboardInterrupt()


class Weird:
    """Not text: formatting it raises."""

    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format")

    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__


class WeirdNamesMeta(type):
    def __getattribute__(cls, name: str) -> Any:
        if name in ("__name__", "__qualname__", "__module__"):
            return Weird()
        return type.__getattribute__(cls, name)


class WeirdNames(Exception, metaclass=WeirdNamesMeta):
    pass


class LyingText(str):
    """A str whose own methods raise."""

    def __len__(self) -> int:
        raise RuntimeError("no len")

    def __getitem__(self, key: Any) -> str:
        raise RuntimeError("no item")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format")

    def __str__(self) -> str:
        raise RuntimeError("no str")


class StrSubclassText(Exception):
    def __str__(self) -> str:
        return LyingText("x" * 5000)


class RaisingText(Exception):
    def __str__(self) -> str:
        raise BoomBase("str")

    def __repr__(self) -> str:
        raise KeyboardInterrupt


class RaisingClass(Exception):
    @property  # type: ignore[misc]
    def __class__(self) -> Any:
        raise BoomBase("no class")


class RaisingTraceback(Exception):
    @property
    def __traceback__(self) -> Any:  # type: ignore[override]
        raise BoomBase("no traceback")


class RaisingNotes(Exception):
    @property
    def __notes__(self) -> Any:  # type: ignore[override]
        raise KeyboardInterrupt


class RaisingEverything(Exception):
    def __getattribute__(self, name: str) -> Any:
        raise BoomBase(name)


def cycle() -> BaseException:
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    b.__context__ = a
    return a


def noted() -> BaseException:
    error = ValueError("noted")
    error.add_note("plain")
    error.__notes__.append(Weird())  # type: ignore[arg-type]
    return error


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as exc:
        return exc


HOSTILE: dict[str, Callable[[], BaseException]] = {
    "metaclass-raises": Nameless,
    "metaclass-raises-base-exception": NamelessBase,
    "metaclass-names-not-text": WeirdNames,
    "str-returns-hostile-str-subclass": StrSubclassText,
    "str-and-repr-raise-base-exceptions": RaisingText,
    "class-attribute-raises": RaisingClass,
    "traceback-raises": RaisingTraceback,
    "notes-raise": RaisingNotes,
    "notes-unprintable": noted,
    "every-attribute-raises": RaisingEverything,
    "cause-cycle": cycle,
}


def captured(exc: BaseException, attempt: int, at_ms: int) -> ErrorInfo:
    """``error_info``, failing the test if it raises (a KeyboardInterrupt escaping it would
    end the whole test run instead)."""
    __tracebackhide__ = True  # pytest's report of this frame would show ``exc``'s repr
    try:
        return error_info(exc, attempt, at_ms)
    except BaseException as escaped:  # (what escapes here is a plain exception)
        what = f"{escaped!r:.200}"
    # failed out of the except block: pytest's report of a failure chained to the hostile
    # exception would trip on its class too
    pytest.fail(f"error_info raised {what}")


@pytest.mark.parametrize("was_raised", [False, True], ids=["made", "raised"])
@pytest.mark.parametrize("make", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_error_info_never_raises_whatever_the_exception_does(
    make: Callable[[], BaseException], was_raised: bool
) -> None:
    exc = make()
    if was_raised:
        exc = raised(exc)
    info = captured(exc, 2, 1234)
    assert type(info) is ErrorInfo and info.attempt == 2 and info.at_ms == 1234
    for text in (info.type, info.message, info.traceback):
        assert type(text) is str  # plain text, whatever the exception's methods return
    assert len(info.message) <= 4096 + 40 and len(info.traceback) <= 16384 + 60
    assert msgspec.msgpack.decode(encode_errors([info]), type=list[ErrorInfo]) == [info]
    if issubclass(type(exc), Nameless | NamelessBase | WeirdNames):  # (not its __class__)
        assert info.type == "?.?"  # a part it cannot read (or that is not text) reads ?
    else:
        assert info.type == f"{type(exc).__module__}.{type(exc).__qualname__}"


def _raises(make: Callable[[], BaseException]) -> Callable[..., Any]:
    def method(*args: Any) -> Any:
        raise make()
    return method


async def test_error_info_combines_hostile_traits() -> None:
    """Every combination of a hostile metaclass, __str__, __repr__ and attributes."""
    traits: dict[str, dict[str, Any]] = {
        "str": {"__str__": _raises(lambda: BoomBase("str"))},
        "repr": {"__repr__": _raises(KeyboardInterrupt)},
        "text": {"__str__": lambda self: LyingText("text")},
        "attrs": {"__getattribute__": _raises(lambda: BoomBase("attribute"))},
    }
    names = list(traits)
    for mask in range(1 << len(names)):
        for meta in (type, RaisingMeta, WeirdNamesMeta):
            body: dict[str, Any] = {}
            for i, name in enumerate(names):
                if mask >> i & 1:
                    body.update(traits[name])
            for base in (Exception, BaseException):
                kind = meta(f"Combo{mask}", (base,), body)
                for exc in (kind(), raised(kind())):
                    info = captured(exc, 1, 0)
                    assert all(type(t) is str for t in (info.type, info.message,
                                                          info.traceback))
                    assert info.type == ("?.?" if meta is not type else
                                         f"{__name__}.Combo{mask}")


async def test_decide_follows_the_policy_for_an_exception_whose_class_cannot_be_named() -> None:
    policy = RetryPolicy(max_tries=2)
    assert decide("error", Nameless(), 1, policy, 0.5).action.value == "retry"
    last = decide("error", Nameless(), 2, policy, 0.5)
    assert last.action.value == "failed" and last.reason == "raised ? on try 2 of 2"
    assert decide("error", RaisingClass(), 1, policy, 0.5).action.value == "retry"
    assert decide("error", NamelessBase(), 1, policy, 0.5).reason == "raised ? (not retryable)"


@pytest.mark.parametrize("make", [Nameless, WeirdNames, RaisingClass, RaisingEverything],
                         ids=["metaclass-raises", "metaclass-names-not-text",
                              "class-attribute-raises", "every-attribute-raises"])
async def test_a_task_raising_an_exception_that_cannot_be_named_fails_after_its_tries(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture,
    make: Callable[[], BaseException],
) -> None:
    runs = 0

    @asyncjobs.task(name="hr.nameless", max_tries=2, backoff=0.01)
    async def nameless(ctx: Context) -> None:
        nonlocal runs
        runs += 1
        raise make()

    job = await pool.enqueue(nameless)
    worker = backend.worker([nameless], claim_timeout=1)
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        async with running(backend, worker):
            info = await ended(job)
    assert info.state is JobState.FAILED, info
    assert info.attempts == 2 and runs == 2  # retried as its policy says, no more
    assert len(info.errors) == 2 and "WorkerLost" not in str(info.errors)
    assert "internal error" not in caplog.text


# -- expires=0 -------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [None, 0.2], ids=["now", "delayed"])
@pytest.mark.parametrize("expires", [0, timedelta(0), 0.0004],
                         ids=["0", "timedelta-0", "0.4-ms"])
async def test_an_expiry_of_zero_has_passed_before_any_worker_can_start_the_job(
    backend: Backend, pool: asyncjobs.Pool, expires: Any, delay: float | None,
) -> None:
    """Given to ``enqueue``, ``enqueue_many``, a later ``options()`` call, or a task
    reference by name, to a worker that is idle and takes each job as it comes."""
    runs = 0

    @asyncjobs.task(name="hr.once")
    async def once(ctx: Context) -> int:
        nonlocal runs
        runs += 1
        return 1

    options: dict[str, Any] = {"expires": expires}
    if delay is not None:
        options["delay"] = delay
    async with running(backend, backend.worker([once], concurrency=4)):
        await asyncio.sleep(0.05)  # the worker waits for jobs
        jobs = [await pool.enqueue(once.options(**options))]
        await asyncio.sleep(0.01)
        jobs += await pool.enqueue_many([asyncjobs.call(once.options(**options))])
        await asyncio.sleep(0.01)
        jobs.append(await pool.enqueue(once.options(**options).options(queue="default")))
        await asyncio.sleep(0.01)
        jobs.append(await pool.enqueue(asyncjobs.task_ref("hr.once").options(**options)))
        infos = [await ended(job, 3) for job in jobs]
    assert [i.state for i in infos] == [JobState.EXPIRED] * 4 and runs == 0, infos


async def test_a_positive_expiry_still_counts_from_the_enqueue(pool: asyncjobs.Pool) -> None:
    """The record's expiry: 1 ms after the epoch for 0 (as a datetime before 1970 is), the
    enqueue time plus the duration for anything of 1 ms or more, none for None."""
    base = pool.job((await pool.enqueue(add, 1, 1)).id)
    plain = await base.info()
    assert plain.expires_at is None
    zero = await (await pool.enqueue(add.options(expires=0, delay=60), 1, 1)).info()
    assert zero.expires_at == datetime.fromtimestamp(0.001, UTC)
    old = await (await pool.enqueue(add.options(
        expires=datetime(1960, 1, 1, tzinfo=UTC), delay=60), 1, 1)).info()
    assert old.expires_at == zero.expires_at
    later = await (await pool.enqueue(add.options(expires=0.001, delay=60), 1, 1)).info()
    assert later.expires_at is not None and later.enqueued_at is not None
    assert later.expires_at - later.enqueued_at == timedelta(milliseconds=1)
