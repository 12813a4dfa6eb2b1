"""What a job may be given at enqueue, validated where it enters: the per-job options a
``Task.options()`` copy carries, and the checks of the values that would otherwise be
written to Redis and found unusable by every worker (a float ``max_tries``, headers that
are not text, a job id that is not valid text). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ._routing import Priority
from .exceptions import ConfigurationError


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Per-job options given at enqueue; None means "the task's or the worker's default"."""

    job_id: str | None = None
    queue: str | None = None
    delay_s: float | None = None
    at: datetime | None = None
    expires: datetime | float | None = None
    timeout_s: float | None = None
    max_tries: int | None = None
    result_ttl_s: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    priority: Priority | None = None


MAX_TRIES_MOST = 1_000_000
"""The most ``max_tries`` a task or a job may have."""


def _whole(value: object, least: int, most: int | None) -> bool:
    """An int (not a bool) from ``least`` to ``most`` (None: no bound). A float slips past
    a bare ``< least`` test as NaN, which compares false with every bound."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= least
            and (most is None or value <= most))


def check_whole(name: str, value: object, least: int = 1, most: int | None = None) -> int:
    """A setting that counts something: ``value``, a whole number from ``least`` (to
    ``most``); ``ConfigurationError`` naming ``name`` otherwise."""
    if not _whole(value, least, most):
        bounds = f"{least} or more" if most is None else f"from {least} to {most:,}"
        raise ConfigurationError(f"{name} must be a whole number, {bounds}, not "
                                 f"{value!r:.80}")
    assert isinstance(value, int)
    return value


def check_count(name: str, value: object, most: int) -> int:
    """A call's argument that counts something (a page size, entries to read): a whole
    number from 1 to ``most``; ``ValueError`` naming ``name`` otherwise (a float reached
    Redis as a COUNT it refused)."""
    if not _whole(value, 1, most):
        raise ValueError(f"{name} must be a whole number between 1 and {most:,}, not "
                         f"{value!r:.80}")
    assert isinstance(value, int)
    return value


def check_max_tries(value: object) -> int:
    """A ``max_tries``: an int from 1 to ``MAX_TRIES_MOST`` (not a bool); ``TypeError`` or
    ``ValueError`` naming it otherwise (a float would be written to Redis and found
    undecodable by every worker)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_tries must be an int, not {type(value).__name__} {value!r:.80}")
    if value < 1:
        raise ValueError(f"max_tries must be >= 1, not {value}")
    if value > MAX_TRIES_MOST:
        shown = f"{value:,}" if value.bit_length() < 64 else "a larger int"  # 10**400 has no float
        raise ValueError(f"max_tries must be at most {MAX_TRIES_MOST:,}, not {shown}")
    return value


def check_headers(headers: object) -> None:
    """Per-job headers: a mapping of str to str; ``TypeError`` otherwise (a worker could
    never decode the job)."""
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, not {type(headers).__name__}")
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"headers must map str to str, not {type(key).__name__} "
                            f"{key!r:.40} to {type(value).__name__} {value!r:.40}")


MAX_JOB_ID = 1024
"""The longest job id, in characters: what is longer, read from Redis, is no job's."""


def check_job_id(job_id: str) -> str:
    """A job id is non-empty text of at most 1,024 characters that encodes as UTF-8;
    returned as a plain ``str``."""
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID:
        raise ValueError(f"job_id must be a non-empty str of at most 1024 characters, "
                         f"got {job_id!r:.80}")
    try:
        job_id.encode()
    except UnicodeEncodeError:
        raise ValueError(f"job_id {job_id!r:.80} is not valid text (lone surrogates)") from None
    return str.__str__(job_id)  # a str subclass's text: its __format__ named another key
