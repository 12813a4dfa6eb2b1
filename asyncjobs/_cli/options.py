"""Options several commands share, declared once: the Redis URL, the key prefix, queues,
``--json``, ``--allow-eviction`` and the log options.

A choice option takes its choices in any case (``--log-format JSON``, ``--state RUNNING``):
each is declared ``case_sensitive=False``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from .._redis.connection import URL_ENV
from . import loader
from .loader import prefix_option, queue_option, queues_option
from .logs import JobLogs, LogFormat, LogLevel

RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", envvar=URL_ENV, show_envvar=True,
                 callback=loader.callback(loader.redis_url),
                 help=escape("redis://[user:password@]host:port/db, rediss:// for TLS, "
                             "redis+sentinel://host:26379,host2:26379/service/db for "
                             "Sentinel.")),
]
Prefix = Annotated[str, typer.Option("--prefix", envvar="ASYNCJOBS_PREFIX",
                                     callback=prefix_option, help="Key prefix of the app.")]
Queue = Annotated[str | None, typer.Option("--queue", "-q", callback=queue_option,
                                           help="Queue (default: 'default').")]
Queues = Annotated[list[str] | None, typer.Option(
    "--queue", "-q", callback=queues_option, help="Queue (repeatable; default: all known).")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AllowEviction = Annotated[bool, typer.Option(
    "--allow-eviction", help="Accept a Redis whose maxmemory-policy may evict (delete) jobs.")]
LogLevelOption = Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False,
                                                  help="How much to log.")]
LogFormatOption = Annotated[LogFormat, typer.Option(
    "--log-format", case_sensitive=False, help="Lines of text, or one JSON object per line.")]
JobLogsOption = Annotated[JobLogs, typer.Option(
    "--job-logs", case_sensitive=False,
    help="Per-job lines: both (start and end), end (one per attempt), failures (only "
         "attempts that did not complete).")]
