"""The dashboard mounted, without ``auth``, in a host app that uses Starlette's
``AuthenticationMiddleware``: the action log names the host app's ``request.user``; a
request the middleware did not authenticate falls back to the client's address."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Mount

import asyncjobs
from asyncjobs.dashboard import create_app
from asyncjobs.testing import Harness

pytestmark = pytest.mark.asyncio

MOUNT = "/admin/jobs"


class HeaderAuth(AuthenticationBackend):
    """The host app's authentication (here a header; in real apps a session or a token):
    ``x-user: alice`` is alice, no header is an unauthenticated request."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials,
                                                                BaseUser] | None:
        name = conn.headers.get("x-user")
        if not name:
            return None  # Starlette then sets an UnauthenticatedUser
        return AuthCredentials(["authenticated"]), SimpleUser(name)


@pytest_asyncio.fixture
async def host() -> AsyncIterator[tuple[Starlette, Harness]]:
    harness = Harness()
    dashboard = create_app(harness.pool)  # no auth=: the host app's user is the one logged
    app = Starlette(routes=[Mount(MOUNT, app=dashboard)],
                    middleware=[Middleware(AuthenticationMiddleware, backend=HeaderAuth())])
    yield app, harness
    await harness.close()


def client(app: Starlette, user: str | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test",
                             headers={"x-user": user} if user else {})


async def abort_through_the_dashboard(app: Starlette, user: str | None,
                                      job: asyncjobs.Job[object]) -> None:
    async with client(app, user) as http:
        page = await http.get(f"{MOUNT}/queue")
        assert page.status_code == 200, page.text
        token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
        assert token
        done = await http.post(f"{MOUNT}/actions/abort",
                               json={"queue": "default", "ids": [job.id], "confirm": True},
                               headers={"x-csrf-token": token.group(1)})
        assert done.status_code == 200, done.text
        assert done.json()["ok"] is True


def action_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncjobs.dashboard"]


async def test_the_action_log_names_the_host_apps_authenticated_user(
        host: tuple[Starlette, Harness], caplog: pytest.LogCaptureFixture) -> None:
    """README, the dashboard in your app: without ``auth``, the user in the action log is
    the host app's ``request.user`` (Starlette's ``AuthenticationMiddleware``)."""
    app, harness = host
    job = await harness.pool.enqueue("t", 1)
    caplog.set_level(logging.INFO, "asyncjobs.dashboard")
    await abort_through_the_dashboard(app, "alice", job)
    assert (await job.status()) is asyncjobs.JobState.ABORTED
    [line] = action_lines(caplog)
    assert line.startswith(f"dashboard action abort by alice queue=default ids={job.id}: ")


async def test_an_unauthenticated_request_is_logged_by_its_address(
        host: tuple[Starlette, Harness], caplog: pytest.LogCaptureFixture) -> None:
    """README: ...else the client's address: the middleware's ``UnauthenticatedUser`` is
    not taken for a user."""
    app, harness = host
    job = await harness.pool.enqueue("t", 1)
    caplog.set_level(logging.INFO, "asyncjobs.dashboard")
    await abort_through_the_dashboard(app, None, job)
    [line] = action_lines(caplog)
    assert line.startswith(f"dashboard action abort by anonymous@127.0.0.1 queue=default "
                           f"ids={job.id}: ")
