"""Tasks: the decorator, per-job options, retry policies, references by name, and calls."""

from __future__ import annotations

import functools
import math
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from asyncjobs._retry import RetryPolicy
from asyncjobs._task import Call, JobOptions, Task, as_task, call, task, task_ref
from asyncjobs.exceptions import ConfigurationError

AWARE = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
NAIVE = datetime(2030, 1, 2, 3, 4, 5)


async def send(ctx: object, user_id: int, note: str = "") -> str:
    return f"sent {user_id} {note}".strip()


def add(ctx: object, a: int, b: int) -> int:
    return a + b


# --- the decorator ---------------------------------------------------------------------------


def test_bare_decorator_makes_a_task_named_after_the_function() -> None:
    made = task(send)
    assert isinstance(made, Task)
    assert made.fn is send
    assert made.name == "send"
    assert (made.queue, made.timeout_s, made.max_tries, made.result_ttl_s) == (None,) * 4
    assert made.job_options == JobOptions()
    assert made.is_async is True


def test_decorator_on_a_sync_function() -> None:
    made = task(add)
    assert made.name == "add"
    assert made.is_async is False


def test_decorator_with_options() -> None:
    made = task(
        name="emails.send", queue="emails", timeout=timedelta(seconds=90), max_tries=5,
        result_ttl=timedelta(hours=1),
    )(send)
    assert made.fn is send
    assert made.name == "emails.send"
    assert made.queue == "emails"
    assert made.timeout_s == 90.0
    assert made.max_tries == 5
    assert made.result_ttl_s == 3600.0


def test_decorator_syntax_with_and_without_parentheses() -> None:
    @task
    async def bare(ctx: object) -> None: ...

    @task()
    async def empty(ctx: object) -> None: ...

    @task(timeout=2.5)
    def timed(ctx: object) -> None: ...

    assert (bare.name, empty.name, timed.name) == ("bare", "empty", "timed")
    assert timed.timeout_s == 2.5


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        pytest.param({"max_tries": 0}, ConfigurationError, "max_tries must be >= 1", id="tries"),
        pytest.param({"max_tries": 1.5}, ConfigurationError, "max_tries must be an int",
                     id="float-tries"),
        pytest.param({"max_tries": True}, ConfigurationError, "max_tries must be an int",
                     id="bool-tries"),
        pytest.param({"timeout": -1}, ValueError, "timeout must be >= 0", id="timeout"),
        pytest.param({"result_ttl": timedelta(seconds=-5)}, ValueError,
                     "result_ttl must be >= 0", id="result-ttl"),
        pytest.param({"backoff": -0.5}, ValueError, "backoff must be >= 0", id="backoff"),
        pytest.param({"backoff_cap": -2}, ValueError, "backoff_cap must be >= 0", id="cap"),
    ],
)
def test_decorator_refuses_bad_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        task(**options)(send)


def test_async_callable_objects_and_partials_count_as_async() -> None:
    class Handler:
        async def __call__(self, ctx: object) -> None: ...

    assert Task(Handler()).is_async is True
    assert Task(functools.partial(send, user_id=1)).is_async is True
    assert Task(functools.partial(add, a=1)).is_async is False


# --- Task.options ----------------------------------------------------------------------------


def test_options_returns_a_copy_and_leaves_the_original_alone() -> None:
    original = task(queue="emails")(send)
    copy = original.options(job_id="job-1", queue="urgent")
    assert copy is not original
    assert copy.job_options.job_id == "job-1"
    assert copy.job_options.queue == "urgent"
    assert original.job_options == JobOptions()
    assert original.queue == copy.queue == "emails"
    assert copy.fn is send
    assert copy.name == "send"


def test_repeated_options_merge() -> None:
    first = task(send).options(job_id="a", delay=5, headers={"h": "1"})
    second = first.options(max_tries=2, delay=timedelta(seconds=7))
    assert second.job_options == JobOptions(
        job_id="a", delay_s=7.0, max_tries=2, headers={"h": "1"}
    )
    assert first.job_options == JobOptions(job_id="a", delay_s=5.0, headers={"h": "1"})


@pytest.mark.parametrize(
    ("given", "field", "seconds"),
    [
        pytest.param({"delay": timedelta(minutes=2)}, "delay_s", 120.0, id="delay-timedelta"),
        pytest.param({"delay": 1.5}, "delay_s", 1.5, id="delay-float"),
        pytest.param({"delay": 3}, "delay_s", 3.0, id="delay-int"),
        pytest.param({"delay": 0}, "delay_s", 0.0, id="delay-zero"),
        pytest.param({"timeout": timedelta(milliseconds=250)}, "timeout_s", 0.25,
                     id="timeout-timedelta"),
        pytest.param({"result_ttl": timedelta(days=1)}, "result_ttl_s", 86400.0,
                     id="result-ttl-timedelta"),
        pytest.param({"expires": timedelta(hours=2)}, "expires", 7200.0, id="expires-timedelta"),
        pytest.param({"expires": 30}, "expires", 30.0, id="expires-seconds"),
    ],
)
def test_options_convert_durations_to_seconds(given: dict[str, Any], field: str,
                                              seconds: float) -> None:
    value = getattr(task(send).options(**given).job_options, field)
    assert type(value) is float
    assert value == seconds


def test_options_keep_aware_datetimes() -> None:
    opts = task(send).options(at=AWARE, expires=AWARE).job_options
    assert opts.at is AWARE
    assert opts.expires is AWARE


def test_options_copy_headers() -> None:
    headers = {"trace": "1"}
    opts = task(send).options(headers=headers).job_options
    headers["trace"] = "2"
    assert opts.headers == {"trace": "1"}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param({"at": NAIVE}, "at= needs an aware datetime", id="naive-at"),
        pytest.param({"expires": NAIVE}, "expires= needs an aware datetime", id="naive-expires"),
        pytest.param({"delay": -1}, "delay must be >= 0", id="negative-delay"),
        pytest.param({"delay": timedelta(seconds=-1)}, "delay must be >= 0",
                     id="negative-delay-timedelta"),
        pytest.param({"timeout": -0.1}, "timeout must be >= 0", id="negative-timeout"),
        pytest.param({"result_ttl": -1}, "result_ttl must be >= 0", id="negative-result-ttl"),
        pytest.param({"expires": -5}, "expires must be >= 0", id="negative-expires"),
        pytest.param({"max_tries": 0}, "max_tries must be >= 1", id="zero-tries"),
        pytest.param({"max_tries": -1}, "max_tries must be >= 1", id="negative-tries"),
        pytest.param({"max_tries": 10**30}, "max_tries must be at most 1,000,000",
                     id="huge-tries"),
        # an int no float can hold must not raise OverflowError while being described
        pytest.param({"max_tries": 10**400}, "max_tries must be at most 1,000,000",
                     id="huger-tries"),
        # an int too large for a float is far over 10 years, not an OverflowError
        pytest.param({"delay": 10**400}, "delay must be at most 10 years", id="huge-int-delay"),
        pytest.param({"timeout": -(10**400)}, "timeout must be >= 0", id="huge-negative"),
        pytest.param({"expires": 10**400}, "expires must be at most 10 years",
                     id="huge-int-expires"),
    ],
)
def test_options_refuse_bad_values(given: dict[str, Any], message: str) -> None:
    original = task(send)
    with pytest.raises(ValueError, match=message):
        original.options(**given)
    assert original.job_options == JobOptions()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        # each of these was written to Redis and found undecodable by every worker
        pytest.param({"max_tries": 1.5}, "max_tries must be an int, not float", id="float"),
        pytest.param({"max_tries": math.nan}, "max_tries must be an int, not float", id="nan"),
        pytest.param({"max_tries": True}, "max_tries must be an int, not bool", id="bool"),
        pytest.param({"max_tries": "3"}, "max_tries must be an int, not str", id="str"),
        pytest.param({"headers": {"a": 1}}, "headers must map str to str", id="int-value"),
        pytest.param({"headers": {1: "a"}}, "headers must map str to str", id="int-key"),
        pytest.param({"headers": ["a"]}, "headers must be a mapping", id="list"),
        pytest.param({"at": date(2030, 1, 1)}, "at= needs an aware datetime, not date",
                     id="date-at"),
        pytest.param({"at": 1_893_456_000}, "at= needs an aware datetime, not int",
                     id="timestamp-at"),
    ],
)
def test_options_refuse_values_of_the_wrong_type(given: dict[str, Any], message: str) -> None:
    original = task(send)
    with pytest.raises(TypeError, match=message):
        original.options(**given)
    assert original.job_options == JobOptions()


# --- retry_policy ----------------------------------------------------------------------------

DEFAULTS = RetryPolicy(max_tries=3, retry_on=(Exception,), backoff_s=1.0, backoff_cap_s=300.0)


def test_a_task_without_retry_options_uses_the_worker_defaults() -> None:
    assert task(send).retry_policy(DEFAULTS, None) == DEFAULTS


def test_task_retry_options_override_the_defaults() -> None:
    made = task(
        max_tries=7, retry_on=(KeyError,), dont_retry_on=(LookupError,), retry_timeouts=False,
        backoff=timedelta(seconds=2), backoff_cap=60,
    )(send)
    assert made.retry_policy(DEFAULTS, None) == RetryPolicy(
        max_tries=7, retry_on=(KeyError,), dont_retry_on=(LookupError,), retry_timeouts=False,
        backoff_s=2.0, backoff_cap_s=60.0,
    )


def test_unset_task_options_keep_the_defaults() -> None:
    defaults = RetryPolicy(max_tries=4, dont_retry_on=(KeyError,), retry_timeouts=False)
    policy = task(backoff=5)(send).retry_policy(defaults, None)
    assert policy == RetryPolicy(
        max_tries=4, dont_retry_on=(KeyError,), retry_timeouts=False, backoff_s=5.0
    )


@pytest.mark.parametrize(
    ("task_tries", "job_tries", "expected"),
    [
        pytest.param(None, None, 3, id="defaults"),
        pytest.param(5, None, 5, id="task"),
        pytest.param(None, 2, 2, id="job"),
        pytest.param(5, 1, 1, id="job-over-task"),
        pytest.param(1, 9, 9, id="job-over-task-upwards"),
    ],
)
def test_per_job_max_tries_wins(task_tries: int | None, job_tries: int | None,
                                expected: int) -> None:
    made = task(max_tries=task_tries)(send)
    assert made.retry_policy(DEFAULTS, job_tries).max_tries == expected


# --- references by name ----------------------------------------------------------------------


def test_task_ref_has_a_name_and_no_function() -> None:
    ref = task_ref("reports.build", queue="reports")
    assert (ref.fn, ref.name, ref.queue, ref.is_async) == (None, "reports.build", "reports", False)
    assert ref.param_names == ()
    assert ref.result_type is Any


@pytest.mark.asyncio
async def test_task_ref_refuses_to_be_called() -> None:
    ref = task_ref("reports.build")
    with pytest.raises(TypeError, match=r"'reports\.build' is a reference by name"):
        await ref(object())  # type: ignore[arg-type]


def test_task_ref_has_no_converter() -> None:
    with pytest.raises(TypeError, match="reference by name"):
        _ = task_ref("x").converter


def test_task_ref_needs_a_name() -> None:
    with pytest.raises(ConfigurationError, match="needs a name"):
        task_ref("")


# --- as_task and call ------------------------------------------------------------------------


def test_as_task_returns_a_task_unchanged() -> None:
    made = task(send)
    assert as_task(made) is made


def test_as_task_wraps_a_function_once() -> None:
    def local(ctx: object) -> None: ...

    wrapped = as_task(local)
    assert wrapped.fn is local
    assert wrapped.name == "local"
    assert as_task(local) is wrapped


def test_as_task_with_a_name_is_a_reference() -> None:
    ref = as_task("send")
    assert (ref.fn, ref.name) == (None, "send")


def test_as_task_wraps_callables_that_cannot_be_weakly_referenced() -> None:
    class NoWeakref:
        __slots__ = ()

        def __call__(self, ctx: object) -> None: ...

    target = NoWeakref()
    first, second = as_task(target), as_task(target)
    assert first.fn is target
    assert second.fn is target


@pytest.mark.parametrize("target", [42, None, ["send"]], ids=["int", "none", "list"])
def test_as_task_refuses_other_things(target: object) -> None:
    with pytest.raises(TypeError, match="expected a task, a function or a task name"):
        as_task(target)  # type: ignore[arg-type]


def test_call_builds_a_call() -> None:
    made = task(send)
    built = call(made, 1, note="hi")
    assert built == Call(made, (1,), {"note": "hi"})


def test_call_accepts_a_function_and_a_name() -> None:
    assert call(add, 1, 2).task is as_task(add)
    by_name = call("send", 3)
    assert (by_name.task.name, by_name.task.fn, by_name.args) == ("send", None, (3,))


def test_param_names_skip_the_context() -> None:
    def fn(ctx: object, a: int, /, b: str, *rest: int, c: int = 0, **kw: int) -> None: ...

    assert task(fn).param_names == ("a", "b")
    assert task(send).param_names == ("user_id", "note")


def test_result_type_is_the_declared_return_type() -> None:
    assert task(send).result_type is str
    assert task(add).result_type is int


# --- calling a task --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_calling_an_async_task_runs_it_directly() -> None:
    ctx = object()
    seen: list[tuple[object, int]] = []

    @task
    async def record(c: object, value: int, *, twice: bool = False) -> int:
        seen.append((c, threading.get_ident()))
        return value * 2 if twice else value

    assert await record(ctx, 21, twice=True) == 42  # type: ignore[arg-type]
    assert seen == [(ctx, threading.get_ident())]


@pytest.mark.asyncio
async def test_calling_a_sync_task_runs_it_in_a_thread() -> None:
    ctx = object()
    seen: list[tuple[object, int]] = []

    @task
    def record(c: object, a: int, b: int) -> int:
        seen.append((c, threading.get_ident()))
        return a + b

    assert await record(ctx, 2, b=3) == 5  # type: ignore[arg-type]
    assert len(seen) == 1
    assert seen[0][0] is ctx
    assert seen[0][1] != threading.get_ident()


def test_repr_names_the_task() -> None:
    assert repr(task(send)) == "<Task send>"
