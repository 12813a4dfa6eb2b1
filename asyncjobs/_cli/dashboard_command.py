"""``asyncjobs dashboard``: serve the web dashboard with uvicorn. Thin: the dashboard is
``asyncjobs.dashboard.create_app``; this module imports it (and Starlette, Jinja2, uvicorn:
the ``dashboard`` extra) only when the command runs.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from .._redis.connection import URL_ENV, default_url, redact
from ..exceptions import ConfigurationError
from . import loader as _loader
from .logs import LogLevel, configure
from .render import safe

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _loopback(host: str) -> bool:
    try:
        return host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard(
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", envvar=URL_ENV, show_envvar=True,
        callback=_loader.callback(_loader.redis_url),
        help=escape("redis://[user:password@]host:port/db, rediss:// for TLS."))] = None,
    prefix: Annotated[str, typer.Option("--prefix", envvar="ASYNCJOBS_PREFIX",
                                        callback=_loader.prefix_option,
                                        help="Key prefix of the app.")] = "asyncjobs",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="Port to listen on.")] = 8080,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", metavar="NAME",
        help="A host name the dashboard answers to besides its addresses, localhost and this "
             "machine's name (repeat for more; * for any): the name a proxy or browser uses "
             "for it. Other names are refused, against DNS rebinding.")] = None,
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="Switch every action off (requeue, abort, purge, retry).")] = False,
    refresh: Annotated[float, typer.Option(
        "--refresh", callback=_loader.seconds_option("refresh"),
        help="Seconds between live updates of a page.")] = 2.0,
    log_level: Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False,
                                                help="How much to log.")] = LogLevel.INFO,
) -> None:
    """Serve the web dashboard (needs the dashboard extra)."""
    try:
        import uvicorn

        from ..dashboard import create_app
        from ..dashboard._security import KnownHosts
    except (ImportError, ConfigurationError) as exc:
        _fail('the dashboard needs the "dashboard" extra (pip install -e ".[dashboard]" in a '
              f"clone; see the README, Installing): {exc}", 2)
    try:
        app = create_app(redis_url=redis_url, prefix=prefix, read_only=read_only,
                         refresh_s=refresh)
    except ValueError as exc:
        _fail(str(exc), 2)
    names = [*LOOPBACK, socket.gethostname(), host, *(allowed_host or [])]
    if any(not n.strip() or any(c.isspace() for c in n) for n in allowed_host or []):
        _fail("--allowed-host takes a host name (or *), without spaces", 2)
    configure(log_level.value)
    url = redact(redis_url or default_url())
    mode = "read-only" if read_only else "actions on"
    typer.echo(safe(f"asyncjobs dashboard on http://{host}:{port}/ (Redis {url}, prefix "
                    f"{prefix}, {mode})"))
    if not _loopback(host) and not read_only:
        typer.echo(f"warning: the dashboard has no login of its own and listens on {host}: "
                   "put it behind your proxy's authentication, or use --read-only", err=True)
    uvicorn.run(KnownHosts(app, names), host=host, port=port, log_level=log_level.value.lower(),
                proxy_headers=False, server_header=False)


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"asyncjobs: error: {safe(message)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)
