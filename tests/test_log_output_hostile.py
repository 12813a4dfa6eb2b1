"""Hostile tests of ``log_output.Output`` and how ``BatchedStreamHandler`` drives it: many
threads into a pipe read in bursts, a reader that goes away, non-blocking and terminal
outputs, odd encodings, a fork while the output's thread is stuck, a process exiting on a
stderr nobody reads, signal handlers, ``setStream`` and ``close``.

A test marked xfail(strict) shows a defect (the reason says its cause); every other test pins
a guarantee a plausible broken implementation would lose."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from asyncjobs._cli import log_sink
from asyncjobs._cli.logs import EXIT_WAIT_S, BatchedStreamHandler

from .procs import ROOT, first_line, python_program

NOTICE = re.compile(r"(\d+) log lines were dropped: the log output took nothing for a while")


@contextmanager
def pipe_logger(most_bytes: int = 1 << 20, formatter: logging.Formatter | None = None,
                **open_args: object) -> Iterator[tuple[logging.Logger, BatchedStreamHandler,
                                                       int, int]]:
    """A logger writing ``%(message)s`` lines to a pipe (yielded: the reading end, not
    read, and the writing end)."""
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, closefd=False, **open_args)  # type: ignore[call-overload]  # noqa: SIM115
    handler = BatchedStreamHandler(stream, most_bytes=most_bytes)
    handler.setFormatter(formatter or logging.Formatter("%(message)s"))
    log = logging.getLogger(f"asyncjobs.test.hostile.{secrets.token_hex(4)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        yield log, handler, r, w
    finally:
        log.handlers.clear()
        drain(r, lambda: not handler.output.behind, timeout_s=10)  # let the thread go idle
        with contextlib.suppress(OSError, ValueError):
            stream.close()
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


def fill(w: int) -> None:
    """Fill the pipe of ``w`` to the last byte (then make ``w`` blocking again)."""
    os.set_blocking(w, False)
    for size in (65536, 4096, 1):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"#" * size)
    os.set_blocking(w, True)


def drain(r: int, done: Callable[[], bool], timeout_s: float = 30, pause_s: float = 0.0,
          chunk: int = 65536) -> bytes:
    """Read ``r`` (non-blocking) until ``done()`` and nothing is left, or EOF."""
    with contextlib.suppress(OSError):
        os.set_blocking(r, False)
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            data = os.read(r, chunk)
        except BlockingIOError:
            if done():
                with contextlib.suppress(BlockingIOError):
                    out.append(os.read(r, 1 << 20))
                return b"".join(out)
            if time.monotonic() > deadline:
                return b"".join(out)
            time.sleep(0.005)
            continue
        except OSError:
            return b"".join(out)
        if not data:
            return b"".join(out)
        out.append(data)
        if pause_s:
            time.sleep(pause_s)


def text_lines(data: bytes) -> list[str]:
    lines = (line.lstrip("#") for line in data.decode("utf-8", "replace").split("\n"))
    return [line for line in lines if line]


def notices(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := NOTICE.search(line))]


class Numbered(logging.Formatter):
    """``<n> <message>``: n counts the records formatted (under the handler's lock, so in
    the order the logging calls took it); the dropped-lines notice gets no number."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "asyncjobs.logs":
            return "- " + record.getMessage()
        self.n += 1
        return f"{self.n - 1} {record.getMessage()}"


def record(msg: str) -> logging.LogRecord:
    """A WARNING record of ``msg`` (written at once, as any line but a job's end)."""
    return logging.makeLogRecord({"msg": msg, "levelno": logging.WARNING,
                                  "levelname": "WARNING", "name": "asyncjobs.test.hostile"})


def check_numbered(lines: list[str], logged: int) -> tuple[int, int]:
    """Lines in order, none twice, each gap told by a notice right where it is, and lines
    read plus lines told dropped == ``logged``: (lines read, notices)."""
    previous, told, kept, seen = -1, 0, 0, 0
    for line in lines:
        if line.startswith("- "):
            assert told == 0, "two notices in a row"
            [told] = notices([line])
            seen += 1
            continue
        n = int(line.split(" ", 1)[0])
        assert n > previous, f"line {n} after line {previous}"
        assert n - previous - 1 == told, f"{n - previous - 1} lines missing before {n}, " \
                                         f"{told} told"
        previous, told, kept = n, 0, kept + 1
    assert told == 0
    assert previous == logged - 1, "the last line is missing"
    return kept, seen


# ---------------------------------------------------------------------------------------
# Defects


@pytest.mark.timeout(60)
def test_a_dropped_notice_keeps_the_count_it_carries() -> None:
    """most_bytes=0 on a full pipe: every line is dropped; the notice, once the pipe takes
    text, must say how many (10), not 2."""
    with pipe_logger(most_bytes=0) as (log, handler, r, w):
        fill(w)
        for i in range(10):
            log.warning("line %d", i)
        drain(r, lambda: not handler.output.behind)
        log.warning("after")
        lines = text_lines(drain(r, lambda: True))
        assert notices(lines) == [10]


@pytest.mark.timeout(60)
def test_a_long_line_after_a_drop_does_not_swallow_the_count() -> None:
    with pipe_logger(most_bytes=16 * 1024) as (log, handler, r, w):
        fill(w)
        for i in range(500):
            log.warning("line %d %s", i, "y" * 60)
        kept = text_lines(drain(r, lambda: not handler.output.behind))
        dropped = 500 - len(kept)
        assert dropped > 100
        fill(w)
        log.warning("%s", "L" * 20_000)  # longer than most_bytes: dropped too, with the notice
        log.warning("after")
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        assert notices(lines) == [dropped + 1]


@pytest.mark.timeout(60)
def test_a_notice_the_formatter_cannot_write_does_not_silence_the_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A formatter needing a field a handler filter adds (``%(request_id)s``) cannot format
    the notice record: that one line may be lost, not every line after it."""

    class NeedsField(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if not hasattr(record, "request_id"):
                raise ValueError("Formatting field not found in record: 'request_id'")
            return super().format(record)

    def add_field(record: logging.LogRecord) -> bool:
        record.request_id = "r1"
        return True

    with pipe_logger(most_bytes=1000, formatter=NeedsField("%(message)s")) as (
            log, handler, r, w):
        errors: list[logging.LogRecord] = []
        monkeypatch.setattr(handler, "handleError", errors.append)
        handler.addFilter(add_field)
        fill(w)
        for i in range(50):
            log.warning("line %d %s", i, "y" * 50)
        drain(r, lambda: not handler.output.behind)
        for i in range(3):
            log.warning("later %d", i)
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        assert "later 2" in lines
        assert len(errors) <= 1


@pytest.mark.timeout(60)
def test_set_stream_keeps_the_count_of_dropped_lines() -> None:
    with pipe_logger(most_bytes=1000) as (log, handler, r, w):
        fill(w)
        for i in range(50):
            log.warning("line %d %s", i, "y" * 50)
        old = handler.output
        assert old.dropped > 0
        new = io.StringIO()
        handler.setStream(new)
        on_old = text_lines(drain(r, lambda: not old.behind))
        log.warning("after")
        told = notices(on_old) + notices(new.getvalue().splitlines())
        assert told == [50 - len([x for x in on_old if x.startswith("line")])]


@pytest.mark.timeout(60)
def test_close_tells_the_dropped_count_once_the_thread_is_done() -> None:
    """At exit (logging.shutdown: flush, close) a reader catching up gets the waiting lines
    within EXIT_WAIT_S; the count of those dropped must follow them."""
    with pipe_logger(most_bytes=1000) as (log, handler, r, w):
        fill(w)
        for i in range(50):
            log.warning("line %d %s", i, "y" * 50)
        got: list[bytes] = []

        def reader() -> None:
            time.sleep(0.2)  # close() is waiting by now
            got.append(drain(r, lambda: not handler.output.behind, timeout_s=5))

        thread = threading.Thread(target=reader)
        thread.start()
        handler.flush()
        handler.close()
        thread.join(10)
        got.append(drain(r, lambda: True))
        lines = text_lines(b"".join(got))
        assert notices(lines) == [50 - len([x for x in lines if x.startswith("line")])]


@pytest.mark.timeout(60)
def test_a_logging_error_never_blocks_on_a_full_stderr() -> None:
    """A task's bad logging call (``log.info('%d', 'x')``) while stderr is a full pipe:
    the call must return (the event loop must not wait for the reader)."""
    program = (
        "import logging, os, threading\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "log = logging.getLogger('asyncjobs.x')\n"
        "for i in range(3000):\n"
        "    log.warning('line %d %s', i, 'x' * 100)\n"
        # poll says full once the pipe's last page is taken, which may have room left: fill it
        "os.set_blocking(2, False)\n"
        "try:\n"
        "    while True:\n"
        "        os.write(2, b'#')\n"
        "except BlockingIOError:\n"
        "    os.set_blocking(2, True)\n"
        "done = threading.Event()\n"
        "def bad():\n"
        "    log.warning('a bad call %d', 'not a number')\n"
        "    done.set()\n"
        "threading.Thread(target=bad, daemon=True).start()\n"
        "os.write(1, b'returned\\n' if done.wait(3) else b'blocked\\n')\n"
        "os._exit(0)\n")
    assert run_reading_stdout_only(program) == "returned"


@pytest.mark.timeout(60)
def test_a_non_blocking_descriptor_loses_no_line_silently() -> None:
    """A stderr left O_NONBLOCK by another process on the pipe (node, some runtimes): a
    traceback-sized line goes through the thread; it must come out whole, or be counted."""
    with pipe_logger() as (log, handler, r, w):
        os.set_blocking(w, False)
        got: list[bytes] = []

        def reader() -> None:
            time.sleep(0.3)
            got.append(drain(r, lambda: not handler.output.behind, timeout_s=10))

        thread = threading.Thread(target=reader)
        thread.start()
        log.warning("%s", "z" * 200_000)
        log.warning("next")
        thread.join(20)
        lines = text_lines(b"".join(got))
        assert lines == ["z" * 200_000, "next"] or notices(lines)


@pytest.mark.timeout(60)
def test_a_namereplace_stream_never_blocks_the_logging_call() -> None:
    char = "\ufdfb"  # 'ARABIC LIGATURE JALLAJALOUHOU': 35 bytes as \N{...}
    with pipe_logger(encoding="ascii", errors="namereplace") as (log, handler, r, w):
        fill(w)
        os.read(r, 8192)  # room for 8 KiB: poll says the pipe takes text
        returned = threading.Event()

        def call() -> None:
            log.warning("%s", char * 300)  # 301 characters, 10.5 KB
            returned.set()

        threading.Thread(target=call, daemon=True).start()
        blocked = not returned.wait(3)
        drain(r, lambda: returned.is_set() and not handler.output.behind)
        assert not blocked, "the logging call waited for the pipe's reader"


@pytest.mark.timeout(60)
def test_a_bom_encoding_writes_one_bom() -> None:
    with pipe_logger(encoding="utf-8-sig") as (log, handler, r, _):
        log.warning("first")
        log.warning("%s", "L" * 10_000)  # through the thread
        log.warning("last")
        data = drain(r, lambda: not handler.output.behind)
        assert data.count(b"\xef\xbb\xbf") <= 1


@pytest.mark.timeout(60)
def test_the_thread_never_writes_to_a_descriptor_reused_after_set_stream() -> None:
    """``old = handler.setStream(new); old.close()`` (reopening a log) while the thread
    still holds lines: the number of the closed descriptor is soon another file's."""
    r, w = os.pipe()
    stream = open(w, "w", buffering=1)  # noqa: SIM115  # closed below
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    victim = tempfile.TemporaryFile()  # noqa: SIM115
    try:
        handler.handle(record("B" * 200_000))  # the thread, blocked
        old = handler.output
        deadline = time.monotonic() + 10
        while not old._sink.writing:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for i in range(5):
            handler.handle(record(f"queued {i}"))
        handler.setStream(io.StringIO())
        stream.close()
        os.dup2(victim.fileno(), w)  # the number is another file's now
        drain(r, lambda: not old.behind)
        victim.seek(0)
        assert victim.read() == b""
    finally:
        victim.close()
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.mark.timeout(60)
def test_a_terminal_nobody_reads_never_blocks_the_logging_call() -> None:
    master, slave = os.openpty()
    stream = open(slave, "w", buffering=1)  # noqa: SIM115  # closed below
    handler = BatchedStreamHandler(stream, most_bytes=100_000)
    handler.setFormatter(logging.Formatter("%(message)s"))
    done = threading.Event()

    def log_all() -> None:
        for i in range(2000):
            handler.handle(record(f"line {i:05d} {'q' * 300}"))
        done.set()

    thread = threading.Thread(target=log_all, daemon=True)
    try:
        thread.start()
        blocked = not done.wait(3)
        drain(master, lambda: done.is_set() and not handler.output.behind)
        assert not blocked, "a logging call waited for the terminal's reader"
    finally:
        drain(master, lambda: done.is_set() and not handler.output.behind, timeout_s=10)
        with contextlib.suppress(OSError):
            stream.close()
        os.close(master)


@pytest.mark.timeout(60)
def test_a_process_whose_terminal_is_never_read_exits() -> None:
    """It exits, with status 0 (its bound after the last line is
    ``test_a_process_whose_stderr_is_never_read_exits_in_its_bound``'s). The program takes
    2.3 s alone here and took over 8 s in a clean-clone run with six test processes on two
    cores: the wait only tells a hang apart."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-c", EXIT_PROGRAM % "main"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        try:
            assert proc.wait(40) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()
    finally:
        os.close(master)


@pytest.mark.timeout(60)
def test_a_signal_handler_that_logs_does_not_deadlock() -> None:
    """A ``signal.signal`` handler logging ("got SIGTERM") while the main thread is inside
    the output's locked section: logging's own lock is an RLock for this; a plain
    StreamHandler at worst reports a 'reentrant call' error. The signal is raised from
    within ``_queue`` to land there every time (with a timer firing every 0.5 ms the
    same program dies of a RecursionError of nested handlers, each blocked on the lock)."""
    program = (
        "import logging, os, signal\n"
        "from asyncjobs._cli.logs import configure\n"
        "from asyncjobs._cli import log_output\n"
        "configure('INFO')\n"
        "log = logging.getLogger('asyncjobs.sig')\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: log.warning('from the signal handler'))\n"
        "for i in range(3000):\n"
        "    log.warning('line %d %s', i, 'x' * 100)\n"
        "real = log_output.Output._queue\n"
        "fired = []\n"
        "def queue(self, data, lines):\n"
        "    if not fired:\n"
        "        fired.append(1)\n"
        "        signal.raise_signal(signal.SIGUSR1)  # a signal arrives now, once\n"
        "    return real(self, data, lines)\n"
        "log_output.Output._queue = queue\n"
        "log.warning('the line the signal interrupts')\n"
        "os.write(1, b'returned\\n')\n"
        "os._exit(0)\n")
    assert run_reading_stdout_only(program, wait_s=5) == "returned"


def run_reading_stdout_only(program: str, wait_s: float = 20) -> str:
    """Run ``program`` with stderr a pipe nobody reads; its first stdout line, or 'hung'."""
    with python_program(program) as proc:
        line = first_line(proc, wait_s)
        return line.decode().strip() if line is not None else "hung"


# ---------------------------------------------------------------------------------------
# What held


@pytest.mark.timeout(60)
def test_many_threads_into_a_pipe_read_in_bursts_lose_nothing_uncounted() -> None:
    """4 threads, 20,000 lines, a reader that stalls then reads in bursts, a small bound:
    the lines come out in the order the logging calls took the handler, none twice, each
    gap told by a notice in its place, and lines read + lines told dropped == lines logged."""
    formatter = Numbered()
    with pipe_logger(most_bytes=32 * 1024, formatter=formatter) as (log, handler, r, _):
        got: list[bytes] = []
        stop = threading.Event()

        def reader() -> None:
            time.sleep(0.1)
            while not stop.is_set():
                got.append(drain(r, lambda: True, chunk=32 * 1024, pause_s=0.01))
                time.sleep(0.01)

        def log_all(k: int) -> None:
            for i in range(5000):
                log.info("t%d-%d %s", k, i, "p" * (20 + (i * 7919) % 150))

        reading = threading.Thread(target=reader)
        reading.start()
        threads = [threading.Thread(target=log_all, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stop.set()
        reading.join(30)
        got.append(drain(r, lambda: not handler.output.behind))
        log.info("after")
        got.append(drain(r, lambda: not handler.output.behind))
        lines = text_lines(b"".join(got))
        kept, told = check_numbered(lines, 20_001)
        assert told >= 1 and kept > 1000
        per_thread: dict[str, list[int]] = {}
        for line in lines:
            if m := re.match(r"\d+ t(\d)-(\d+) ", line):
                per_thread.setdefault(m.group(1), []).append(int(m.group(2)))
        assert all(v == sorted(set(v)) for v in per_thread.values())


@pytest.mark.timeout(60)
def test_flips_between_direct_and_thread_keep_every_line_in_order() -> None:
    """No bound reached, 3 threads, a reader in bursts, every 40th line long: the output
    goes from direct writes to the thread and back, and every line comes out once, in
    order. The flip is made sure of, whatever the machine's load: the reader reads nothing
    until each writer has logged half its lines (the pipe long full, the output behind),
    then drains it while they wait, and they go on once it writes directly again."""
    formatter = Numbered()
    with pipe_logger(most_bytes=64 << 20, formatter=formatter) as (log, handler, r, _):
        got: list[bytes] = []
        stop = threading.Event()
        flips = [0]
        halfway = threading.Barrier(4, timeout=30)  # the three writers and the reader
        caught_up = threading.Event()

        def reader() -> None:
            halfway.wait()
            got.append(drain(r, lambda: not handler.output.behind))
            caught_up.set()
            while not stop.is_set():
                got.append(drain(r, lambda: True, chunk=16 * 1024))
                time.sleep(0.003)

        def log_all(k: int) -> None:
            was_behind = False
            for i in range(4000):
                if i == 2000:
                    halfway.wait()
                    assert caught_up.wait(30)
                behind = handler.output.behind
                flips[0] += was_behind and not behind
                was_behind = behind
                log.info("t%d-%d %s", k, i, "f" * (9000 if i % 40 == 0 else 30 + i % 90))

        reading = threading.Thread(target=reader)
        reading.start()
        threads = [threading.Thread(target=log_all, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stop.set()
        reading.join(30)
        got.append(drain(r, lambda: not handler.output.behind))
        lines = text_lines(b"".join(got))
        assert check_numbered(lines, 12_000) == (12_000, 0)
        assert flips[0] >= 1  # (the reader lets the pipe fill now and then)


@pytest.mark.timeout(60)
def test_a_reader_that_goes_away_costs_one_error_a_line_and_no_spin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader closes the pipe while the thread is stuck on it: the thread's write fails
    (EPIPE: Python ignores SIGPIPE), it goes idle, and each later line is at most one
    logging error, none of them blocking."""
    with pipe_logger() as (log, handler, r, w):
        errors: list[logging.LogRecord] = []
        monkeypatch.setattr(handler, "handleError", errors.append)
        fill(w)
        for i in range(200):
            log.warning("line %d %s", i, "x" * 100)
        assert handler.output.behind
        os.close(r)
        deadline = time.monotonic() + 10
        while handler.output.behind:
            assert time.monotonic() < deadline, "the thread is stuck on a pipe without reader"
            time.sleep(0.01)
        done = threading.Event()

        def more() -> None:
            for i in range(100):
                log.warning("more %d", i)
            done.set()

        threading.Thread(target=more, daemon=True).start()
        assert done.wait(10)
        assert len(errors) <= 100
        assert not handler.output.behind
        thread = handler.output._sink.thread  # type: ignore[union-attr]
        assert thread is not None and thread.is_alive()  # idle, waiting for text


@pytest.mark.timeout(60)
def test_a_process_whose_stderr_reader_goes_away_exits() -> None:
    program = (
        "import logging, os\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "for i in range(20000):\n"
        "    logging.getLogger('asyncjobs.x').warning('line %d %s', i, 'x' * 100)\n"
        "os.write(1, b'logged\\n')\n")
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    time.sleep(0.3)
    proc.stderr.close()
    try:
        assert proc.wait(30) == 0
        assert proc.stdout.read() == b"logged\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


EXIT_PROGRAM = (
    "import logging, os, sys, threading\n"
    "from asyncjobs._cli.logs import configure\n"
    "configure('INFO')\n"
    "log = logging.getLogger('asyncjobs.exit')\n"
    "if '%s' == 'daemon':\n"
    "    def spam():\n"
    "        while True:\n"
    "            log.info('from a daemon thread %%s', 'd' * 100)\n"
    "    threading.Thread(target=spam, daemon=True).start()\n"
    "for i in range(40000):\n"
    "    log.info('line %%d %%s \\udcff \\U0001f600', i, 'x' * (20 + i %% 300))\n"
    "os.write(1, b'logged\\n')\n"
    "sys.exit(0)\n")


@pytest.mark.parametrize("mode", ["main", "daemon"])
@pytest.mark.timeout(60)
def test_a_process_whose_stderr_is_never_read_exits_in_its_bound(mode: str) -> None:
    """Some 7 MB logged to a stderr pipe nobody ever reads (and, in 'daemon', a daemon thread
    still logging at exit): exit 0 within EXIT_WAIT_S and a margin after the last line, no
    'Fatal Python error: _enter_buffered_busy'."""
    proc = subprocess.Popen([sys.executable, "-c", EXIT_PROGRAM % mode], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 40)
        assert ready and proc.stdout.readline() == b"logged\n"
        start = time.monotonic()
        assert proc.wait(EXIT_WAIT_S + 10) == 0
        assert time.monotonic() - start < EXIT_WAIT_S + 5
        assert b"Fatal Python error" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.timeout(60)
def test_a_child_forked_while_the_thread_is_stuck_logs_and_exits() -> None:
    """A fork while the parent's thread is blocked on the full pipe with lines waiting: the
    child has a working output of its own (its line is written once the pipe is read),
    exits within its bound, and never writes its parent's lines."""
    program = (
        "import logging, os, sys, time\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "log = logging.getLogger('asyncjobs.x')\n"
        "for i in range(3000):\n"
        "    log.warning('parent %05d %s', i, 'x' * 100)\n"
        "h = logging.getLogger().handlers[0]\n"
        "assert h.output.behind\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    log.warning('child line')\n"
        "    for i in range(10000):\n"
        "        log.info('child %05d', i)\n"
        "    logging.shutdown()\n"
        "    os._exit(0)\n"
        "start = time.monotonic()\n"
        "_, status = os.waitpid(pid, 0)\n"
        "os.write(1, b'%d %.2f\\n' % (status, time.monotonic() - start))\n"
        "log.warning('parent done')\n"
        "h.output.wait(30)  # (the test reads now: EXIT_WAIT_S alone may not do, on a busy box)\n")
    with python_program(program) as proc:
        line = first_line(proc, 30)
        assert line is not None and proc.stderr is not None
        status, took = line.split()
        assert int(status) == 0
        assert float(took) < EXIT_WAIT_S + 5
        err = proc.stderr.read().decode()
        assert proc.wait(30) == 0
    messages = [line.split(": ", 1)[1] for line in err.splitlines() if ": " in line]
    parent = [m for m in messages if m.startswith("parent ")]
    assert parent == sorted(set(parent))  # in order, none twice (the child wrote none)
    assert parent[0] == f"parent 00000 {'x' * 100}" and messages[-1] == "parent done"
    assert messages.count("child line") <= 1
    child = [m for m in messages if m.startswith("child 0")]
    assert child == sorted(set(child))


@pytest.mark.timeout(60)
def test_surrogates_and_astral_characters_are_sized_by_their_bytes() -> None:
    """An ASCII stream writes an astral character as 10 bytes and a lone surrogate as 6
    (backslashreplace): with one page free, a 1,000-character line (10 KB) must go to the
    thread, not block the call; every line comes out as the stream's encoder writes it."""
    messages = ["\U0001f600" * 1000, "\udcff\udc80 \x00 \u00e9" * 100, "\U0001f600" * 200]
    with pipe_logger(encoding="ascii", errors="backslashreplace") as (log, handler, r, w):
        fill(w)
        os.read(r, 4096)  # one page free: poll says the pipe takes text
        returned = threading.Event()

        def call() -> None:
            for m in messages:
                log.warning("%s", m)
            returned.set()

        threading.Thread(target=call, daemon=True).start()
        blocked = not returned.wait(5)
        data = drain(r, lambda: returned.is_set() and not handler.output.behind)
        assert not blocked, "the logging call waited for the pipe's reader"
        want = "".join(m + "\n" for m in messages).encode("ascii", "backslashreplace")
        assert data.lstrip(b"#") == want


@pytest.mark.timeout(60)
def test_a_line_longer_than_the_bound_is_dropped_whole_and_counted() -> None:
    """A line the full pipe does not take and the bound cannot hold is dropped whole (never
    a part of it), and counted."""
    with pipe_logger(most_bytes=1000) as (log, handler, r, w):
        log.warning("before")
        fill(w)
        log.warning("%s", "L" * 5000)
        log.warning("next")
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        assert lines[0] == "before" and lines[2] == "next"
        assert notices(lines[1:2]) == [1]
        assert len(lines) == 3


@pytest.mark.timeout(60)
def test_set_stream_sends_the_waiting_lines_to_the_old_stream_in_order() -> None:
    with pipe_logger() as (log, handler, r, w):
        fill(w)
        for i in range(500):
            log.warning("old %03d %s", i, "o" * 100)
        old = handler.output
        r2, w2 = os.pipe()
        new = open(w2, "w", buffering=1)  # noqa: SIM115
        try:
            assert handler.setStream(new) is not None
            for i in range(5):
                log.warning("new %d", i)
            on_new = text_lines(drain(r2, lambda: not handler.output.behind))
            on_old = text_lines(drain(r, lambda: not old.behind))
        finally:
            new.close()
            os.close(r2)
        assert on_old == [f"old {i:03d} {'o' * 100}" for i in range(500)]
        assert on_new == [f"new {i}" for i in range(5)]


@pytest.mark.timeout(60)
def test_close_twice_with_lines_waiting_returns_and_logging_after_close_still_writes() -> None:
    with pipe_logger() as (log, handler, r, w):
        fill(w)
        for i in range(100):
            log.warning("line %d %s", i, "x" * 100)
        handler.close()
        handler.close()
        log.warning("after close")
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        assert lines[-1] == "after close" and len(lines) == 101


def test_a_regular_file_costs_no_poll_or_fstat_a_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """The lock-free path adds no system call a line for a regular file (one write, as
    logging.StreamHandler), and at most one poll a line for a pipe."""
    counts = {"poll": 0, "fstat": 0}
    real_poll, real_fstat = select.poll, os.fstat

    class CountingPoll:
        def __init__(self) -> None:
            self._poll = real_poll()

        def register(self, *args: int) -> None:
            self._poll.register(*args)

        def poll(self, *args: float) -> list[tuple[int, int]]:
            counts["poll"] += 1
            return self._poll.poll(*args)

    def fstat(fd: int) -> os.stat_result:
        counts["fstat"] += 1
        return real_fstat(fd)

    monkeypatch.setattr(log_sink.select, "poll", CountingPoll)
    monkeypatch.setattr(log_sink.os, "fstat", fstat)
    path = os.path.join(str(tmp_path), "log.txt")
    with open(path, "w") as stream:
        handler = BatchedStreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        counts.update(poll=0, fstat=0)
        for i in range(1000):
            handler.handle(record(f"line {i}"))
        assert counts == {"poll": 0, "fstat": 0}
    with open(path) as f:
        assert f.read().splitlines() == [f"line {i}" for i in range(1000)]
    with pipe_logger() as (log, handler, r, _):
        counts.update(poll=0, fstat=0)
        for i in range(1000):
            log.warning("line %d", i)
            drain(r, lambda: True)
        assert counts["poll"] <= 1000 and counts["fstat"] == 0


def test_a_stream_without_a_descriptor_gets_what_a_stream_handler_writes() -> None:
    records = [record(m) for m in ["a", "\udcff\U0001f600", "x" * 100_000, "multi\nline", ""]]
    ours, theirs = io.StringIO(), io.StringIO()
    handler, plain = BatchedStreamHandler(ours, most_bytes=0), logging.StreamHandler(theirs)
    for h in (handler, plain):
        h.setFormatter(logging.Formatter("%(message)s"))
        for each in records:
            h.handle(each)
    assert ours.getvalue() == theirs.getvalue()
    assert handler.output.dropped == 0
