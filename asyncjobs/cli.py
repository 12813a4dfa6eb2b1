"""The ``asyncjobs`` command. Each command is thin: the work lives in the library."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from . import _ops as ops
from ._connection import URL_ENV
from ._loader import load
from ._logging import configure
from ._render import dead_table, print_job, queues_table, to_json, workers_table
from ._version import __version__
from ._worker import Worker, _loop_factory
from .exceptions import AsyncJobsError, ConfigurationError

T = TypeVar("T")

app = typer.Typer(
    name="asyncjobs",
    help="asyncjobs: an asyncio Redis Streams job runner.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", envvar=URL_ENV, show_envvar=True,
                 help="redis://[user:password@]host:port/db, rediss:// for TLS."),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line to stderr and exit."""
    typer.secho(f"asyncjobs: error: {message}", err=True, fg=typer.colors.RED)
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


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="The Worker to run, as package.module:attribute.")],
    redis_url: RedisUrl = None,
    prefix: Annotated[str | None, typer.Option(
        "--prefix", envvar="ASYNCJOBS_PREFIX",
        help="Key prefix (overrides the Worker's).")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1,
                                                    help="Jobs run at once.")] = None,
    queue: Annotated[list[str] | None, typer.Option("--queue", "-q",
                                                    help="Queue to serve (repeatable).")] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queues are empty.")] = False,
    grace: Annotated[float | None, typer.Option("--grace", min=0,
                                                help="Shutdown grace period, seconds.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING...")] = "INFO",
    log_format: Annotated[str, typer.Option("--log-format", help="text or json.")] = "text",
    uvloop: Annotated[bool, typer.Option("--uvloop/--no-uvloop", help="Use uvloop.")] = True,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, envvar="ASYNCJOBS_METRICS_PORT",
        help="Serve Prometheus metrics on this port (needs the [metrics] extra).")] = None,
) -> None:
    """Run a worker until SIGTERM/SIGINT (or until drained, with --burst)."""
    configure(log_level, log_format)
    try:
        found = _load_worker(target)
        changes: dict[str, object] = {}
        if concurrency is not None:
            changes["concurrency"] = concurrency
        if queue:
            changes["queues"] = tuple(queue)
        if burst:
            changes["burst"] = True
        if grace is not None:
            changes["shutdown_grace_s"] = grace
        if prefix is not None:
            changes["prefix"] = prefix
        runner = found.configure(**changes) if changes else found
        if metrics_port is not None:
            runner.metrics_port = metrics_port
        runner.run_sync(redis_url=redis_url, use_uvloop=uvloop)
    except ConfigurationError as exc:
        fail(str(exc), 2)
    except AsyncJobsError as exc:
        fail(str(exc))


def _load_worker(target: str) -> Worker:
    found = load(target)
    if not isinstance(found, Worker):
        kind = type(found).__name__
        raise ConfigurationError(f"{target} is a {kind}, not an asyncjobs.Worker")
    return found


@app.command()
def demo(
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", help="Use this Redis instead of a throwaway one.")] = None,
) -> None:
    """Run a worker and a producer on a throwaway Redis and show a few jobs end to end."""
    from ._demo import run_demo

    configure("ERROR")  # the table shows every outcome
    try:
        with asyncio.Runner(loop_factory=_loop_factory(True)) as runner:
            ok = runner.run(run_demo(redis_url))
    except AsyncJobsError as exc:
        fail(str(exc))
    raise typer.Exit(0 if ok else 1)


Prefix = Annotated[str, typer.Option("--prefix", envvar="ASYNCJOBS_PREFIX",
                                     help="Key prefix of the app.")]
Queue = Annotated[str | None, typer.Option("--queue", "-q", help="Queue (default: 'default').")]
Queues = Annotated[list[str] | None, typer.Option("--queue", "-q",
                                                  help="Queue (repeatable; default: all known).")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except AsyncJobsError as exc:
        fail(str(exc))


def _out(as_json: bool, data: Any, *tables: Any) -> None:
    if as_json:
        typer.echo(to_json(data))
    else:
        console = Console()
        for table in tables:
            console.print(table)


@app.command()
def info(redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queues = None,
         as_json: AsJson = False) -> None:
    """Queues (waiting, in flight, delayed, dead, oldest age) and live workers."""
    stats, workers = _run(ops.info(ops.Target(redis_url, prefix), queue or []))
    _out(as_json, {"queues": stats, "workers": workers}, queues_table(stats),
         workers_table(workers))


@app.command()
def job(job_id: str, redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs",
        queue: Queue = None, as_json: AsJson = False) -> None:
    """The whole record of one job: state, arguments, attempts, times, errors, result."""
    record = _run(ops.job(ops.Target(redis_url, prefix), job_id, queue))
    if as_json:
        typer.echo(to_json(record))
    else:
        print_job(Console(), record)


@app.command()
def enqueue(
    task: Annotated[str, typer.Argument(help="The task's name.")],
    arg: Annotated[list[str] | None, typer.Option("--arg", help="A positional argument, as "
                                                  "JSON (repeatable).")] = None,
    kwarg: Annotated[list[str] | None, typer.Option("--kwarg", help="name=JSON "
                                                    "(repeatable).")] = None,
    job_id: Annotated[str | None, typer.Option("--job-id")] = None,
    delay: Annotated[float | None, typer.Option("--delay", min=0, help="Seconds.")] = None,
    redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
    as_json: AsJson = False,
) -> None:
    """Enqueue a job by task name, with JSON arguments."""
    args = [_json(a, "--arg") for a in arg or []]
    kwargs = dict(_pair(k) for k in kwarg or [])
    options = {k: v for k, v in {"job_id": job_id, "delay": delay, "queue": queue}.items()
               if v is not None}
    jid, where, state = _run(ops.enqueue(ops.Target(redis_url, prefix), task, args, kwargs,
                                         options))
    if as_json:
        typer.echo(to_json({"job_id": jid, "queue": where, "state": state}))
    else:
        typer.echo(f"{jid} {state} on queue {where}")


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} {text!r} is not JSON ({exc.msg}); quote strings: --arg '\"text\"'", 2)


def _pair(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        fail(f"--kwarg {text!r}: expected name=JSON", 2)
    return name, _json(value, f"--kwarg {name}")


@app.command()
def check(
    redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queues = None,
    this_host: Annotated[bool, typer.Option("--this-host", help="Require a live worker on "
                                            "this host (a liveness probe).")] = False,
    max_waiting: Annotated[int | None, typer.Option("--max-waiting", min=0)] = None,
    max_age: Annotated[float | None, typer.Option("--max-age", min=0,
                                                  help="Oldest waiting job, seconds.")] = None,
) -> None:
    """Exit 0 when healthy, 1 when not (health and liveness probes). With --this-host an
    unreachable Redis is not the worker's fault: exit 0 with a warning."""
    result = _run(ops.check(ops.Target(redis_url, prefix), queue or [], this_host=this_host,
                            max_waiting=max_waiting, max_age_s=max_age))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for problem in result.problems:
        typer.echo(f"unhealthy: {problem}", err=True)
    if result.healthy:
        typer.echo("healthy")
    raise typer.Exit(0 if result.healthy else 1)


dlq = typer.Typer(help="Dead letters: list, show, requeue, purge.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")


@dlq.command("list")
def dlq_list(redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
             limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
             as_json: AsJson = False) -> None:
    """The newest dead letters of a queue."""
    letters = _run(ops.dead_letters(ops.Target(redis_url, prefix), queue, limit))
    _out(as_json, letters, dead_table(letters))


@dlq.command("show")
def dlq_show(job_id: str, redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs",
             queue: Queue = None, as_json: AsJson = False) -> None:
    """A dead-lettered job's record, with every error and traceback."""
    job(job_id, redis_url, prefix, queue, as_json)


@dlq.command("requeue")
def dlq_requeue(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids to requeue.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Requeue every dead letter.")] = False,
    redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
    as_json: AsJson = False,
) -> None:
    """Run dead-lettered jobs again: same id, error history kept, attempts reset."""
    if not job_ids and not every:
        fail("give job ids, or --all", 2)
    outcome = _run(ops.requeue(ops.Target(redis_url, prefix), queue, job_ids or [], every))
    if as_json:
        typer.echo(to_json(outcome))
    else:
        for jid, state in outcome.items():
            typer.echo(f"{jid}: {'requeued' if state == 'queued' else 'not requeued: ' + state}")
    if any(state != "queued" for state in outcome.values()):
        raise typer.Exit(1)


@dlq.command("purge")
def dlq_purge(redis_url: RedisUrl = None, prefix: Prefix = "asyncjobs", queue: Queue = None,
              yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    """Delete every dead letter of a queue and the records of those jobs."""
    if not yes:
        typer.confirm("Delete every dead letter of this queue?", abort=True)
    count = _run(ops.purge(ops.Target(redis_url, prefix), queue))
    typer.echo(f"purged {count} dead letter(s)")


def main() -> None:
    """Entry point of the ``asyncjobs`` script."""
    app(prog_name="asyncjobs")


if __name__ == "__main__":  # pragma: no cover
    main()
