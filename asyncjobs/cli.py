"""The ``asyncjobs`` command. Each command is thin: the work lives in the library.

A command either does its work or prints one line, ``asyncjobs: error: ...``, and exits 2
for a usage or configuration error (a bad option, URL, name, import path or argument) or 1
for a failure (Redis unreachable, no such job). Option values are checked where they are
parsed (``_loader``); only asyncjobs' own errors are caught around the work itself, so a
bug still shows its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import importlib
import os
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import typer.main
from redis.exceptions import ResponseError
from rich.console import Console
from rich.markup import escape

from ._cli import loader as _loader
from ._cli import ops, supervisor, worker_run
from ._cli.loader import callback as checked
from ._cli.loader import prefix_option, queues_option, seconds_option
from ._cli.logs import JobLogs, LogFormat, LogLevel, configure, held
from ._cli.options import (
    AllowEviction,
    AsJson,
    JobLogsOption,
    LogFormatOption,
    LogLevelOption,
    Prefix,
    Queue,
    Queues,
    RedisUrl,
)
from ._cli.render import (
    Command,
    Group,
    concurrency_table,
    dead_table,
    jobs_table,
    print_job,
    progress_bar,
    queues_table,
    requeue_lines,
    safe,
    to_json,
    totals_table,
    workers_table,
)
from ._options import check_job_id
from ._version import __version__
from ._worker.loop import loop_factory
from .exceptions import AsyncJobsError, ConfigurationError, SerializationError

T = TypeVar("T")

app = typer.Typer(
    name="asyncjobs",
    help="asyncjobs: an asyncio Redis Streams job runner.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=Group,
)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line, ``asyncjobs: error: <message>``, to stderr and exit with ``code``."""
    typer.secho(f"asyncjobs: error: {safe(message)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"asyncjobs {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """asyncjobs: background jobs for asyncio services, on Redis Streams."""


@app.command(cls=Command)
def worker(
    target: Annotated[str, typer.Argument(help="The Worker to run, as package.module:attribute.")],
    redis_url: RedisUrl = None,
    prefix: Annotated[str | None, typer.Option(
        "--prefix", envvar="ASYNCJOBS_PREFIX", callback=prefix_option,
        help="Key prefix (overrides the Worker's).")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1,
                                                    help="Jobs run at once.")] = None,
    queue: Annotated[list[str] | None, typer.Option(
        "--queue", "-q", callback=queues_option, help="Queue to serve (repeatable).")] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queues are empty.")] = False,
    grace: Annotated[float | None, typer.Option("--grace", callback=seconds_option("grace"),
                                                help="Shutdown grace period, seconds.")] = None,
    log_level: LogLevelOption = LogLevel.INFO,
    log_format: LogFormatOption = LogFormat.TEXT,
    job_logs: JobLogsOption = JobLogs.BOTH,
    uvloop: Annotated[bool, typer.Option("--uvloop/--no-uvloop", help="Use uvloop.")] = True,
    allow_eviction: AllowEviction = False,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, envvar="ASYNCJOBS_METRICS_PORT",
        help=escape("Serve Prometheus metrics on this port (needs the [metrics] extra).")),
    ] = None,
    processes: Annotated[str, typer.Option(
        "--processes", callback=_processes_option,
        help="Worker processes under one supervisor: a number, or auto (one per CPU).")] = "1",
) -> None:
    """Run a worker until SIGTERM/SIGINT (or until drained, with --burst)."""
    options = worker_run.Options(
        target=target, argv=list(sys.argv), redis_url=redis_url, uvloop=uvloop,
        log_level=log_level.value, log_format=log_format.value, job_logs=job_logs.value,
        metrics_port=metrics_port, processes=supervisor.processes(processes),
        changes=worker_run.Changes(concurrency=concurrency, shutdown_grace_s=grace,
                                   prefix=prefix, queues=list(queue or ()) or None,
                                   burst=burst or None, allow_eviction=allow_eviction or None))
    if _lean_exec and hasattr(os, "execv"):
        worker_run.exec_worker(options)  # the worker process keeps no parser in memory
    raise typer.Exit(worker_run.run(options, exiting=_lean_exec))


def _processes_option(value: str) -> str:
    """``--processes`` checked where it is parsed (``supervisor.processes``' rule)."""
    try:
        supervisor.processes(value)
    except ValueError:
        raise typer.BadParameter(f"{_loader.shown(value)}: a number of processes (1 to "
                                 f"{supervisor.MAX_PROCESSES}), or auto") from None
    return value


_lean_exec = False
"""Set by ``main()``: ``asyncjobs worker`` run as a program execs into a lean process (see
``_cli.worker_run``); called in-process (typer's test runner) it runs where it is."""


@app.command(cls=Command)
def demo(
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", callback=checked(_loader.redis_url),
        help="Use this Redis instead of a throwaway one.")] = None,
) -> None:
    """Run a worker and a producer on a throwaway Redis and show a few jobs end to end."""
    from ._cli.demo import run_demo

    configure("ERROR")  # the table shows every outcome
    try:
        with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
            ok = runner.run(run_demo(redis_url))
    except AsyncJobsError as exc:
        fail(str(exc))
    raise typer.Exit(0 if ok else 1)


_POOL_LOGGER = "asyncjobs.pool"
"""``create_pool``'s logger: its warnings (Redis hides its settings) are held until an
operation succeeds, and dropped when it fails (see ``_run``)."""


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one operation; asyncjobs' errors become one line (exit 2 for usage errors), the
    only line of a failed operation: what the pool logged is shown when it succeeds."""
    try:
        with held(_POOL_LOGGER):
            return asyncio.run(coro)
    except (ConfigurationError, SerializationError) as exc:
        fail(str(exc), 2)
    except AsyncJobsError as exc:
        fail(str(exc))
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        fail("a key of asyncjobs in Redis holds another type of value than asyncjobs writes "
             f"(written by hand, or by another program on the same prefix?): {exc}")


def _out(as_json: bool, data: Any, *tables: Any) -> None:
    if as_json:
        typer.echo(to_json(data))
    else:
        console = Console()
        for table in tables:
            console.print(table)


@app.command(cls=Command)
def info(redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queues = None,
         as_json: AsJson = False) -> None:
    """Queues (waiting, in flight, delayed, dead, oldest age) and live workers."""
    found = _run(ops.info(ops.Target(redis_url, prefix), queue or []))
    stats, workers, limits = found.stats, found.workers, found.limits
    _out(as_json, {"queues": stats, "workers": workers, "concurrency": limits,
                   "damaged": found.damaged},
         *([queues_table(stats), totals_table(stats)] if stats else []),
         *([concurrency_table(limits)] if limits else []),
         workers_table(workers) if workers else "no live workers")
    for damaged in found.damaged:  # the others are shown: one line each, then exit 1
        typer.secho(safe(f"asyncjobs: error: queue {damaged.queue}: cannot be read: "
                         f"{damaged.problem}"), err=True, fg=typer.colors.RED)
    if found.damaged:
        raise typer.Exit(1)


@app.command(cls=Command)
def job(job_id: str, redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs",
        queue: Queue = None, as_json: AsJson = False) -> None:
    """The whole record of one job: state, arguments, attempts, times, errors, result.

    --json prints strict JSON: a float NaN or infinity in the arguments, result or progress
    data, which JSON has no number for, is the string "NaN", "Infinity" or "-Infinity"."""
    record = _run(ops.job(ops.Target(redis_url, prefix), job_id, queue))
    if as_json:
        typer.echo(to_json(record))
    else:
        print_job(Console(), record)


class State(enum.StrEnum):
    """The states ``asyncjobs jobs`` lists."""

    running = "running"
    queued = "queued"
    scheduled = "scheduled"
    failed = "failed"
    dead = "dead"
    complete = "complete"


class Order(enum.StrEnum):
    """Which jobs come first."""

    oldest = "oldest"
    newest = "newest"


@app.command(cls=Command)
def jobs(
    state: Annotated[State, typer.Option("--state", "-s", case_sensitive=False,
                                         help="Which jobs to list.")],
    redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
    task: Annotated[str, typer.Option("--task", help="Only this task's jobs.")] = "",
    order: Annotated[Order | None, typer.Option(
        "--order", case_sensitive=False,
        help="oldest or newest first [default: oldest for running, queued, scheduled]")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    cursor: Annotated[str | None, typer.Option(
        "--cursor", help="Go on from where the previous page ended.")] = None,
    as_json: AsJson = False,
) -> None:
    """A page of a queue's jobs in one state: id, task, attempts, times, worker, progress.

    complete and failed (failed, expired or aborted) list the latest ended jobs while their
    records last; dead lists the dead letters. --json prints strict JSON: a float NaN or
    infinity in progress data is the string "NaN", "Infinity" or "-Infinity"."""
    page = _run(_listing(ops.jobs(ops.Target(redis_url, prefix), state.value, queue,
                                  order=order.value if order else None, task=task,
                                  cursor=cursor, limit=limit)))
    if as_json:
        typer.echo(to_json({"jobs": page.items, "cursor": page.cursor}))
        return
    where = f"queue {queue or 'default'!r}"
    if page.items:
        _out(False, None, jobs_table(f"{state.value} jobs on {where}", page.items,
                                     worker=state is State.running))
    else:
        typer.echo(f"no {state.value} jobs on {safe(where)}")
    if page.cursor:
        typer.echo(f"more: add --cursor {page.cursor}")


async def _listing(listing: Coroutine[Any, Any, T]) -> T:
    """A listing's bad input (an altered cursor) is a usage error: one line, exit 2."""
    try:
        return await listing
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


@app.command(cls=Command)
def enqueue(
    task: Annotated[str, typer.Argument(help="The task's name.")],
    arg: Annotated[list[str] | None, typer.Option(
        "--arg", help="A positional argument, as JSON (repeatable).")] = None,
    kwarg: Annotated[list[str] | None, typer.Option(
        "--kwarg", help="name=JSON (repeatable).")] = None,
    job_id: Annotated[str | None, typer.Option("--job-id")] = None,
    delay: Annotated[float | None, typer.Option("--delay", callback=seconds_option("delay"),
                                                help="Seconds.")] = None,
    redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
    as_json: AsJson = False, allow_eviction: AllowEviction = False,
) -> None:
    """Enqueue a job by task name, with JSON arguments."""
    try:
        args = [_loader.json_value(a, "--arg") for a in arg or []]
        kwargs = _loader.keywords(kwarg or [])
    except ConfigurationError as exc:
        fail(str(exc), 2)
    if job_id is not None:
        try:
            check_job_id(job_id)
        except ValueError:
            fail(f"--job-id takes 1 to 1024 characters of text, not {job_id!r:.60}", 2)
    options = {k: v for k, v in {"job_id": job_id, "delay": delay, "queue": queue}.items()
               if v is not None}
    jid, where, state = _run(ops.enqueue(ops.Target(redis_url, prefix, allow_eviction), task,
                                         args, kwargs,
                                         options))
    if as_json:
        typer.echo(to_json({"job_id": jid, "queue": where, "state": state}))
    else:
        typer.echo(safe(f"{jid} {state} on queue {where}"))


@app.command(cls=Command)
def check(
    redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queues = None,
    this_host: Annotated[bool, typer.Option("--this-host", help="Require a live worker on "
                                            "this host (a liveness probe).")] = False,
    max_waiting: Annotated[int | None, typer.Option("--max-waiting", min=0)] = None,
    max_age: Annotated[float | None, typer.Option(
        "--max-age", callback=seconds_option("max-age"),
        help="Oldest waiting job, seconds.")] = None,
    allow_eviction: AllowEviction = False,
) -> None:
    """Exit 0 when healthy, 1 when not (health and liveness probes).

    With --this-host an unreachable Redis is not the worker's fault: exit 0 with a warning.
    """
    result = _run(ops.check(ops.Target(redis_url, prefix, allow_eviction), queue or [],
                            this_host=this_host,
                            max_waiting=max_waiting, max_age_s=max_age))
    for warning in result.warnings:
        typer.echo(f"warning: {safe(warning)}", err=True)
    for problem in result.problems:
        typer.echo(f"unhealthy: {safe(problem)}", err=True)
    if result.healthy:
        typer.echo("healthy")
    raise typer.Exit(0 if result.healthy else 1)


dlq = typer.Typer(help="Dead letters: list, show, requeue, purge.", no_args_is_help=True,
                  cls=Group)
app.add_typer(dlq, name="dlq")


@dlq.command("list", cls=Command)
def dlq_list(redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
             limit: Annotated[int, typer.Option("--limit", min=1, max=1_000_000)] = 50,
             as_json: AsJson = False) -> None:
    """The newest dead letters of a queue."""
    letters = _run(ops.dead_letters(ops.Target(redis_url, prefix), queue, limit))
    if letters or as_json:
        _out(as_json, letters, dead_table(letters))
    else:
        typer.echo(f"no dead letters on queue {queue or 'default'!r}")


@dlq.command("show", cls=Command)
def dlq_show(job_id: str, redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs",
             queue: Queue = None, as_json: AsJson = False) -> None:
    """A dead-lettered job's record, with every error and traceback."""
    job(job_id, redis_url, prefix, queue, as_json)


@dlq.command("requeue", cls=Command)
def dlq_requeue(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids to requeue.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Requeue every dead letter.")] = False,
    redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
    as_json: AsJson = False,
) -> None:
    """Run dead-lettered jobs again: same id, error history kept, attempts reset."""
    target = ops.Target(redis_url, prefix)
    if every and job_ids:
        fail("give job ids or --all, not both", 2)
    if every:
        _requeue_all(target, queue, as_json)
    if not job_ids:
        fail("give job ids, or --all", 2)
    outcome = _run(ops.requeue(target, queue, job_ids))
    if as_json:
        typer.echo(to_json(outcome))
    else:
        for jid, state in outcome.items():
            done = "requeued" if state == "queued" else f"not requeued: {state}"
            typer.echo(safe(f"{jid}: {done}"))
    if any(state != "queued" for state in outcome.values()):
        raise typer.Exit(1)


def _requeue_all(target: ops.Target, queue: str | None, as_json: bool) -> NoReturn:
    with progress_bar("requeueing", Console().is_terminal and not as_json) as on_progress:
        report = _run(ops.requeue_all(target, queue, on_progress))
    if as_json:
        typer.echo(to_json(report))
    else:
        for line in requeue_lines(report):
            typer.echo(line)
    raise typer.Exit(1 if report.left else 0)


@dlq.command("purge", cls=Command)
def dlq_purge(redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
              yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    """Delete every dead letter of a queue and the records of those jobs."""
    if not yes:
        typer.confirm("Delete every dead letter of this queue?", abort=True)
    with progress_bar("purging", Console().is_terminal) as on_progress:
        count = _run(ops.purge(ops.Target(redis_url, prefix), queue, on_progress))
    typer.echo(f"purged {count} dead letter(s)")


# Commands of optional parts register here, one line each, their code in their own module
# under asyncjobs/_cli/ (imported when the command runs, so the CLI never imports them).
# -- dashboard --
from ._cli.dashboard_command import dashboard  # noqa: E402

app.command(cls=Command)(dashboard)
# -- outbox --
importlib.import_module("asyncjobs._cli.outbox_command").register(app)
# -- backpressure --
importlib.import_module("asyncjobs._cli.queue_limit").register(app)


def _click_errors() -> Any:
    """The exceptions module of the click that typer runs on (its own copy since 0.2x)."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # pragma: no cover - an older typer, on click itself
        return importlib.import_module("click.exceptions")


def main() -> None:
    """Entry point of the ``asyncjobs`` script: usage errors are one line too."""
    global _lean_exec
    _lean_exec = True
    errors = _click_errors()
    try:
        code = typer.main.get_command(app).main(prog_name="asyncjobs", standalone_mode=False)
    except errors.NoArgsIsHelpError as exc:
        if exc.format_message().strip():  # an older typer leaves the help to the error
            exc.show()
        sys.exit(exc.exit_code)
    except errors.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        message = " ".join(exc.format_message().split())  # click's choice lists: one line
        typer.secho(f"asyncjobs: error: {safe(message)}{hint}", err=True,
                    fg=typer.colors.RED)
        sys.exit(2)
    except typer.Abort:
        typer.echo("asyncjobs: aborted", err=True)
        sys.exit(1)
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRORS:
            raise
        # The output cannot be written (a full disk, > /dev/full): say so on stderr, and
        # leave Python's own flush at exit nothing to fail on.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        typer.secho(f"asyncjobs: error: cannot write the output: {exc.strerror}", err=True,
                    fg=typer.colors.RED)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


_OUTPUT_ERRORS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO})
"""Errors writing the output that are the output's doing, not a bug: one line, exit 1."""


if __name__ == "__main__":  # pragma: no cover
    main()
