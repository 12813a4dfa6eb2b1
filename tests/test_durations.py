"""Every duration option refuses inf, nan, negative and absurd values where it is given.

Regression: ``result_ttl=math.inf`` used to pass validation and raise ``OverflowError``
after the task had succeeded, so a successful job ran five times and ended a PoisonJob.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import asyncjobs
from asyncjobs import ConfigurationError, Context, Retry, RetryPolicy
from asyncjobs._durations import MAX_DURATION_S, to_seconds


@asyncjobs.task
async def noop(ctx: Context) -> None:
    return None


BAD = [
    pytest.param(math.inf, "finite", id="inf"),
    pytest.param(-math.inf, "finite", id="-inf"),
    pytest.param(math.nan, "finite", id="nan"),
    pytest.param(-1.0, ">= 0", id="negative"),
    pytest.param(timedelta(seconds=-1), ">= 0", id="negative-timedelta"),
    pytest.param(1_800_000_000.0, "at most 10 years", id="a-timestamp"),
]

ENTRY_POINTS: list[Any] = [
    pytest.param(lambda v: asyncjobs.task(timeout=v)(noop.fn), id="task-timeout"),
    pytest.param(lambda v: asyncjobs.task(result_ttl=v)(noop.fn), id="task-result_ttl"),
    pytest.param(lambda v: asyncjobs.task(backoff=v)(noop.fn), id="task-backoff"),
    pytest.param(lambda v: asyncjobs.task(backoff_cap=v)(noop.fn), id="task-backoff_cap"),
    pytest.param(lambda v: noop.options(delay=v), id="options-delay"),
    pytest.param(lambda v: noop.options(expires=v), id="options-expires"),
    pytest.param(lambda v: noop.options(timeout=v), id="options-timeout"),
    pytest.param(lambda v: noop.options(result_ttl=v), id="options-result_ttl"),
    pytest.param(lambda v: Retry(delay=v), id="Retry-delay"),
    pytest.param(lambda v: RetryPolicy(backoff_s=v), id="RetryPolicy-backoff"),
    pytest.param(lambda v: asyncjobs.Worker([noop], job_timeout=v), id="worker-job_timeout"),
    pytest.param(lambda v: asyncjobs.Worker([noop], result_ttl=v), id="worker-result_ttl"),
    pytest.param(lambda v: asyncjobs.Worker([noop], claim_timeout=v), id="worker-claim"),
    pytest.param(lambda v: asyncjobs.Worker([noop], shutdown_grace=v), id="worker-grace"),
    pytest.param(lambda v: asyncjobs.Worker([noop], lease_ttl=v), id="worker-lease"),
    pytest.param(lambda v: asyncjobs.cron(noop, every=v), id="cron-every"),
    pytest.param(lambda v: asyncjobs.cron(noop, every=60, grace=v), id="cron-grace"),
    pytest.param(lambda v: asyncjobs.cron(noop, every=60, timeout=v), id="cron-timeout"),
]


@pytest.mark.parametrize(("value", "message"), BAD)
@pytest.mark.parametrize("make", ENTRY_POINTS)
def test_every_duration_option_refuses_bad_values(
    make: Callable[[Any], object], value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        make(value)
    assert "Traceback" not in str(caught.value)


@pytest.mark.parametrize("field", ["shutdown_grace_s", "result_ttl_s", "job_timeout_s",
                                   "lease_ttl_s", "claim_timeout_s"])
@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0])
def test_worker_overrides_are_validated_too(field: str, value: float) -> None:
    """The CLI changes a worker with configure(), past the constructor's checks."""
    worker = asyncjobs.Worker([noop])
    with pytest.raises(ConfigurationError):
        worker.configure(**{field: value})


def test_a_duration_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="delay must be a number"):
        to_seconds("60", "delay")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_seconds(True, "delay")  # type: ignore[arg-type]


def test_the_boundaries_are_accepted() -> None:
    assert to_seconds(0, "x") == 0.0
    assert to_seconds(MAX_DURATION_S, "x") == MAX_DURATION_S
    assert to_seconds(timedelta(days=3650), "x") == 3650 * 86400.0
    assert noop.options(result_ttl=0).job_options.result_ttl_s == 0.0
