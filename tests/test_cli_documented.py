"""The README's claims about the ``asyncjobs`` command that no other test checked, each
checked on the real command (a subprocess) against real Redis (and real PostgreSQL for the
outbox relay):

- ``$ASYNCJOBS_PREFIX`` is the key prefix of the commands when ``--prefix`` is not given
  (*Operating it*);
- ``asyncjobs outbox-relay``: ``--database-url`` defaults to ``$ASYNCJOBS_DATABASE_URL``, and
  a bad value there is one line and exit 2 (*Outbox*);
- ``asyncjobs check --max-waiting N`` / ``--max-age S``: exit 0 healthy, 1 not, with the
  problem on a line of its own (*Operating it*);
- ``asyncjobs job ID`` without ``--queue`` searches every known queue (*Dead letters*);
- the standalone ``asyncjobs dashboard``: listens on 127.0.0.1 unless told otherwise, warns
  when it listens elsewhere with actions on, and ``--read-only`` switches actions off
  server-side (*Dashboard*);
- ``asyncjobs demo --redis-url URL`` runs the demo on that Redis (*Trying it*).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import redis

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis.embedded import RedisServer

from .conftest import Backend, running
from .procs import ROOT, stop
from .test_outbox import database, greet

pytestmark = [pytest.mark.slow]

# The variables under test are removed from the environment the commands inherit, so that
# a test says exactly which of them a command sees.
OUR_VARIABLES = ("ASYNCJOBS_PREFIX", "ASYNCJOBS_DATABASE_URL", "ASYNCJOBS_REDIS_URL")


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without the asyncjobs variables under test, plus
    ``variables``."""
    env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", **variables}


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``asyncjobs ARGS`` run to completion with exactly ``env``: exit code, stdout, stderr."""
    done = subprocess.run([sys.executable, "-m", "asyncjobs", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=env if env is not None else environment())
    return done.returncode, done.stdout, done.stderr


def start(*args: str, output: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``asyncjobs ARGS`` started with exactly ``env``, its output (both streams) to
    ``output``."""
    return subprocess.Popen([sys.executable, "-m", "asyncjobs", *args], cwd=ROOT, env=env,
                            stdout=output, stderr=subprocess.STDOUT)


def as_json(done: tuple[int, str, str]) -> Any:
    code, out, err = done
    try:
        return json.loads(out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON (exit {code}): {exc}\nstdout:\n{out}\nstderr:\n{err}"
                             ) from exc


# -- 1. $ASYNCJOBS_PREFIX -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_asyncjobs_prefix_variable_is_the_prefix_of_the_commands(real: Backend) -> None:
    """README, *Operating it*: "All take ``--redis-url`` ... and ``--prefix`` (or
    ``$ASYNCJOBS_PREFIX``)". The prefix here is the test's own, never the default."""
    url = real.url or ""
    with_prefix = environment(ASYNCJOBS_PREFIX=real.prefix)
    enqueued = as_json(cli("enqueue", "add", "--arg", "1", "--arg", "2", "--json",
                           "--redis-url", url, env=with_prefix))
    job_id = enqueued["job_id"]
    # The job was written under the variable's prefix...
    async with real.pool() as pool:
        assert await pool.job(job_id).status() is asyncjobs.JobState.QUEUED
    # ...a command given only the variable reads it there...
    record = as_json(cli("job", job_id, "--json", "--redis-url", url, env=with_prefix))
    assert (record["id"], record["state"], record["args"]) == (job_id, "queued", [1, 2])
    # ...and the same command without the variable (the default prefix) does not see it.
    code, out, err = cli("job", job_id, "--json", "--redis-url", url, env=environment())
    assert code == 1 and f"no job {job_id!r}" in err, (code, out, err)


# -- 2. $ASYNCJOBS_DATABASE_URL for outbox-relay ---------------------------------------------


@pytest.mark.asyncio
async def test_outbox_relay_reads_the_database_url_variable(real: Backend,
                                                            tmp_path: Path) -> None:
    """README, *Outbox*: "``--database-url`` defaults to ``$ASYNCJOBS_DATABASE_URL``". The
    relay is given no ``--database-url``: the one row committed in the test's PostgreSQL
    schema reaches Redis only if it connected to the database the variable names."""
    async with database("postgresql", tmp_path) as db, real.pool() as pool:
        async with db.session() as session, session.begin():
            job = await db.outbox().enqueue(session, greet, 7, "ada@example.com")
        assert await db.statuses() == {"pending": 1}
        log_path = tmp_path / "relay.log"
        with log_path.open("wb") as log:
            # no --database-url: only the variable names the database
            proc = start("outbox-relay", "--schema", db.schema or "", "--prefix", real.prefix,
                         "--no-uvloop", output=log,
                         env=environment(ASYNCJOBS_DATABASE_URL=db.url,
                                         ASYNCJOBS_REDIS_URL=real.url or ""))
            try:
                deadline = time.monotonic() + 20
                while await db.statuses() != {}:  # relayed rows are deleted
                    output = log_path.read_text(errors="replace")
                    assert proc.poll() is None, f"the relay exited:\n{output[-3000:]}"
                    assert time.monotonic() < deadline, f"nothing relayed:\n{output[-3000:]}"
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0, log_path.read_text(errors="replace")[-3000:]
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        assert await job.handle(pool).status() is asyncjobs.JobState.QUEUED
        assert (await job.handle(pool).info()).args == [7, "ada@example.com"]


def test_outbox_relay_refuses_a_bad_database_url_variable_in_one_line() -> None:
    """README, *Outbox*: "a bad option is one line and exit 2" holds for a bad
    ``$ASYNCJOBS_DATABASE_URL`` too (no ``--database-url`` given: the value is the
    variable's)."""
    code, out, err = cli("outbox-relay", "--no-uvloop",
                         env=environment(ASYNCJOBS_DATABASE_URL="mysql://u@h/db"))
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("asyncjobs: error: ")
    assert "supports PostgreSQL and SQLite, not 'mysql'" in line


# -- 3. check --max-waiting / --max-age -------------------------------------------------------

_release: asyncio.Event | None = None


@asyncjobs.task(timeout=60)
async def hold(ctx: Context) -> None:
    """Keeps the worker's only slot busy until the test releases it."""
    assert _release is not None
    await _release.wait()


@asyncjobs.task
async def noop(ctx: Context) -> None:
    pass


@asyncjobs.task
async def send(ctx: Context, to: str) -> str:
    return to


@asyncjobs.task
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@asynccontextmanager
async def busy_worker(real: Backend, backlog: int) -> AsyncIterator[asyncjobs.Pool]:
    """A live worker (in this process, heartbeating) on the default queue with its only slot
    taken by ``hold``, and ``backlog`` jobs waiting behind it: nothing else takes them."""
    global _release
    _release = asyncio.Event()
    async with real.pool() as pool:
        worker = real.worker([hold, noop], concurrency=1, shutdown_grace=5)
        async with running(real, worker):
            held = await pool.enqueue(hold)
            deadline = time.monotonic() + 10
            while await held.status() is not asyncjobs.JobState.RUNNING:
                assert time.monotonic() < deadline, "the worker did not start the first job"
                await asyncio.sleep(0.02)
            for _ in range(backlog):
                await pool.enqueue(noop)
            stats = await pool.admin.queue_stats()
            assert (stats.waiting, stats.in_flight) == (backlog, 1)
            try:
                yield pool
            finally:
                _release.set()


async def check(real: Backend, *args: str) -> tuple[int, str, str]:
    """``asyncjobs check ARGS`` in a thread, so the worker in this loop keeps running."""
    return await asyncio.to_thread(cli, "check", *args, "--redis-url", real.url or "",
                                   "--prefix", real.prefix)


def problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("unhealthy: ")]


@pytest.mark.asyncio
async def test_check_max_waiting_exits_1_above_the_limit_and_0_within(real: Backend) -> None:
    """README, *Operating it*: ``asyncjobs check [--max-waiting N]``: "exit 0 healthy, 1
    not". 3 jobs wait (the live worker busy): 3 is within ``--max-waiting 3``, above 2."""
    async with busy_worker(real, backlog=3):
        code, out, err = await check(real, "--max-waiting", "3")
        assert (code, out.strip(), problems(err)) == (0, "healthy", []), err
        code, out, err = await check(real, "--max-waiting", "2")
        assert code == 1, (out, err)
        assert "healthy" not in out
        assert problems(err) == ["unhealthy: queue default: 3 waiting > 2"], err


@pytest.mark.asyncio
async def test_check_max_age_exits_1_when_the_oldest_waited_longer(real: Backend) -> None:
    """README, *Operating it*: ``asyncjobs check [--max-age S]``: "exit 0 healthy, 1 not".
    The oldest waiting job is made older than S by waiting (ages only grow)."""
    async with busy_worker(real, backlog=1) as pool:
        code, out, err = await check(real, "--max-age", "60")
        assert (code, out.strip(), problems(err)) == (0, "healthy", []), err
        deadline = time.monotonic() + 10
        while ((await pool.admin.queue_stats()).oldest_waiting_s or 0) <= 0.2:
            assert time.monotonic() < deadline, "the job stopped waiting"
            await asyncio.sleep(0.05)
        code, out, err = await check(real, "--max-age", "0.2")
        assert code == 1, (out, err)
        assert "healthy" not in out
        [problem] = problems(err)
        assert re.fullmatch(r"unhealthy: queue default: oldest waited \d+s > 0\.2s", problem), err


# -- 4. job ID without --queue ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_job_without_queue_finds_a_job_on_another_queue(real: Backend) -> None:
    """README, *Dead letters*: "``asyncjobs job <id>`` ... without ``--queue`` it searches
    every known queue". The job is on ``emails``; ``default`` is known too (searched first)."""
    async with real.pool() as pool:
        await pool.enqueue(add, 1, 2)
        job = await pool.enqueue(send.options(queue="emails"), "ada@example.com")
    target = ("--redis-url", real.url or "", "--prefix", real.prefix)
    record = as_json(cli("job", job.id, "--json", *target))
    assert (record["id"], record["queue"], record["args"]) == (
        job.id, "emails", ["ada@example.com"])


# -- 5. asyncjobs dashboard -------------------------------------------------------------------


class Dashboard:
    """``asyncjobs dashboard`` in a subprocess on a port the kernel picks (``--port 0``),
    stdout and stderr in files of their own."""

    def __init__(self, out: Path, err: Path, listening: str, port: int) -> None:
        self._out, self._err = out, err
        self.listening = listening
        """Where uvicorn says it listens (``http://host:port``)."""
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        """Where to connect (0.0.0.0 includes the loopback address)."""

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")


@contextmanager
def dashboard(real: Backend, directory: Path, *args: str) -> Iterator[Dashboard]:
    """The command, started and answering HTTP on 127.0.0.1; terminated on the way out."""
    out, err = directory / "dashboard.out", directory / "dashboard.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncjobs", "dashboard", "--redis-url", real.url or "",
             "--prefix", real.prefix, "--port", "0", *args],
            cwd=ROOT, stdout=stdout, stderr=stderr, env=environment())
        try:
            running_on = None
            deadline = time.monotonic() + 30
            while running_on is None:
                logged = err.read_text(errors="replace")
                running_on = re.search(r"Uvicorn running on http://([^\s:]+):(\d+)", logged)
                assert proc.poll() is None, f"exited {proc.returncode}:\n{logged[-3000:]}"
                assert time.monotonic() < deadline, f"not started:\n{logged[-3000:]}"
                time.sleep(0.05)
            site = Dashboard(out, err, f"http://{running_on[1]}:{running_on[2]}",
                             int(running_on[2]))
            assert httpx.get(f"{site.base}/", timeout=10).status_code == 200
            yield site
        finally:
            stop(proc)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port``, from the kernel's own
    tables (Linux ``/proc/net/tcp`` and ``tcp6``)."""
    found = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(path).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # host-order 32-bit words
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(raw)))
    return found


def abort(site: Dashboard, queue: str, job_id: str) -> httpx.Response:
    """A valid abort action, as the dashboard's own page sends it: the CSRF token from the
    job page's meta tag, the cookie that page set, a JSON body."""
    with httpx.Client(base_url=site.base, timeout=10) as http:
        page = http.get("/job", params={"queue": queue, "id": job_id})
        assert page.status_code == 200 and job_id in page.text, page.text[-2000:]
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert token is not None
        return http.post("/actions/abort", json={"queue": queue, "ids": [job_id],
                                                  "confirm": True},
                         headers={"x-csrf-token": token[1]})


def job_page(site: Dashboard, queue: str, job_id: str) -> str:
    return httpx.get(f"{site.base}/job", params={"queue": queue, "id": job_id},
                     timeout=10).text


@pytest.mark.asyncio
async def test_dashboard_listens_on_loopback_by_default(real: Backend, tmp_path: Path) -> None:
    """README, *Dashboard*: "The standalone command ... listens on 127.0.0.1 unless told
    otherwise" (and warns only when it listens elsewhere). Its actions are on: a valid abort
    works here, which is what ``--read-only`` must refuse below."""
    async with real.pool() as pool:
        job = await pool.enqueue(add, 1, 2)
    with dashboard(real, tmp_path) as site:
        assert site.listening == f"http://127.0.0.1:{site.port}"
        assert listening_addresses(site.port) == {"127.0.0.1"}  # not 0.0.0.0, not ::
        assert "actions on" in site.stdout.splitlines()[0]
        assert 'data-action="abort"' in job_page(site, "default", job.id)
        done = abort(site, "default", job.id)
        assert done.status_code == 200, done.text
        assert "warning" not in site.stderr.lower(), site.stderr
    async with real.pool() as pool:
        assert await pool.job(job.id).status() is asyncjobs.JobState.ABORTED


@pytest.mark.asyncio
async def test_dashboard_warns_when_it_listens_elsewhere_with_actions_on(
        real: Backend, tmp_path: Path) -> None:
    """README, *Dashboard*: it "warns when it listens elsewhere with actions on"."""
    with dashboard(real, tmp_path, "--host", "0.0.0.0") as site:
        assert listening_addresses(site.port) == {"0.0.0.0"}
        warnings = [line for line in site.stderr.splitlines() if line.startswith("warning:")]
        assert warnings == ["warning: the dashboard has no login of its own and listens on "
                            "0.0.0.0: put it behind your proxy's authentication, or use "
                            "--read-only"], site.stderr


@pytest.mark.asyncio
async def test_dashboard_read_only_switches_actions_off(real: Backend, tmp_path: Path) -> None:
    """README, *Dashboard*: actions "are switched off server-side by ... ``--read-only``",
    and a read-only dashboard listening elsewhere gives no warning (the README's second
    example, ``--read-only --host 0.0.0.0``). The same valid abort that works with actions
    on is refused, and the job is left as it was; the page offers no action."""
    async with real.pool() as pool:
        job = await pool.enqueue(add, 1, 2)
    with dashboard(real, tmp_path, "--read-only", "--host", "0.0.0.0") as site:
        assert "read-only" in site.stdout.splitlines()[0]
        page = job_page(site, "default", job.id)
        assert job.id in page and "data-action" not in page
        refused = abort(site, "default", job.id)
        assert refused.status_code == 403, refused.text
        assert "read-only" in refused.text
        assert "warning" not in site.stderr.lower(), site.stderr
    async with real.pool() as pool:
        assert await pool.job(job.id).status() is asyncjobs.JobState.QUEUED


# -- 6. demo --redis-url --------------------------------------------------------------------


def test_demo_runs_on_the_redis_it_is_given(fresh_redis: RedisServer) -> None:
    """README, *Trying it*: "Add ``--redis-url redis://...`` to use your own Redis instead"
    (of a throwaway one). The server is the test's own: every job command it counts came
    from the demo (which deletes its keys at the end, so the counts are what is left)."""
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        before = client.info("commandstats")
        assert "cmdstat_xadd" not in before and "cmdstat_xack" not in before
        code, out, err = cli("demo", "--redis-url", fresh_redis.url)
        assert code == 0, out + err
        assert f"Using Redis at {fresh_redis.url}" in out
        assert "throwaway" not in out and "fake Redis" not in out
        assert "OK: 6 complete, 2 failed" in out
        after = client.info("commandstats")
        calls = {name: stats["calls"] for name, stats in after.items()}
        # 8 jobs added to a stream here, and read from it by the demo's worker
        assert calls.get("cmdstat_xadd", 0) >= 8, calls
        assert calls.get("cmdstat_xreadgroup", 0) >= 1, calls
    finally:
        client.close()
