"""The public API: changed only on purpose, every name documented."""

from __future__ import annotations

import inspect

import asyncjobs

PUBLIC = [
    "AsyncJobsError", "Call", "CatchUp", "ConfigurationError", "Context", "CorruptJob",
    "CronJob", "EnqueueError", "ErrorInfo", "Job", "JobAborted", "JobError", "JobEvent",
    "JobExpired", "JobFailed", "JobInfo", "JobNotFound", "JobRow", "JobState", "JobTimeout",
    "Middleware", "NotDrained", "NotReplicated", "Observer", "Page", "Pool", "PoolClosed",
    "PoolExhausted", "Progress", "QueueFull", "RedisFull", "RedisUnavailable", "ResultTimeout",
    "Retry", "RetryPolicy", "SerializationError", "Task", "Worker", "WorkerConfig",
    "__version__",
    "call", "create_pool", "cron", "task", "task_ref",
]


def test_the_facade_is_exactly_the_public_api() -> None:
    assert sorted(asyncjobs.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(asyncjobs, name), name


def test_every_public_name_is_documented() -> None:
    for name in PUBLIC:
        if name == "__version__":
            continue
        obj = getattr(asyncjobs, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_errors_share_one_root() -> None:
    errors = [getattr(asyncjobs, n) for n in PUBLIC
              if isinstance(getattr(asyncjobs, n), type)
              and issubclass(getattr(asyncjobs, n), Exception) and n != "Retry"]
    assert errors and all(issubclass(e, asyncjobs.AsyncJobsError) for e in errors)
