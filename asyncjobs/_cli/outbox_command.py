"""``asyncjobs outbox-relay``: the outbox relay on its own, until SIGTERM or SIGINT.

``register(app)`` adds the command; the outbox itself (SQLAlchemy, the database drivers) is
imported only when the command runs, so the rest of the CLI never loads it.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

from ..exceptions import AsyncJobsError, ConfigurationError
from . import loader
from .logs import LogFormat, LogLevel, configure
from .options import LogFormatOption, LogLevelOption, Prefix, RedisUrl
from .render import Command

if TYPE_CHECKING:
    from ..outbox import Relay

DATABASE_URL_ENV = "ASYNCJOBS_DATABASE_URL"


def _outbox() -> ModuleType:
    """The outbox package, or exit 2 with one line when its extra is not installed."""
    try:
        return importlib.import_module("asyncjobs.outbox")
    except ImportError as exc:
        from ..cli import fail

        fail('the outbox relay needs the "outbox" extra (pip install -e ".[outbox]" in a '
             f"clone; see the README, Installing): {exc}", 2)


def _database_url(url: str) -> str:
    _outbox().database_url(url)  # raises ConfigurationError: a usage error
    return url


def _poll(value: float) -> float:
    if loader.seconds(value, "--poll") <= 0:
        raise ConfigurationError("--poll must be more than 0 s")
    return value


def outbox_relay(
    database_url: Annotated[str, typer.Option(
        "--database-url", envvar=DATABASE_URL_ENV, show_envvar=True,
        callback=loader.callback(_database_url),
        help="postgresql://user@host/db or sqlite:///path.db (async drivers filled in).")],
    redis_url: RedisUrl = None,
    prefix: Prefix = "asyncjobs",
    table: Annotated[str, typer.Option("--table", help="The outbox table.")] = (
        "asyncjobs_outbox"),
    schema: Annotated[str | None, typer.Option("--schema", help="Its schema.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=10_000,
                                            help="Rows per batch.")] = 1000,
    keep: Annotated[float, typer.Option("--keep", callback=loader.seconds_option("keep"),
                                        help="Keep relayed rows this long, seconds "
                                             "(0: delete them at once).")] = 0.0,
    poll: Annotated[float | None, typer.Option(
        "--poll", callback=loader.callback(_poll),
        help="Poll interval, seconds (default 1 with NOTIFY, 0.05 without).")] = None,
    queue: Annotated[list[str] | None, typer.Option(
        "--queue", "-q", callback=loader.queues_option,
        help="Only these queues (repeatable); rows naming others fail.")] = None,
    lease: Annotated[bool, typer.Option(
        "--lease/--no-lease", help="Relay only while holding the outbox's lease (one relay "
                                   "at a time among workers and relays).")] = True,
    log_level: LogLevelOption = LogLevel.INFO,
    log_format: LogFormatOption = LogFormat.TEXT,
    uvloop: Annotated[bool, typer.Option("--uvloop/--no-uvloop", help="Use uvloop.")] = True,
) -> None:
    """Move committed outbox rows to Redis until SIGTERM/SIGINT."""
    from .._worker.loop import loop_factory
    from ..cli import fail
    from ..outbox import Relay, outbox_table

    configure(log_level.value, log_format.value)
    try:
        relay = Relay(database_url, table=outbox_table(name=table, schema=schema),
                      redis_url=redis_url, prefix=prefix, batch_size=batch_size, keep=keep,
                      poll=poll, queues=queue, lease=lease)
        with asyncio.Runner(loop_factory=loop_factory(uvloop)) as runner:
            runner.run(_until_signalled(relay))
    except ConfigurationError as exc:
        fail(str(exc), 2)
    except AsyncJobsError as exc:
        fail(str(exc))


async def _until_signalled(relay: Relay) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    try:
        await relay.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def register(app: typer.Typer) -> None:
    """Add ``outbox-relay`` to the ``asyncjobs`` command."""
    app.command("outbox-relay", cls=Command)(outbox_relay)
