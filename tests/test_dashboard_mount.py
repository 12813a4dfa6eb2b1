"""The dashboard mounted inside a FastAPI app under /admin/jobs, behind the app's own auth:
the host's check refuses anonymous requests, links and cookies stay under the mount, and
the actions log the host's user. Plus the ``asyncjobs dashboard`` command's checks, and
the templates and assets the package ships."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, HTTPException, Request

import asyncjobs
from asyncjobs.dashboard import create_app
from asyncjobs.testing import Harness

from .procs import ROOT, run_cli


def admin_user(request: Request) -> str:
    """The host app's auth dependency (here: a header; in real apps a session or token)."""
    user = request.headers.get("x-user")
    if user != "ada":
        raise HTTPException(status_code=401, detail="log in first",
                            headers={"WWW-Authenticate": "Bearer"})
    return user


@pytest_asyncio.fixture
async def host() -> AsyncIterator[tuple[FastAPI, Harness]]:
    harness = Harness()
    app = FastAPI()
    app.mount("/admin/jobs", create_app(lambda: app.state.asyncjobs, auth=admin_user))

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"hello": "world"}

    harness.attach(app)
    yield app, harness
    await harness.close()


def client(app: FastAPI, user: str | None = None) -> httpx.AsyncClient:
    headers = {"x-user": user} if user else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://app.test", headers=headers)


@pytest.mark.asyncio
async def test_anonymous_requests_are_refused_by_the_host(
        host: tuple[FastAPI, Harness]) -> None:
    app, harness = host
    job = await harness.pool.enqueue("t", 1)
    async with client(app) as anonymous, client(app, "mallory") as wrong:
        for http in (anonymous, wrong):
            for path in ("/admin/jobs/", "/admin/jobs/queue", f"/admin/jobs/job?id={job.id}",
                         "/admin/jobs/static/dashboard.js"):
                answer = await http.get(path)
                assert answer.status_code == 401, path
                assert answer.headers["www-authenticate"] == "Bearer"
                assert job.id not in answer.text
            refused = await http.post("/admin/jobs/actions/abort", json={
                "queue": "default", "ids": [job.id], "confirm": True})
            assert refused.status_code == 401
        assert (await anonymous.get("/")).json() == {"hello": "world"}
    assert (await job.status()) is asyncjobs.JobState.QUEUED


@pytest.mark.asyncio
async def test_the_admin_sees_it_under_the_mount(host: tuple[FastAPI, Harness],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    app, harness = host
    job = await harness.pool.enqueue("t", 1)
    caplog.set_level(logging.INFO, "asyncjobs.dashboard")
    async with client(app, "ada") as http:
        page = await http.get("/admin/jobs/queue")
        assert page.status_code == 200 and job.id in page.text
        assert 'href="/admin/jobs/job?queue=default&amp;id=' in page.text
        assert 'src="/admin/jobs/static/dashboard.js?v=' in page.text
        assert "path=/admin/jobs/" in page.headers["set-cookie"].lower()
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert token
        done = await http.post("/admin/jobs/actions/abort",
                               json={"queue": "default", "ids": [job.id], "confirm": True},
                               headers={"x-csrf-token": token.group(1)})
        assert done.status_code == 200, done.text
    assert (await job.status()) is asyncjobs.JobState.ABORTED
    [line] = [r.getMessage() for r in caplog.records if r.name == "asyncjobs.dashboard"]
    assert line.startswith(f"dashboard action abort by ada queue=default ids={job.id}")


@pytest.mark.asyncio
async def test_an_auth_hook_may_answer_false() -> None:
    harness = Harness()
    app = create_app(harness.pool, auth=lambda request: False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://x") as http:
        assert (await http.get("/")).status_code == 403
    await harness.close()


@pytest.mark.asyncio
async def test_an_async_auth_hook() -> None:
    harness = Harness()

    async def check(request: Request) -> str:
        if request.headers.get("authorization") != "Bearer t0ken":
            raise HTTPException(403, "no")
        return "ops"

    app = create_app(harness.pool, auth=check)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://x") as http:
        assert (await http.get("/")).status_code == 403
        assert (await http.get("/", headers={"authorization": "Bearer t0ken"})).status_code == 200
    await harness.close()


def test_the_command_refuses_bad_options() -> None:
    bad_url = run_cli("dashboard", "--redis-url", "http://:pw@host/0")
    assert bad_url.returncode == 2 and "is not a Redis URL" in bad_url.stderr
    assert "pw" not in bad_url.stderr
    bad_refresh = run_cli("dashboard", "--refresh", "0.01", "--redis-url", "redis://x:1/0")
    assert bad_refresh.returncode == 2
    assert bad_refresh.stderr.startswith(
        "asyncjobs: error: Invalid value for '--refresh': refresh must be between")
    assert "dashboard" in run_cli("--help").stdout


def _shipped() -> list[str]:
    import importlib.resources

    root = importlib.resources.files("asyncjobs.dashboard")
    found = []
    for folder in ("templates", "templates/parts", "static"):
        found += [f"{folder}/{f.name}" for f in (root / folder).iterdir() if f.is_file()]
    return found


def test_templates_and_assets_ship_in_the_package() -> None:
    """The wheel (hatch) takes every file under asyncjobs/ that git does not ignore: each
    template and asset is found through importlib.resources, compiles, and is not ignored."""
    from asyncjobs.dashboard._app import _environment

    files = _shipped()
    assert {"static/dashboard.js", "static/dashboard.css", "templates/base.html"} <= set(files)
    env = _environment()
    for name in files:
        if name.startswith("templates/"):
            env.get_template(name.removeprefix("templates/"))
    paths = [f"asyncjobs/dashboard/{name}" for name in files]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True,
                             text=True)
    assert ignored.stdout == ""
