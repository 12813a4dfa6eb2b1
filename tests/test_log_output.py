"""A log output that stops taking text (a full pipe: a stalled log shipper, a paused
terminal) never blocks the logging call, so never the worker's event loop: the worker runs
its jobs and stops on SIGTERM within its bound while nobody reads its output. Lines that
wait for the stream are bounded; the ones past the bound are dropped, counted, and the
count is told in a line of the log's own format, in their place.

Each test drives a real pipe whose reading end nobody reads until the test says so."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import asyncjobs
from asyncjobs._cli.logs import BatchedStreamHandler, JsonFormatter
from asyncjobs._redis.embedded import RedisServer

from .procs import ROOT, first_line, python_program


@contextmanager
def full_pipe_logger(most_bytes: int) -> Iterator[tuple[logging.Logger, BatchedStreamHandler, int]]:
    """A logger writing JSON lines to a pipe (yielded: its reading end, not read)."""
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, encoding="utf-8")  # noqa: SIM115  # closed below
    handler = BatchedStreamHandler(stream, most_bytes=most_bytes)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"asyncjobs.test.pipe.{secrets.token_hex(4)}")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        yield log, handler, r
    finally:
        log.removeHandler(handler)
        stream.close()
        os.close(r)


def read_everything(r: int, handler: BatchedStreamHandler, then: logging.Logger) -> list[str]:
    """Read the pipe until the handler's thread has written all it holds, log 'after'
    through ``then``, and return every line read."""
    chunks: list[bytes] = []
    os.set_blocking(r, False)

    def drain() -> None:
        while True:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    def wait_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, "the output's thread never got its lines out"
            drain()
            time.sleep(0.01)
        drain()

    wait_until(lambda: not handler.output.behind)
    then.info("after")  # (the pipe may still be full: then it goes through the thread too)
    wait_until(lambda: not handler.output.behind and b'"after"' in b"".join(chunks[-2:]))
    return b"".join(chunks).decode().splitlines()


def test_a_full_pipe_never_blocks_the_logging_call() -> None:
    """20,000 lines of ~150 bytes (3 MB) into a 64 KiB pipe nobody reads: every logging call
    returns (a plain handler blocked at the pipe's 64 KiB, for as long as nobody read).
    Once read, the lines that waited come out whole and in order, then one line (JSON, as
    the others) counting the ones dropped past the bound, then the next line logged."""
    with full_pipe_logger(most_bytes=256 * 1024) as (log, handler, r):
        def log_all() -> None:
            for i in range(20_000):
                log.warning("line %05d %s", i, "x" * 60)

        logging_thread = threading.Thread(target=log_all, daemon=True)
        logging_thread.start()
        logging_thread.join(30)
        blocked = logging_thread.is_alive()
        lines = read_everything(r, handler, log)
        logging_thread.join(30)
        assert not blocked, "a logging call waited for the pipe's reader"
        records = [json.loads(line) for line in lines]
        messages = [rec["message"] for rec in records]
        assert messages[-1] == "after"
        notice = records[-2]
        assert notice["level"] == "warning" and notice["logger"] == "asyncjobs.logs"
        kept = messages[:-2]
        assert kept == [f"line {i:05d} {'x' * 60}" for i in range(len(kept))]
        assert 64 * 1024 // 200 < len(kept) < 20_000
        assert notice["message"] == (f"{20_000 - len(kept)} log lines were dropped: the log "
                                     "output took nothing for a while")
        assert not handler.output.behind


def test_a_line_is_out_before_the_logging_call_returns_while_the_pipe_takes_it() -> None:
    """What a process killed right after a line was logged still shows: the line, written
    by the logging call itself while the stream takes text."""
    with full_pipe_logger(most_bytes=1024) as (log, handler, r):
        os.set_blocking(r, False)
        for i in range(3):
            log.info("line %d", i)
            assert json.loads(os.read(r, 65536))["message"] == f"line {i}"
        assert handler.output.dropped == 0 and not handler.output.behind


def test_a_long_line_goes_out_whole_from_the_thread() -> None:
    """A line longer than the pipe holds (a traceback) goes out whole: what the pipe takes
    at once, the rest from the thread, and the lines after it follow it there, in order."""
    with full_pipe_logger(most_bytes=1024 * 1024) as (log, handler, r):
        log.info("%s", "y" * 100_000)
        log.info("short")
        lines = read_everything(r, handler, log)
        assert [json.loads(line)["message"] for line in lines] == ["y" * 100_000, "short",
                                                                   "after"]


def test_a_worker_whose_output_nobody_reads_runs_its_jobs_and_stops(
        redis_server: RedisServer) -> None:
    """``asyncjobs worker`` with stdout and stderr on pipes nobody reads, logging two lines a
    job: it runs 3,000 jobs (~1 MB of lines; the old worker stopped at the pipe's 64 KiB,
    around the 200th job) and a SIGTERM stops it, exit 0, within its bound."""
    from asyncjobs._worker.shutdown import AFTER_GRACE_S

    prefix = f"t{secrets.token_hex(4)}"
    env = {**os.environ, "TEST_PREFIX": prefix, "ASYNCJOBS_REDIS_URL": redis_server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "worker", "tests.apps.basic:worker", "--grace",
         "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async def run_jobs() -> list[object]:
            async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
                jobs = await pool.enqueue_many([asyncjobs.call("add", i, i) for i in range(3000)])
                return [await job.result(timeout=60) for job in jobs]

        assert asyncio.run(run_jobs()) == [2 * i for i in range(3000)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(1 + AFTER_GRACE_S + 5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            pipe.close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_dropped_lines_notice_takes_the_log_s_format(fmt: str) -> None:
    """The notice is a line of the configured format (a JSON log stays JSON throughout)."""
    from asyncjobs._cli.logs import TextFormatter

    handler = BatchedStreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    try:
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        line = handler._dropped(7)
        assert line.endswith("\n") and line.count("\n") == 1
        if fmt == "json":
            assert json.loads(line)["message"].startswith("7 log lines were dropped")
        else:
            assert " WARNING asyncjobs.logs: 7 log lines were dropped" in line
    finally:
        handler.close()
        assert handler.stream is not None
        handler.stream.close()


def test_what_the_readme_says_of_a_full_output_is_so() -> None:
    from asyncjobs._cli import log_output, logs

    readme = " ".join((ROOT / "README.md").read_text().split())
    assert log_output.MOST_BYTES == 4 * 1024 * 1024
    with open(os.devnull, "w") as devnull:
        assert BatchedStreamHandler(devnull).output.most_bytes == log_output.MOST_BYTES
    assert "up to 4 MiB of lines wait there" in readme
    assert f"at exit, lines still waiting get {logs.EXIT_WAIT_S:g} s" in readme


def test_a_warning_never_blocks_on_a_full_output() -> None:
    """Python's warnings go through the log (logger ``py.warnings``): written by ``warnings``
    itself to a full stderr, one blocked the process (Python 3.12's warning at ``os.fork()``
    in a process with threads, for one)."""
    program = (
        "import logging, os, warnings\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "for i in range(2000):\n"
        "    logging.getLogger('asyncjobs.x').warning('line %05d %s', i, 'x' * 100)\n"
        "assert logging.getLogger().handlers[0].output.behind\n"
        "for i in range(100):\n"
        "    warnings.warn(f'warning {i} ' + 'w' * 2000, UserWarning, stacklevel=1)\n"
        "os.write(1, b'returned\\n')\n"
        "os._exit(0)\n")
    with python_program(program) as proc:
        assert first_line(proc, 30) == b"returned\n"
