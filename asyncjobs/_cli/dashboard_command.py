"""``asyncjobs dashboard``: serve the web dashboard with uvicorn. Thin: the dashboard is
``asyncjobs.dashboard.create_app``; this module imports it (and Starlette, Jinja2, uvicorn:
the ``dashboard`` extra) only when the command runs.

The command binds its sockets itself (``listen``) before uvicorn starts, and hands them to
uvicorn: an address it cannot listen on is one line, ``asyncjobs: error: cannot listen on
HOST:PORT: <reason>``, exit 1 (a failure, as an unreachable Redis is), instead of uvicorn's
start-up and shut-down lines around its error; and the banner shows the port the kernel
gave (``--port 0``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.markup import escape

from .._redis.connection import URL_ENV, default_url, redact
from ..exceptions import ConfigurationError
from . import loader as _loader
from .logs import LogLevel, configure
from .options import LogLevelOption
from .render import safe

if TYPE_CHECKING:
    import uvicorn

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _loopback(host: str) -> bool:
    try:
        return host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refresh_seconds(value: float) -> float:
    """``--refresh``: seconds, in the dashboard's range (``create_app``'s own check, which
    needs the dashboard extra: without it the command says that instead)."""
    seconds = _loader.seconds(value, "refresh")
    try:
        from ..dashboard._app import _refresh_seconds
    except (ImportError, ConfigurationError):
        return seconds
    try:
        return _refresh_seconds(seconds, "refresh")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


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
        "--refresh", callback=_loader.callback(refresh_seconds),
        help="Seconds between live updates of a page (0.2 to 3600).")] = 2.0,
    log_level: LogLevelOption = LogLevel.INFO,
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
    try:
        sockets = listen(host, port)
    except OSError as exc:
        _fail(f"cannot listen on {address(host, port)}: {exc.strerror or exc}", 1)
    except ValueError as exc:  # a host name that cannot be one (IDNA: a label too long...)
        _fail(f"cannot listen on {address(host, port)}: {exc}", 2)
    bound = sockets[0].getsockname()[1]
    url = redact(redis_url or default_url())
    mode = "read-only" if read_only else "actions on"
    typer.echo(safe(f"asyncjobs dashboard on http://{address(host, bound)}/ (Redis {url}, "
                    f"prefix {prefix}, {mode})"))
    if not _loopback(host) and not read_only:
        typer.echo(safe(f"warning: the dashboard has no login of its own and listens on "
                        f"{host}: put it behind your proxy's authentication, or use "
                        "--read-only"), err=True)
    config = uvicorn.Config(KnownHosts(app, names), host=host, port=bound,
                            log_level=log_level.value.lower(), proxy_headers=False,
                            server_header=False)
    server = _server()(config)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # pragma: no cover - uvicorn handles SIGINT itself
        pass
    finally:
        for sock in sockets:
            sock.close()
    if not server.started:  # the app's start-up failed: uvicorn said why
        raise typer.Exit(1)


def address(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound on ``port`` at every address ``host`` names, as asyncio's
    ``create_server`` (which uvicorn calls) binds them: ``SO_REUSEADDR`` on POSIX, an IPv6
    socket for IPv6 only, '' for every interface. With ``port`` 0 the kernel picks the
    first socket's port, and the others take the same. ``OSError`` (nothing left bound)
    when ``host`` does not resolve or an address cannot be bound; ``ValueError`` when
    ``host`` cannot be a host name (IDNA refuses it: a label over 63 characters...)."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, where in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if len(sockets) > 1:  # (a port 0 given: the first one's)
                where = (where[0], sockets[0].getsockname()[1], *where[2:])
            sock.bind(where)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _server() -> type[uvicorn.Server]:
    """uvicorn's ``Server``, saying where it listens once it has started, as it does on
    sockets it binds itself (not on sockets it is given)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and sockets:
                host, port = sockets[0].getsockname()[:2]
                shown = self.config.host or host
                logging.getLogger("uvicorn.error").info(
                    "Uvicorn running on http://%s (Press CTRL+C to quit)",
                    address(shown, port))

    return Server


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"asyncjobs: error: {safe(message)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)
