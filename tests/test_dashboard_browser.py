"""The dashboard in headless Chromium (Debian's, driven by Playwright) against a real
redis-server, a real worker and the dashboard under uvicorn: pages load, numbers match
Redis and update live, a requeue clicked in the browser makes the job run, a job argument
``<script>alert(1)</script>`` renders as text, and nothing breaks the Content-Security-
Policy. Screenshots go to tests/artifacts/.

Chromium must be at /usr/bin/chromium; in CI (``$CI`` set) its absence fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.embedded import free_port
from asyncjobs.dashboard import create_app

from .conftest import IN_CI, Backend, running

pytestmark = [pytest.mark.slow, pytest.mark.asyncio, pytest.mark.real_redis]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
XSS = "<script>alert(1)</script>"
FIXED: set[str] = set()


@asyncjobs.task
async def report(ctx: Context, n: int) -> int:
    await ctx.progress(1.0, "done")
    return n


@asyncjobs.task(max_tries=1)
async def flaky(ctx: Context, text: str) -> str:
    if ctx.job_id not in FIXED:
        raise ConnectionError(f"gateway down for {text}")
    return f"sent {text}"


def need_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing, and browser tests never skip in CI")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn on a free port, in this event loop."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def until(check: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def stat(page: Any, name: str) -> int:
    return int((await page.locator(f'[data-stat="{name}"]').first.inner_text())
               .replace(",", ""))


async def test_the_dashboard_in_a_real_browser(real: Backend) -> None:
    need_chromium()
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    async with real.pool() as pool:
        for i in range(6):
            await pool.enqueue(report, i)
        broken = await pool.enqueue(flaky.options(job_id="charge-7"), "order 7")
        hostile = await pool.enqueue(flaky.options(job_id="xss-1"), XSS)
        for i in range(5):
            await pool.enqueue(asyncjobs.task_ref("later", queue="static"), i)
        for i in range(2):
            await pool.enqueue(asyncjobs.task_ref("later", queue="static").options(delay=3600), i)
        worker = real.worker([report, flaky], concurrency=10)
        async with running(real, worker), serving(create_app(
                redis_url=real.url, prefix=real.prefix, refresh_s=0.5)) as base:
            await until(lambda: _failed(hostile, broken))
            async with async_playwright() as p:
                browser = await p.chromium.launch(
                    executable_path=CHROMIUM, headless=True,
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run"])
                try:
                    await _browse(browser, base, pool, broken, hostile)
                finally:
                    await browser.close()


async def _failed(*jobs: asyncjobs.Job[Any]) -> bool:
    return all([await j.status() is asyncjobs.JobState.FAILED for j in jobs])


async def _browse(browser: Any, base: str, pool: asyncjobs.Pool, broken: asyncjobs.Job[Any],
                  hostile: asyncjobs.Job[Any]) -> None:
    from playwright.async_api import expect

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", on_dialog)

    # Overview: every queue, with the numbers Redis has.
    await page.goto(f"{base}/")
    await page.wait_for_selector('[data-testid="queues"] tr[data-queue="static"]')
    await page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

    # A queue page: its numbers match Redis, and change without a reload.
    await page.goto(f"{base}/queue?queue=static")
    stats = await pool.admin.queue_stats("static")
    assert (await stat(page, "waiting"), await stat(page, "delayed")) == (stats.waiting,
                                                                         stats.delayed) == (5, 2)
    assert await page.locator('[data-testid="list-waiting"] tr[data-job]').count() == 5
    for i in range(3):
        await pool.enqueue(asyncjobs.task_ref("later", queue="static"), 10 + i)
    await expect(page.locator('[data-stat="waiting"]')).to_have_text("8", timeout=10_000)
    await page.goto(f"{base}/queue?queue=default")
    await page.wait_for_selector('[data-testid="throughput"] rect.complete')
    await page.screenshot(path=str(ARTIFACTS / "queue.png"), full_page=True)

    # The hostile argument is text: shown literally, never run.
    await page.goto(f"{base}/job?queue=default&id={hostile.id}")
    assert XSS in await page.locator('[data-testid="args"]').inner_text()
    assert await page.locator('[data-testid="args"] script').count() == 0
    await page.screenshot(path=str(ARTIFACTS / "job-xss.png"), full_page=True)
    assert dialogs == []

    # Dead letters: requeue one in the browser; the worker runs it.
    await page.goto(f"{base}/dead?queue=default")
    assert await page.locator('[data-testid="dead-letters"] tr[data-job]').count() == 2
    FIXED.add(broken.id)
    await page.locator(f'input[data-select][value="{broken.id}"]').check()
    await page.screenshot(path=str(ARTIFACTS / "dead-letters.png"), full_page=True)
    await page.get_by_role("button", name="Requeue selected").click()
    await page.wait_for_selector("#flash.ok")
    assert await page.locator("#flash").inner_text() == "requeued 1 job(s)"
    assert dialogs == ["Requeue the selected jobs?"]
    assert await broken.result(timeout=15) == "sent order 7"
    await expect(page.locator('[data-testid="dead-letters"] tr[data-job]')).to_have_count(
        1, timeout=10_000)

    # The job page shows it complete, with its history kept.
    await page.goto(f"{base}/job?queue=default&id={broken.id}")
    assert await page.locator('[data-field="state"]').inner_text() == "complete"
    assert "gateway down for order 7" in await page.locator("details.error").inner_text()
    await page.goto(f"{base}/workers")
    assert await page.locator('[data-testid="workers"] tr[data-worker]').count() == 1
    await page.screenshot(path=str(ARTIFACTS / "workers.png"), full_page=True)
    assert problems == [], problems
