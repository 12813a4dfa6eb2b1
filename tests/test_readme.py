"""Every Python block of README.md runs, as written.

Each ```` ```python ```` block is run the way its first line says:

- ``# app/jobs.py``, ``# app/main.py``, ``# enqueue.py`` (the Quickstart) are written to files
  of a project directory, and used as the README says: the worker started with the README's
  own ``asyncjobs worker`` command, ``python enqueue.py``, the app under uvicorn.
- ``# tests/test_signup.py`` (Testing your code) is run by pytest in a subprocess next to the
  Quickstart's files, with every Redis URL pointing at a closed port: no Redis is needed.
- ``# continues the Quickstart (...)`` runs the way Python's asyncio REPL runs code (``await``
  at the top level) after the preamble the README states: ``from app.jobs import
  send_welcome_email`` and ``pool = await asyncjobs.create_pool(...)``; a block that also
  names ``examples/payments.py`` in its opening comment gets that module's names too.
- Any other block runs the same way with nothing before it.

A block that builds a ``worker`` gets that worker run afterwards, in burst mode on a key prefix
of its own: it starts on Redis (its lifespan opens and closes) and stops. Where a line
``print(...)  # text`` shows what it prints, the test checks it printed that (``...`` stands
for anything). A block is either run or listed in ``ILLUSTRATION_ONLY`` with the reason;
``test_every_python_block_is_run`` fails otherwise.

**Databases**: the outbox block's ``sqlite+aiosqlite:///app.db`` becomes a file of the test's
own (its engine is disposed after the block).

**Redis**: the literal ``redis://localhost:6379/0`` in the blocks is replaced by the URL of a
``redis-server`` the test started on a free port (``fresh_redis``), and
``$ASYNCJOBS_REDIS_URL`` points there too (code that takes the default URL goes there). A
block that still mentions port 6379 after that fails the test: these tests never touch 6379.
A block naming the README's Sentinel URL (``redis+sentinel://sentinel-1:26379,...``) gets a
master, a replica and three Sentinels of its own (``tests/sentinel.py``) in its place.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import asyncjobs
from asyncjobs._redis.embedded import RedisServer

from .procs import ROOT, uvicorn
from .sentinel import sentinel_setup

README = ROOT / "README.md"
README_URL = "redis://localhost:6379/0"
README_SENTINEL_URL = ("redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/"
                      "mymaster/0")
README_DB_URL = "sqlite+aiosqlite:///app.db"  # the outbox block's database
CLOSED_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

FILE_RE = re.compile(r"^# ((?:[\w.-]+/)*[\w.-]+\.py)\b")
CONTINUES = "# continues the Quickstart"
QUICKSTART_FILES = ("app/jobs.py", "app/main.py", "enqueue.py")
TESTING_FILES = ("tests/test_signup.py",)

# First line of a block -> why it is not run. Keep this tiny.
ILLUSTRATION_ONLY: dict[str, str] = {}


@dataclass(frozen=True)
class Block:
    """One ```python block of the README."""

    line: int  # of its first line of code
    source: str

    @property
    def first(self) -> str:
        return self.source.splitlines()[0]

    @property
    def file(self) -> str | None:
        """The file it is, for blocks that open with ``# path/name.py``."""
        found = FILE_RE.match(self.first)
        return found.group(1) if found else None

    def on(self, url: str, sentinel_url: str = "") -> str:
        """The source, its Redis URLs pointing at ``url`` (and ``sentinel_url``)."""
        source = self.source.replace(README_URL, url)
        if sentinel_url:
            source = source.replace(README_SENTINEL_URL, sentinel_url)
        assert "6379" not in source, f"README.md:{self.line} names port 6379 in another form"
        return source


def fenced_blocks(language: str = "python") -> list[Block]:
    blocks: list[Block] = []
    lines = README.read_text().splitlines()
    start: int | None = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == f"```{language}":
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append(Block(start + 1, "\n".join(lines[start:number - 1]) + "\n"))
            start = None
    assert start is None, f"README.md:{start}: a ```{language} block is never closed"
    return blocks


def block_for(file: str) -> Block:
    [block] = [b for b in fenced_blocks() if b.file == file]
    return block


def snippets() -> list[Block]:
    """The blocks run in-process: all but the files and the illustrations."""
    return [b for b in fenced_blocks() if b.file is None and b.first not in ILLUSTRATION_ONLY]


def expected_prints(source: str) -> list[str]:
    """What the ``print(...)  # text`` lines say they print, in order."""
    shown = []
    for line in source.splitlines():
        found = re.match(r"^\s*print\(.*\)\s+#\s*(.+?)\s*$", line)
        if found:
            shown.append(found.group(1))
    return shown


def assert_printed(printed: str, source: str) -> None:
    lines = printed.splitlines()
    shown = expected_prints(source)
    assert len(lines) == len(shown), f"printed {lines}, the README shows {shown}"
    for got, want in zip(lines, shown, strict=True):
        pattern = ".*".join(re.escape(part) for part in want.split("..."))
        assert re.fullmatch(pattern, got), f"printed {got!r}, the README shows {want!r}"


def test_every_python_block_is_run() -> None:
    blocks = fenced_blocks()
    files = [b.file for b in blocks if b.file is not None]
    illustrations = [b for b in blocks if b.first in ILLUSTRATION_ONLY]
    assert sorted(files) == sorted(QUICKSTART_FILES + TESTING_FILES), (
        "a new file block needs a test that uses it as the README says")
    assert len(illustrations) == len(ILLUSTRATION_ONLY), "ILLUSTRATION_ONLY names a block "\
        "that is not in the README any more"
    assert len(files) + len(snippets()) + len(illustrations) == len(blocks)
    assert len(blocks) >= 10  # the README has not lost its blocks to a broken fence


# -- the blocks that continue the Quickstart, or stand alone, in the asyncio REPL's way ----


def quickstart_jobs(url: str) -> types.ModuleType:
    """app/jobs.py from the README, as a module (what ``from app.jobs import ...`` gives)."""
    module = types.ModuleType("app.jobs")
    exec(compile(block_for("app/jobs.py").on(url), "README.md:app/jobs.py", "exec"),
         module.__dict__)
    return module


async def run_repl_style(source: str, namespace: dict[str, Any], name: str) -> None:
    """Run ``source`` as ``python -m asyncio`` runs what is typed in: top-level await."""
    code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        await result


@pytest.mark.asyncio
@pytest.mark.parametrize("block", snippets(), ids=lambda b: f"line{b.line}")
async def test_snippet(block: Block, fresh_redis: RedisServer, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    with contextlib.ExitStack() as servers:
        sentinel_url = ""
        if README_SENTINEL_URL in block.source:
            sentinel_url = servers.enter_context(sentinel_setup()).url
        source = block.on(fresh_redis.url, sentinel_url).replace(
            README_DB_URL, f"sqlite+aiosqlite:///{tmp_path}/app.db")
        await run_snippet(block, source, fresh_redis, monkeypatch)


async def run_snippet(block: Block, source: str, fresh_redis: RedisServer,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_REDIS_URL", fresh_redis.url)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    opening = "".join(line for line in source.splitlines() if line.startswith("#"))
    async with contextlib.AsyncExitStack() as stack:
        if block.first.startswith(CONTINUES):
            if "examples/payments.py" in opening:
                namespace.update(runpy.run_path(str(ROOT / "examples/payments.py"),
                                                run_name="payments"))
            jobs = quickstart_jobs(fresh_redis.url)
            namespace["send_welcome_email"] = jobs.send_welcome_email
            pool = await asyncjobs.create_pool(fresh_redis.url)
            stack.push_async_callback(pool.close)
            namespace["pool"] = pool
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            await asyncio.wait_for(run_repl_style(source, namespace, f"README.md:{block.line}"),
                                   60)
        assert_printed(printed.getvalue(), source)
        worker = namespace.get("worker")
        if isinstance(worker, asyncjobs.Worker):
            await asyncio.wait_for(worker.configure(burst=True, prefix="readme-check").run(),
                                   30)
        engine = namespace.get("engine")  # a database the block opened (the outbox's)
        if isinstance(engine, AsyncEngine):
            await engine.dispose()


# -- the Quickstart as files, used as the README says ---------------------------------------


def write_project(directory: Path, url: str, files: tuple[str, ...]) -> Path:
    for name in files:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block_for(name).on(url))
    return directory


def readme_command(prefix: str) -> str:
    """The line of a ```bash block that starts with ``prefix``."""
    lines = [line for block in fenced_blocks("bash") for line in block.source.splitlines()
             if line.startswith(prefix)]
    assert len(lines) == 1, f"README.md: expected one line starting {prefix!r}, found {lines}"
    return lines[0]


def user_env(url: str) -> dict[str, str]:
    """A user's shell: this venv's commands on PATH, output unbuffered."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "ASYNCJOBS_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}


async def result_of(url: str, job_id: str) -> Any:
    async with asyncjobs.create_pool(url) as pool:
        return await pool.job(job_id).result(timeout=20)


@pytest.mark.slow
def test_quickstart_runs_as_a_user_would(tmp_path: Path, fresh_redis: RedisServer) -> None:
    """The files, the worker command, ``python enqueue.py`` and the app under uvicorn."""
    url = fresh_redis.url
    project = write_project(tmp_path, url, QUICKSTART_FILES)
    env = user_env(url)
    enqueue = block_for("enqueue.py")
    shown = expected_prints(enqueue.source)
    assert len(shown) == 2
    producer = subprocess.Popen([sys.executable, "enqueue.py"], cwd=project, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = (tmp_path / "worker.log").open("w")
    worker: subprocess.Popen[Any] | None = None
    try:
        assert producer.stdout is not None
        # No worker runs yet: the job waits in the queue.
        assert producer.stdout.readline().rstrip("\n") == shown[0]
        command = readme_command("asyncjobs worker app.jobs:worker").replace(README_URL, url)
        worker = subprocess.Popen(["bash", "-c", command], cwd=project, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        rest, _ = producer.communicate(timeout=60)
        assert producer.returncode == 0, rest
        assert_printed(f"{shown[0]}\n{rest}", enqueue.source)

        with uvicorn("app.main:app", env, cwd=project) as base:
            response = httpx.post(f"{base}/signup",
                                  params={"user_id": 7, "address": "grace@example.com"})
            assert response.status_code == 202, response.text
            result = asyncio.run(result_of(url, response.json()["job_id"]))
            assert result == "welcomed user 7 <grace@example.com> on attempt 1"
    finally:
        for process in (producer, worker):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert worker is not None and worker.returncode == 0, output
    assert "mail to ada@example.com: Welcome!" in output
    assert "mail to grace@example.com: Welcome!" in output


@pytest.mark.slow
def test_testing_section_needs_no_redis(tmp_path: Path) -> None:
    """Its test passes under pytest with every Redis URL pointing at a closed port."""
    project = write_project(tmp_path, CLOSED_URL, QUICKSTART_FILES + TESTING_FILES)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTING_FILES],
        cwd=project, env=user_env(CLOSED_URL), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^1 passed in ", done.stdout, re.MULTILINE), done.stdout  # no warnings
    assert time.monotonic() - started < 30  # no wait for an unreachable Redis either


def test_install_lines_name_this_version_and_no_unpublished_package() -> None:
    """The wheel in the README's install line is the one this checkout builds, and no line
    installs ``asyncjobs-redis`` by name from PyPI (it is not published yet)."""
    lines = [line for block in fenced_blocks("bash") for line in block.source.splitlines()]
    wheels = [line for line in lines if ".whl" in line and line.startswith("pip install")]
    assert wheels, "the README shows no wheel install line"
    for line in wheels:
        assert f"asyncjobs_redis-{asyncjobs.__version__}-py3-none-any.whl" in line, line
    text = README.read_text()
    assert not re.search(r"pip install [\"']?asyncjobs-redis", text)
