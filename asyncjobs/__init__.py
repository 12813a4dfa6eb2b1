"""asyncjobs: an asyncio-native Redis Streams job runner.

Producers ``await create_pool(url)`` and ``await pool.enqueue(task, *args)``; workers
(``asyncjobs worker module:worker``) run the jobs, retry them, and never lose them.
"""

from typing import TYPE_CHECKING

from . import _exit_signals  # noqa: F401  (first: its atexit callback runs last)
from ._context import Context
from ._events import JobEvent
from ._middleware import Middleware, Observer
from ._model import ErrorInfo, JobInfo, JobState, Progress
from ._producer.handle import Job
from ._producer.opening import create_pool
from ._producer.pool import Pool
from ._retry import RetryPolicy
from ._scheduling.cron import CatchUp
from ._scheduling.declare import CronJob, cron
from ._task import Call, Task, call, task, task_ref
from ._version import __version__
from ._worker.config import WorkerConfig
from ._worker.worker import Worker
from .exceptions import (
    AsyncJobsError,
    ConfigurationError,
    CorruptJob,
    EnqueueError,
    JobAborted,
    JobError,
    JobExpired,
    JobFailed,
    JobNotFound,
    JobTimeout,
    NotDrained,
    NotReplicated,
    PoolClosed,
    PoolExhausted,
    QueueFull,
    RedisFull,
    RedisUnavailable,
    ResultTimeout,
    Retry,
    SerializationError,
)

if TYPE_CHECKING:
    from ._producer.listing import JobRow, Page
else:
    # The listings' types (``pool.admin.jobs()`` pages) load on first use, so a worker
    # process, which lists nothing, never imports the listing code.
    _LAZY = ("JobRow", "Page")

    def __getattr__(name: str) -> object:
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from ._producer import listing

        value = getattr(listing, name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})

__all__ = [
    "AsyncJobsError",
    "Call",
    "CatchUp",
    "ConfigurationError",
    "Context",
    "CorruptJob",
    "CronJob",
    "EnqueueError",
    "ErrorInfo",
    "Job",
    "JobAborted",
    "JobError",
    "JobEvent",
    "JobExpired",
    "JobFailed",
    "JobInfo",
    "JobNotFound",
    "JobRow",
    "JobTimeout",
    "Middleware",
    "Observer",
    "Page",
    "JobState",
    "NotDrained",
    "NotReplicated",
    "Pool",
    "PoolClosed",
    "PoolExhausted",
    "QueueFull",
    "RedisFull",
    "Progress",
    "RedisUnavailable",
    "ResultTimeout",
    "Retry",
    "RetryPolicy",
    "SerializationError",
    "Task",
    "Worker",
    "WorkerConfig",
    "__version__",
    "call",
    "create_pool",
    "cron",
    "task",
    "task_ref",
]
