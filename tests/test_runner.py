"""One attempt under a hard timeout: what the task did becomes an outcome; cancellation does not."""

from __future__ import annotations

import asyncio
import traceback

import pytest

from asyncjobs._worker.runner import run_attempt
from asyncjobs.exceptions import JobTimeout

pytestmark = pytest.mark.asyncio

FOREVER = 3600.0


async def returns_value() -> str:
    await asyncio.sleep(0)
    return "done"


@pytest.mark.parametrize("timeout", [None, 0, 5.0], ids=["none", "zero", "five-seconds"])
async def test_a_value_is_ok(timeout: float | None) -> None:
    outcome = await run_attempt(returns_value, timeout)
    assert outcome.kind == "ok"
    assert outcome.value == "done"
    assert outcome.error is None
    assert outcome.duration_s >= 0


@pytest.mark.parametrize(
    "error",
    [ValueError("bad"), KeyError("k"), RuntimeError("x"), SystemExit(3)],
    ids=["value-error", "key-error", "runtime-error", "system-exit"],
)
@pytest.mark.parametrize("timeout", [None, 5.0], ids=["no-timeout", "timeout"])
async def test_an_exception_is_an_error(error: BaseException, timeout: float | None) -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise error

    outcome = await run_attempt(fails, timeout)
    assert outcome.kind == "error"
    assert outcome.error is error
    assert outcome.value is None


async def test_our_timeout_cancels_the_task_and_reports_a_timeout() -> None:
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    outcome = await run_attempt(hangs, 0.05)
    assert outcome.kind == "timeout"
    assert isinstance(outcome.error, JobTimeout)
    assert str(outcome.error) == "the attempt exceeded its 0.05 s timeout and was cancelled"
    # The cause is the cancellation that interrupted the task: its traceback shows where
    # the task was, which is what the job's recorded error should point at.
    assert isinstance(outcome.error.__cause__, asyncio.CancelledError)
    text = "".join(traceback.format_exception(outcome.error))
    assert "in hangs" in text and "await asyncio.sleep(FOREVER)" in text
    assert cancelled.is_set()
    assert 0.04 <= outcome.duration_s < 5


async def test_timeout_message_uses_compact_numbers() -> None:
    async def hangs() -> None:
        await asyncio.sleep(FOREVER)

    outcome = await run_attempt(hangs, 0.01)
    assert "exceeded its 0.01 s timeout" in str(outcome.error)


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["no-timeout", "long-timeout"])
async def test_the_tasks_own_timeout_error_is_an_error(timeout: float | None) -> None:
    own = TimeoutError("upstream took too long")

    async def raises_timeout() -> None:
        await asyncio.sleep(0)
        raise own

    outcome = await run_attempt(raises_timeout, timeout)
    assert outcome.kind == "error"
    assert outcome.error is own


async def test_a_timeout_inside_the_task_is_an_error() -> None:
    async def inner_deadline() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(FOREVER)

    outcome = await run_attempt(inner_deadline, 5.0)
    assert outcome.kind == "error"
    assert type(outcome.error) is TimeoutError


@pytest.mark.parametrize("timeout", [None, 0], ids=["none", "zero"])
async def test_no_timeout_lets_a_slow_task_finish(timeout: float | None) -> None:
    async def slow() -> int:
        await asyncio.sleep(0.05)
        return 7

    outcome = await run_attempt(slow, timeout)
    assert outcome.kind == "ok"
    assert outcome.value == 7
    assert outcome.duration_s >= 0.04


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["no-timeout", "timeout"])
async def test_external_cancellation_propagates(timeout: float | None) -> None:
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.sleep(FOREVER)

    attempt = asyncio.create_task(run_attempt(hangs, timeout))
    await started.wait()
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert attempt.cancelled()
