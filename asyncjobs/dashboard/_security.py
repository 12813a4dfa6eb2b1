"""What makes the dashboard safe to expose: security headers on every response (a
Content-Security-Policy that allows no inline script), the host app's authentication hook,
CSRF protection for actions (a per-browser token in a SameSite=Strict cookie that the
page's script sends back in a header, plus Origin / Sec-Fetch-Site checks), and for the
standalone command the host names it answers to (``KnownHosts``: no DNS rebinding).
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "asyncjobs_csrf"
CSRF_HEADER = "x-csrf-token"
USER_KEY = "asyncjobs.user"
"""Where the authenticated user (what ``auth`` returned) is kept in the ASGI scope."""

HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}

Auth = Callable[[Request], Any]
"""Called with each request: returns the user (shown in the action log), raises
``HTTPException`` (or returns False: 403) to refuse. May be async."""


class SecureHeaders:
    """ASGI middleware: the security headers on every response, pages not cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class Guard:
    """ASGI middleware: every request goes through ``auth`` first."""

    def __init__(self, app: ASGIApp, auth: Auth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.auth is None:
            await self.app(scope, receive, send)
            return
        try:
            user = self.auth(Request(scope, receive))
            if inspect.isawaitable(user):
                user = await user
        except HTTPException as exc:
            refused = PlainTextResponse(str(exc.detail), exc.status_code, headers=exc.headers)
            await refused(scope, receive, send)
            return
        if user is False:
            await PlainTextResponse("Forbidden", 403)(scope, receive, send)
            return
        scope[USER_KEY] = user
        await self.app(scope, receive, send)


def who(request: Request) -> str:
    """The user behind a request, for the action log: what ``auth`` returned, else the
    host app's authenticated ``request.user``, else the client's address."""
    user = request.scope.get(USER_KEY)
    if user is not None and user is not True:
        return str(getattr(user, "display_name", None) or user)
    scoped = request.scope.get("user")
    if scoped is not None and getattr(scoped, "is_authenticated", False):
        return str(getattr(scoped, "display_name", scoped))
    client = request.client
    return f"anonymous@{client.host}" if client else "anonymous"


def csrf_token(request: Request) -> tuple[str, bool]:
    """This browser's CSRF token, and whether it is new (to be set as a cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if 20 <= len(token) <= 100 and token.replace("-", "").replace("_", "").isalnum():
        return token, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, request: Request, token: str, path: str) -> None:
    """Send the token as a SameSite=Strict, HttpOnly cookie scoped to the dashboard. (The
    scheme comes from the scope, not ``request.url``, which decodes the whole query string
    as UTF-8: raw bytes there are no reason for a 500.)"""
    response.set_cookie(CSRF_COOKIE, token, path=path, httponly=True, samesite="strict",
                        secure=request.scope.get("scheme") == "https")


def csrf_problem(request: Request) -> str | None:
    """Why an action request must be refused (None: it may go on)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None and origin.partition("://")[2] != request.headers.get("host", ""):
        return "cross-origin request refused"
    if not request.headers.get("content-type", "").startswith("application/json"):
        return "actions take a JSON body"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return "missing or wrong CSRF token: reload the page"
    return None


def host_name(header: str) -> str:
    """The name part of a ``Host`` header (port gone, lower case; an IPv6 literal keeps its
    brackets); '' for a header that names nothing."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else ""
    return header.partition(":")[0]


def is_address(name: str) -> bool:
    """Whether ``name`` (from ``host_name``) is an IP address rather than a DNS name."""
    try:
        ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
    except ValueError:
        return False
    return True


class KnownHosts:
    """ASGI middleware of the standalone dashboard: answer only requests whose ``Host`` is
    an IP address or one of ``names``.

    A dashboard on 127.0.0.1 is still reachable from any web page its user opens, through
    DNS rebinding: the page's own name (``evil.example``) comes to resolve to 127.0.0.1,
    and the browser then treats the dashboard as that page's origin, token and actions
    included. Such a request carries the page's name in ``Host``; an address never does
    (rebinding needs a name), so addresses pass and names must be known."""

    def __init__(self, app: ASGIApp, names: Iterable[str]) -> None:
        self.app = app
        self.names = frozenset(n.strip().lower() for n in names)
        self.any = "*" in self.names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        name = host_name(Headers(scope=scope).get("host", ""))
        if name and (name in self.names or is_address(name)):
            await self.app(scope, receive, send)
            return
        refused = PlainTextResponse(
            "this dashboard does not answer to that host name (start it with --allowed-host "
            "NAME to serve it under NAME)", 400, headers={"x-content-type-options": "nosniff"})
        await refused(scope, receive, send)
