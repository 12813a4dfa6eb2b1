"""The retry decision: backoff with full jitter, and what happens after each kind of outcome."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from asyncjobs._retry import Action, Decision, RetryPolicy, backoff_delay, decide
from asyncjobs.exceptions import Retry

# Ceilings written out by hand: min(cap, base * 2 ** (attempt - 1)).
CEILINGS_BASE_1_CAP_300 = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
CEILINGS_BASE_0_5_CAP_10 = [0.5, 1, 2, 4, 8, 10, 10, 10, 10, 10]
CEILINGS_BASE_3_CAP_1000 = [3, 6, 12, 24, 48, 96, 192, 384, 768, 1000]


def backoff_table() -> list[object]:
    rows = []
    for base, cap, ceilings in [
        (1.0, 300.0, CEILINGS_BASE_1_CAP_300),
        (0.5, 10.0, CEILINGS_BASE_0_5_CAP_10),
        (3.0, 1000.0, CEILINGS_BASE_3_CAP_1000),
    ]:
        for attempt, ceiling in enumerate(ceilings, start=1):
            for rand in (0.0, 0.5, 0.999):
                rows.append(
                    pytest.param(
                        attempt, base, cap, rand, ceiling * rand,
                        id=f"base{base:g}-cap{cap:g}-attempt{attempt}-rand{rand:g}",
                    )
                )
    return rows


@pytest.mark.parametrize(("attempt", "base", "cap", "rand", "expected"), backoff_table())
def test_backoff_delay(attempt: int, base: float, cap: float, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, base, cap, rand) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", [64, 1_000, 10**9, 2**63], ids=str)
def test_huge_attempt_numbers_stay_at_the_cap(attempt: int) -> None:
    delay = backoff_delay(attempt, 1.0, 300.0, 0.5)
    assert delay == pytest.approx(150.0)
    assert math.isfinite(delay)


def test_zero_base_means_no_wait() -> None:
    assert backoff_delay(5, 0.0, 300.0, 0.999) == 0.0


POLICY = RetryPolicy(max_tries=3, backoff_s=1.0, backoff_cap_s=300.0)


class Transient(Exception):
    pass


class Permanent(Transient):
    pass


@pytest.mark.parametrize(
    ("kind", "error", "attempt", "policy", "expected"),
    [
        pytest.param("ok", None, 1, POLICY, Decision(Action.COMPLETE), id="ok-complete"),
        pytest.param("ok", None, 3, POLICY, Decision(Action.COMPLETE), id="ok-on-last-try"),
        pytest.param("error", ValueError("x"), 1, POLICY, Decision(Action.RETRY, 0.5),
                     id="error-first-try-retries"),
        pytest.param("error", ValueError("x"), 2, POLICY, Decision(Action.RETRY, 1.0),
                     id="error-second-try-retries-longer"),
        pytest.param("error", ValueError("x"), 3, POLICY,
                     Decision(Action.FAIL, reason="raised ValueError on try 3 of 3"),
                     id="error-last-try-fails"),
        pytest.param("error", ValueError("x"), 1, RetryPolicy(max_tries=1),
                     Decision(Action.FAIL, reason="raised ValueError on try 1 of 1"),
                     id="error-single-try-fails"),
        pytest.param("error", ValueError("x"), 1, RetryPolicy(retry_on=(KeyError,)),
                     Decision(Action.FAIL, reason="raised ValueError (not retryable)"),
                     id="error-not-in-retry-on"),
        pytest.param("error", ValueError("x"), 1, RetryPolicy(retry_on=()),
                     Decision(Action.FAIL, reason="raised ValueError (not retryable)"),
                     id="error-empty-retry-on"),
        pytest.param("error", Transient("x"), 1, RetryPolicy(retry_on=(Transient,)),
                     Decision(Action.RETRY, 0.5), id="error-in-retry-on"),
        pytest.param("error", Permanent("x"), 1,
                     RetryPolicy(retry_on=(Transient,), dont_retry_on=(Permanent,)),
                     Decision(Action.FAIL, reason="raised Permanent (not retryable)"),
                     id="error-in-dont-retry-on-wins"),
        pytest.param("error", SystemExit(1), 1, POLICY,
                     Decision(Action.FAIL, reason="raised SystemExit (not retryable)"),
                     id="system-exit-not-an-exception"),
        pytest.param("timeout", TimeoutError(), 1, POLICY, Decision(Action.RETRY, 0.5),
                     id="timeout-retries"),
        pytest.param("timeout", TimeoutError(), 3, POLICY,
                     Decision(Action.FAIL, reason="timed out on try 3 of 3"),
                     id="timeout-last-try-fails"),
        pytest.param("timeout", TimeoutError(), 1, RetryPolicy(retry_timeouts=False),
                     Decision(Action.FAIL, reason="timed out (not retryable)"),
                     id="timeout-not-retried-when-disabled"),
        pytest.param("error", Retry(delay=7), 1, POLICY, Decision(Action.RETRY, 7.0),
                     id="retry-with-delay"),
        pytest.param("error", Retry(delay=0), 2, POLICY, Decision(Action.RETRY, 0.0),
                     id="retry-with-zero-delay"),
        pytest.param("error", Retry(), 2, POLICY, Decision(Action.RETRY, 1.0),
                     id="retry-uses-backoff"),
        pytest.param("error", Retry(delay=5), 3, POLICY,
                     Decision(Action.FAIL, reason="retry requested on try 3 of 3"),
                     id="retry-on-last-try-fails"),
        pytest.param("error", Retry(), 1, RetryPolicy(retry_on=()), Decision(Action.RETRY, 0.5),
                     id="retry-ignores-retry-on"),
    ],
)
def test_decide(
    kind: str, error: BaseException | None, attempt: int, policy: RetryPolicy, expected: Decision
) -> None:
    assert decide(kind, error, attempt, policy, rand=0.5) == expected


def test_decide_retry_uses_the_policys_backoff() -> None:
    policy = RetryPolicy(max_tries=10, backoff_s=2.0, backoff_cap_s=20.0)
    delays = [decide("error", ValueError(), n, policy, 0.5).delay_s for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_retry_accepts_a_timedelta() -> None:
    assert Retry(delay=timedelta(minutes=2)).delay_s == 120.0
    assert str(Retry(reason="rate limited")) == "rate limited"
    assert str(Retry()) == "retry requested"


def test_retry_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError, match="delay"):
        Retry(delay=-1)


def test_default_policy() -> None:
    policy = RetryPolicy()
    assert (policy.max_tries, policy.retry_on, policy.dont_retry_on) == (3, (Exception,), ())
    assert (policy.retry_timeouts, policy.backoff_s, policy.backoff_cap_s) == (True, 1.0, 300.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"max_tries": 0}, "max_tries must be >= 1", id="zero-tries"),
        pytest.param({"max_tries": -3}, "max_tries must be >= 1", id="negative-tries"),
        pytest.param({"backoff_s": -0.1}, "backoff must be >= 0", id="negative-base"),
        pytest.param({"backoff_cap_s": -1.0}, "backoff_cap must be >= 0", id="negative-cap"),
        pytest.param({"backoff_s": math.inf}, "backoff must be a finite", id="inf-base"),
        pytest.param({"backoff_cap_s": math.nan}, "backoff_cap must be a finite", id="nan-cap"),
        pytest.param({"backoff_s": 1e12}, "backoff must be at most 10 years", id="huge-base"),
    ],
)
def test_policy_validation(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_policy_accepts_the_boundaries() -> None:
    policy = RetryPolicy(max_tries=1, backoff_s=0.0, backoff_cap_s=0.0)
    assert decide("error", ValueError(), 1, policy, 0.5).action is Action.FAIL
