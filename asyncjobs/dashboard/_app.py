"""The dashboard as an ASGI app (Starlette): ``create_app(...)``.

Pages are drawn on the server by Jinja templates with autoescaping on, so every value that
came from Redis is text, never markup. The page's own small script (``static/dashboard.js``;
no inline script is allowed by the Content-Security-Policy) reloads parts of the page for
live updates, loads more rows, and posts the actions as JSON with the CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from redis.exceptions import BusyLoadingError, ResponseError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .._durations import Seconds, to_seconds
from .._options import check_count
from .._producer.opening import create_pool
from .._producer.pool import Pool
from .._redis.connection import default_url, url_factory
from .._version import __version__
from ..exceptions import CorruptJob, JobNotFound, PoolExhausted, RedisFull, RedisUnavailable
from . import _actions
from ._format import FILTERS
from ._pages import PAGES, PageSpec, View, now, refusal
from ._redact import ArgsRedactor, Redaction, TaskKey, redactors
from ._security import Auth, Guard, SecureHeaders, csrf_token, set_csrf_cookie

PoolSource = Pool | Callable[[], Pool]
"""A pool, or a function returning one (e.g. ``lambda: app.state.asyncjobs``)."""

STATIC = {"dashboard.js": "text/javascript; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8"}


@dataclass
class Settings:
    """What ``create_app`` was given, checked."""

    read_only: bool
    refresh_s: float
    page_size: int
    title: str
    redactors: dict[str, ArgsRedactor]
    opener: Callable[[], Pool] | None
    url: str | None
    prefix: str
    opened: Pool | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def pool(self) -> Pool:
        """The pool to read from (opened on first use when made from a URL)."""
        if self.opener is not None:
            return self.opener()
        async with self.lock:
            if self.opened is None:
                self.opened = await create_pool(self.url, prefix=self.prefix, retry_for=2.0,
                                                check=False)
            return self.opened


def _assets() -> dict[str, tuple[bytes, str]]:
    """The static files (read once from the package), with a version tag each."""
    root = importlib.resources.files(__package__) / "static"
    found = {}
    for name in STATIC:
        data = (root / name).read_bytes()
        found[name] = (data, hashlib.sha256(data).hexdigest()[:12])
    return found


def _environment() -> Environment:
    env = Environment(loader=PackageLoader(__package__, "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(FILTERS)
    return env


class Dashboard:
    """The request handlers, sharing the settings, templates and assets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = _environment()
        self.assets = _assets()

    def common(self, request: Request, token: str) -> dict[str, Any]:
        base = request.scope.get("root_path", "").rstrip("/") + "/"

        def url(path: str = "", **params: Any) -> str:
            query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
            return f"{base}{path}" + (f"?{query}" if query else "")

        return {"base": base, "url": url, "csrf": token, "now": now(),
                "read_only": self.settings.read_only, "title": self.settings.title,
                "refresh_ms": int(self.settings.refresh_s * 1000), "version": __version__,
                "asset": lambda name: url(f"static/{name}", v=self.assets[name][1])}

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(template).render(**context), status)

    def page(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        """The handler of one page (and its parts)."""

        async def handle(request: Request) -> Response:
            return await self._respond(request, name)

        return handle

    async def _respond(self, request: Request, name: str) -> Response:
        spec = PAGES[name]
        token, new = csrf_token(request)
        context = self.common(request, token)
        try:
            response = await self._page(request, name, spec, context)
        except ValueError as exc:
            response = self.render("error.html", 400, **context, problem=str(exc))
        except JobNotFound as exc:
            response = self.render("error.html", 404, **context, problem=str(exc))
        except (RedisUnavailable, PoolExhausted) as exc:
            response = self.render("error.html", 503, **context, problem=str(exc))
        except CorruptJob as exc:  # data in Redis that asyncjobs never writes: 409, as actions
            response = self.render("error.html", 409, **context, problem=str(exc))
        except (ResponseError, BusyLoadingError, RedisFull) as exc:
            refused = refusal(exc)  # a key of the wrong type, an ACL, Redis busy...
            if refused is None:
                raise
            response = self.render("error.html", refused[0], **context, problem=refused[1])
        if new:
            set_csrf_cookie(response, request, token, context["base"])
        return response

    async def _page(self, request: Request, name: str, spec: PageSpec,
                    context: dict[str, Any]) -> Response:
        view = View(request, await self.settings.pool(), self.settings.page_size,
                    self.settings.redactors)
        part = view.param("part")
        if part:
            loader = spec.parts.get((spec.rows or "") if part == "rows" else part)
            if loader is None:
                raise ValueError(f"no part {part!r} on this page")
            data = await loader(view)
            return self.render(f"parts/{name}_{part}.html", **context, **data, view=view)
        data = {}
        for loader in spec.parts.values():
            data.update(await loader(view))
        return self.render(spec.template, **context, **data, view=view, page_name=name,
                           spec=spec, where=view.pool.description)

    async def action(self, request: Request) -> Response:
        return await _actions.run(request, self.settings.pool, request.path_params["name"],
                                  self.settings.read_only)

    async def static(self, request: Request) -> Response:
        found = self.assets.get(str(request.path_params["name"]))
        if found is None:
            return Response("not found", 404)
        data, tag = found
        return Response(data, media_type=STATIC[request.path_params["name"]],
                        headers={"cache-control": "public, max-age=86400", "etag": tag})


PATHS = {"overview": "/", "queue": "/queue", "dead": "/dead", "job": "/job",
         "workers": "/workers", "crons": "/crons", "search": "/search"}


def _refresh_seconds(refresh_s: object, what: str = "refresh_s") -> float:
    """``refresh_s`` in seconds (a number or a ``timedelta``), from 0.2 s to 1 h;
    ``ValueError`` naming it ``what`` otherwise (a bool is not a number of seconds here)."""
    seconds = None
    if isinstance(refresh_s, int | float | timedelta) and not isinstance(refresh_s, bool):
        with contextlib.suppress(ValueError):  # NaN, inf, negative: the message below
            seconds = to_seconds(refresh_s, what)
    if seconds is None or not 0.2 <= seconds <= 3600:
        raise ValueError(f"{what} must be between 0.2 and 3600 seconds, not "
                         f"{refresh_s!r:.80}")
    return seconds


def create_app(pool: PoolSource | None = None, *, redis_url: str | None = None,
               prefix: str = "asyncjobs", read_only: bool = False,
               redact: Mapping[TaskKey, Redaction] | None = None, auth: Auth | None = None,
               refresh_s: Seconds = 2.0, page_size: int = 50,
               title: str = "asyncjobs") -> Starlette:
    """The dashboard, an ASGI app to serve (``asyncjobs dashboard``) or mount in yours.

    It reads through ``pool`` (a ``Pool``, or a function returning the app's pool), or opens
    its own on ``redis_url`` (default ``$ASYNCJOBS_REDIS_URL``) and ``prefix`` at its first
    request (a URL that can never work raises ``ConfigurationError`` here). ``read_only``
    switches every action off, server-side. ``redact`` hides job arguments per task.
    ``auth`` is called with every request: it returns the user (for the action log) or
    raises an ``HTTPException`` to refuse. ``refresh_s``: how often the pages update
    themselves (seconds or a ``timedelta``, 0.2 s to 1 h); ``page_size``: rows per page of a
    list (a whole number, 1 to 500). Either out of range, or not a number, raises
    ``ValueError`` naming it.
    """
    refresh = _refresh_seconds(refresh_s)
    check_count("page_size", page_size, 500)
    if pool is None:
        url_factory(redis_url or default_url())  # a URL that can never work: raised here
    opener = None if pool is None else pool if not isinstance(pool, Pool) else lambda: pool
    settings = Settings(read_only, refresh, page_size, title, redactors(redact),
                        opener, redis_url, prefix)
    handlers = Dashboard(settings)
    routes = [Route(path, handlers.page(name), name=name) for name, path in PATHS.items()]
    routes += [Route("/static/{name}", handlers.static),
               Route("/actions/{name}", handlers.action, methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if settings.opened is not None:  # a later start of the app opens a new one
            opened, settings.opened = settings.opened, None
            await opened.close()

    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=[Middleware(SecureHeaders), Middleware(Guard, auth=auth)])
