"""What happens after an attempt: a pure decision, tested without Redis or a clock.

The default policy retries any ``Exception`` up to 3 tries in all, with exponential backoff
and full jitter (1 s base, 5 min cap). Why retry by default: background jobs mostly call
other systems, whose failures are mostly transient, and delivery is at-least-once anyway
(a crash re-runs a job), so tasks must already be idempotent; retrying adds no new hazard.
A task that must not be retried declares ``retry_on=()`` or ``max_tries=1``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from ._durations import MAX_DURATION_S, to_seconds
from ._options import check_max_tries
from ._text import class_name, safe_str
from .exceptions import ConfigurationError, Retry


class Action(StrEnum):
    """The next state of a job after an attempt."""

    COMPLETE = "complete"
    RETRY = "retry"
    FAIL = "failed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which failures retry, how often, and how long to wait in between."""

    max_tries: int = 3
    """Attempts in all, the first included."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    """Exception types that retry (subclasses included)."""
    dont_retry_on: tuple[type[BaseException], ...] = ()
    """Exception types that never retry, even if ``retry_on`` matches."""
    retry_timeouts: bool = True
    """Whether an attempt that hit its timeout retries."""
    backoff_s: float = 1.0
    """Base delay: attempt n waits up to ``backoff_s * 2 ** (n - 1)``."""
    backoff_cap_s: float = 300.0
    """The longest wait between attempts."""

    def __post_init__(self) -> None:
        check_max_tries(self.max_tries)  # (NaN passed a bare "< 1" and retried for ever)
        # Stored as seconds: a timedelta passed the check, was kept as it was, and every
        # retry then failed inside backoff_delay (an internal error, the job stuck until
        # the claim timeout).
        object.__setattr__(self, "backoff_s", to_seconds(self.backoff_s, "backoff") or 0.0)
        object.__setattr__(self, "backoff_cap_s",
                           to_seconds(self.backoff_cap_s, "backoff_cap") or 0.0)
        # Checked here: a list (or a name) passed as it was, and every failure then raised
        # TypeError inside decide (an internal error; the job ran again after each claim
        # timeout until it was taken for poison).
        object.__setattr__(self, "retry_on", exception_types(self.retry_on, "retry_on"))
        object.__setattr__(self, "dont_retry_on",
                           exception_types(self.dont_retry_on, "dont_retry_on"))


def exception_types(given: object, what: str) -> tuple[type[BaseException], ...]:
    """``given`` as a tuple of exception types (one type, or any iterable of them);
    ``ConfigurationError`` naming ``what`` for anything else."""
    items = (given,) if isinstance(given, type) else given
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ConfigurationError(f"{what} must be exception types, got {safe_str(given, 80)}")
    found = tuple(items)
    for item in found:
        try:
            ok = isinstance(item, type) and issubclass(item, BaseException)
        except Exception:  # a metaclass whose checks raise
            ok = False
        if not ok:
            raise ConfigurationError(
                f"{what} must be exception types (classes such as ValueError), got "
                f"{safe_str(item, 80)} in {safe_str(given, 200)}")
    return found


@dataclass(frozen=True, slots=True)
class Decision:
    """The action, the delay before a retry, and the reason for a failure."""

    action: Action
    delay_s: float = 0.0
    reason: str = ""


_COMPLETE = Decision(Action.COMPLETE)


def backoff_delay(attempt: int, base_s: float, cap_s: float, rand: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    ``rand`` is a number in [0, 1) supplied by the caller (``random.random()``).
    """
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    return float(ceiling * rand)


def decide(
    kind: str,
    error: BaseException | None,
    attempt: int,
    policy: RetryPolicy,
    rand: float,
) -> Decision:
    """Decide after an attempt. ``kind`` is 'ok', 'error' or 'timeout'."""
    if kind == "ok":
        return _COMPLETE
    left = attempt < policy.max_tries
    # The error's classes are read from its type, never from its own __class__ (the task's
    # code, which may raise or lie): isinstance() reads that one when the type does not match.
    error_type = type(error)
    if issubclass(error_type, Retry):
        error = cast(Retry, error)
        if not left:
            return Decision(Action.FAIL, reason=f"retry requested on try {attempt} of "
                                                f"{policy.max_tries}")
        delay = error.delay_s
        if isinstance(delay, int | float) and not isinstance(delay, bool) and (
                0 <= delay <= MAX_DURATION_S):
            return Decision(Action.RETRY, float(delay))
        # None, or changed after Retry checked it (not a number, negative, inf, nan): the
        # policy's backoff (a settle could not take it; the job would run again for ever).
        return Decision(Action.RETRY, backoff_delay(attempt, policy.backoff_s,
                                                    policy.backoff_cap_s, rand))
    if kind == "timeout":
        retryable, what = policy.retry_timeouts, "timed out"
    else:
        retryable = _retryable(error, policy)
        what = f"raised {class_name(error_type, '__name__')}"
    if not retryable:
        return Decision(Action.FAIL, reason=f"{what} (not retryable)")
    if not left:
        return Decision(Action.FAIL, reason=f"{what} on try {attempt} of {policy.max_tries}")
    delay = backoff_delay(attempt, policy.backoff_s, policy.backoff_cap_s, rand)
    return Decision(Action.RETRY, delay)


def _retryable(error: BaseException | None, policy: RetryPolicy) -> bool:
    if error is None or issubclass(type(error), policy.dont_retry_on):
        return False
    return issubclass(type(error), policy.retry_on)
