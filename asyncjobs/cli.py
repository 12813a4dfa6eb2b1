"""The ``asyncjobs`` command. Each command is thin: the work lives in the library."""

from __future__ import annotations

import asyncio
from typing import Annotated, NoReturn

import typer

from ._connection import URL_ENV
from ._loader import load
from ._logging import configure
from ._version import __version__
from ._worker import Worker, _loop_factory
from .exceptions import AsyncJobsError, ConfigurationError

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
        runner = found.configure(**changes) if changes else found
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


def main() -> None:
    """Entry point of the ``asyncjobs`` script."""
    app(prog_name="asyncjobs")


if __name__ == "__main__":  # pragma: no cover
    main()
