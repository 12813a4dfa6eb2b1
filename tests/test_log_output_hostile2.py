"""Second hostile review of ``log_output.Output`` (the non-blocking-descriptor design) and of
how ``BatchedStreamHandler`` drives it: descriptor and thread leaks, an output collected or
closed while its thread writes, a signal handler logging inside a logging call (made to land
at one chosen line by a trace hook: a signal handler runs between any two bytecodes of the
main thread), a stream the process cannot open again, a thread that cannot start, other
outputs on the same pipe, exit with lines batched, sockets, FIFOs, terminals, /dev/null,
a shared O_APPEND file, fork, and the system calls a line costs.

The tests under "Defects" each found one (all fixed since: they pin the fix); every other
test pins a guarantee a plausible broken implementation would lose."""

from __future__ import annotations

import contextlib
import gc
import inspect
import io
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from asyncjobs._cli import log_output, log_sink, logs
from asyncjobs._cli.logs import EXIT_WAIT_S, BatchedStreamHandler

from .procs import ROOT, first_line, python_program
from .test_log_output_hostile import (
    Numbered,
    check_numbered,
    drain,
    fill,
    notices,
    pipe_logger,
    record,
    text_lines,
)

OWN_THREAD = "asyncjobs-log-output"


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def output_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == OWN_THREAD]


def wait_until(done: Callable[[], bool], timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@contextlib.contextmanager
def at_line(func: Callable[..., Any], marker: str,
            action: Callable[[], None]) -> Iterator[list[int]]:
    """Run ``action()`` once, in this thread, when ``func`` reaches the first line holding
    ``marker``: what a signal handler running there (between two bytecodes) would do."""
    code = func.__code__
    source, start = inspect.getsourcelines(func)
    lineno = start + next(i for i, line in enumerate(source) if marker in line)
    fired: list[int] = []

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == lineno and not fired:
            fired.append(1)
            action()
        return local

    def glob(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is code else None

    previous = sys.gettrace()
    sys.settrace(glob)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def run(program: str, timeout_s: float = 30, **popen: Any) -> tuple[int | str, bytes, float]:
    """Run ``program``: (exit status or 'hung', stdout, seconds), stderr as ``popen`` says
    (default: a pipe nobody reads)."""
    with python_program(program, **popen) as proc:
        start = time.monotonic()
        try:
            status: int | str = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            status = "hung"
            proc.kill()
            proc.wait(10)
        took = time.monotonic() - start
        assert proc.stdout is not None
        return status, proc.stdout.read(), took


FILL_FD2 = (
    "def fill2():\n"
    "    os.set_blocking(2, False)\n"
    "    for size in (65536, 4096, 1):\n"
    "        try:\n"
    "            while True:\n"
    "                os.write(2, b'#' * size)\n"
    "        except BlockingIOError:\n"
    "            pass\n"
    "    os.set_blocking(2, True)\n")


# ---------------------------------------------------------------------------------------
# Defects


@pytest.mark.timeout(60)
def test_exit_with_job_end_lines_batched_on_a_full_pipe_exits_in_its_bound() -> None:
    """A worker's last job end lines wait in the batch (the loop ended before the 50 ms
    timer) and the reader has just stopped reading (the pipe is full, nothing waits for the
    thread): at exit ``logging.shutdown`` flushes them; the process must exit within
    EXIT_WAIT_S and a margin."""
    program = (
        "import asyncio, logging, os, sys\n"
        "from asyncjobs._cli.logs import configure, JOB_END_LOGGER\n"
        + FILL_FD2 +
        "configure('INFO')\n"
        "logging.getLogger('asyncjobs.x').warning('started')\n"
        "async def main():\n"
        "    logging.getLogger(JOB_END_LOGGER).info('job end line, batched')\n"
        "asyncio.run(main())\n"
        "h = logging.getLogger().handlers[0]\n"
        "assert h._waiting and not h.output.behind\n"
        "fill2()\n"
        "os.write(1, b'exiting\\n')\n"
        "sys.exit(0)\n")
    status, out, took = run(program, timeout_s=EXIT_WAIT_S + 10)
    assert out == b"exiting\n"
    assert status == 0 and took < EXIT_WAIT_S + 8


@pytest.mark.timeout(60)
def test_logging_after_close_never_blocks_on_a_full_pipe() -> None:
    """``logging.shutdown`` closed the handler (nothing waited), and a daemon thread still
    logs while the pipe is full: the call must return (a blocked daemon thread holding the
    stderr buffer's lock ends the interpreter with 'Fatal Python error:
    _enter_buffered_busy')."""
    with pipe_logger() as (log, handler, r, w):
        log.warning("before close")
        handler.close()
        fill(w)
        returned = threading.Event()

        def late() -> None:
            log.warning("from a daemon thread after close")
            returned.set()

        threading.Thread(target=late, daemon=True).start()
        blocked = not returned.wait(3)
        drain(r, returned.is_set)  # unblocks it, if it is blocked
        assert not blocked, "a logging call after close() waited for the pipe's reader"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@pytest.mark.timeout(60)
def test_a_pipe_made_by_another_user_gets_each_line_out_when_the_call_returns() -> None:
    """A container whose runtime made the stdio pipes as root and runs the worker as another
    user (Dockerfile USER, gosu): while the pipe takes text, each line must be out when the
    logging call returns (a process killed right after still shows it). Here the thread is
    made slow, so a line it writes is not out yet."""
    program = (
        "import ctypes, logging, os, select, time\n"
        "from asyncjobs._cli import log_output, log_sink\n"
        "from asyncjobs._cli.logs import BatchedStreamHandler\n"
        "r, w = os.pipe()\n"
        "os.setgid(65534)\n"
        "os.setuid(65534)\n"
        "ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, as after an exec\n"
        "real = log_sink._write_all\n"
        "def slow(fd, data):\n"
        "    time.sleep(1)\n"
        "    real(fd, data)\n"
        "log_sink._write_all = slow\n"
        "stream = open(w, 'w', buffering=1, closefd=False)\n"
        "h = BatchedStreamHandler(stream)\n"
        "h.setFormatter(logging.Formatter('%(message)s'))\n"
        "h.handle(logging.makeLogRecord({'msg': 'a line', 'levelno': 30}))\n"
        "ready, _, _ = select.select([r], [], [], 0)\n"
        "os.write(1, b'out\\n' if ready else b'not out\\n')\n"
        "h.output.wait(5)\n"
        "os._exit(0)\n")
    status, out, _ = run(program)
    assert status == 0
    assert out == b"out\n"


@pytest.mark.timeout(60)
def test_a_write_racing_the_thread_s_release_never_writes_to_a_reused_descriptor() -> None:
    """close() while the thread writes (at exit: ``handler.close()`` returns after
    EXIT_WAIT_S), a daemon thread logs; between its check of ``sink.closed`` and the lock,
    the thread finishes and closes the descriptors, and their numbers are reused by a file.
    The line must go to the pipe (or through the stream), never into that file."""
    with pipe_logger() as (log, handler, r, w):
        fill(w)
        log.warning("%s", "B" * 100_000)
        out = handler.output
        sink = out._sink
        assert sink is not None and sink.attempt is not None
        numbers = (sink.fd, sink.attempt.fd)
        out.close()  # closing: the thread closes the descriptors when done
        victim = tempfile.TemporaryFile()  # noqa: SIM115  # closed below
        got: list[bytes] = []

        def thread_finishes_and_numbers_are_reused() -> None:
            got.append(drain(r, lambda: sink.closed))
            for number in numbers:  # the next files opened get these numbers
                os.dup2(victim.fileno(), number)

        try:
            with at_line(log_output.Output.write, "with sink.changed:",
                         thread_finishes_and_numbers_are_reused) as fired:
                log.warning("the racing line")
            assert fired
            got.append(drain(r, lambda: True))
            victim.seek(0)
            leaked = victim.read()
        finally:
            for number in numbers:
                with contextlib.suppress(OSError):
                    os.close(number)
            victim.close()
        assert leaked == b"", "a log line was written into another file"
        assert text_lines(b"".join(got)) == ["B" * 100_000, "the racing line"]


@pytest.mark.timeout(60)
def test_a_signal_handler_logging_inside_write_writes_no_line_twice() -> None:
    """A signal handler that logs ('got SIGTERM') runs in ``_write`` as it hands the waiting
    lines to the output: every line must come out once."""
    with pipe_logger() as (log, handler, r, _):
        with at_line(BatchedStreamHandler._write, 'self.output.write("".join(waiting))',
                     lambda: log.warning("from the signal handler")) as fired:
            log.warning("the interrupted line")
        assert fired
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        assert sorted(lines) == ["from the signal handler", "the interrupted line"]


@pytest.mark.timeout(60)
def test_a_signal_handler_logging_after_a_partial_write_does_not_tear_the_line() -> None:
    """The pipe takes 8 KiB of a 20 KB line, and a signal handler logs right after that
    write returns: its line must not land inside the interrupted one."""
    with pipe_logger() as (log, handler, r, w):
        fill(w)
        os.read(r, 8192)
        with at_line(log_output.Output._write_to, "if done == 0:",
                     lambda: log.warning("from the signal handler")) as fired:
            log.warning("%s", "T" * 20_000)
        assert fired
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        assert sorted(lines) == ["T" * 20_000, "from the signal handler"]


@pytest.mark.timeout(60)
def test_a_line_the_pipe_took_part_of_is_never_cut_by_the_bound() -> None:
    """With one page free, a line longer than the bound: the pipe takes 4 KiB of it at once
    and the rest cannot wait. The output must never show part of a line (a JSON log would
    get a broken object, with the notice glued to it)."""
    with pipe_logger(most_bytes=1000) as (log, handler, r, w):
        fill(w)
        os.read(r, 4096)
        log.warning("%s", "L" * 10_000)
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        log.warning("after")
        lines += text_lines(drain(r, lambda: not handler.output.behind))
        assert all(line == "L" * 10_000 or "L" not in line for line in lines), \
            [line[:40] + "..." + line[-60:] for line in lines]


@pytest.mark.timeout(60)
def test_what_waits_for_the_thread_is_bounded_by_most_bytes() -> None:
    """README: 'up to 4 MiB of lines wait there'. A full pipe; one line the thread has
    taken and is stuck on, then many more: what waits in all (read once the reader reads,
    the notice aside) must stay within ``most_bytes``."""
    most = 100_000
    with pipe_logger(most_bytes=most) as (log, handler, r, w):
        fill(w)
        log.warning("%s", "A" * 90_000)
        sink = handler.output._sink
        assert sink is not None
        assert wait_until(lambda: sink.writing and not sink.waiting)
        for i in range(200):
            log.warning("line %03d %s", i, "b" * 990)
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        log.warning("after")
        lines += text_lines(drain(r, lambda: not handler.output.behind))
        held = sum(len(line) + 1 for line in lines if not notices([line]) and line != "after")
        assert notices(lines)
        assert held <= most, f"{held} bytes waited for a bound of {most}"


@pytest.mark.timeout(60)
def test_a_thread_that_cannot_start_does_not_silence_the_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """'can't start new thread' (a container's pids limit, a thread limit) once, when the
    pipe was full: that line is dropped and counted (no logging error); once the reader
    reads, the notice and later lines come out."""
    real_start = threading.Thread.start
    failed: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name == OWN_THREAD and not failed:
            failed.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    with pipe_logger() as (log, handler, r, w):
        errors: list[logging.LogRecord] = []
        monkeypatch.setattr(handler, "handleError", errors.append)
        monkeypatch.setattr(threading.Thread, "start", start)
        fill(w)
        log.warning("%s", "x" * 5000)
        assert failed and errors == [] and handler.output.dropped == 1
        drain(r, lambda: True)
        for i in range(3):
            log.warning("later %d", i)
        lines = text_lines(drain(r, lambda: False, timeout_s=3))
        with contextlib.suppress(Exception):  # let pipe_logger's clean-up end
            handler.output._sink.waiting.clear()  # type: ignore[union-attr]
        assert "later 2" in lines and notices(lines) == [1]


@pytest.mark.timeout(60)
def test_a_descriptor_shortage_at_construction_logs_as_a_stream_handler_and_leaks_nothing(
        ) -> None:
    """One descriptor left (a process near its limit calls configure(), or setStream): the
    handler must still be made and log (through the stream, as StreamHandler), leaking
    nothing."""
    program = (
        "import logging, os, resource\n"
        "from asyncjobs._cli.logs import BatchedStreamHandler\n"
        "r, w = os.pipe()\n"
        "stream = open(w, 'w', buffering=1, closefd=False)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1]))\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(os.open(os.devnull, os.O_RDONLY))\n"
        "except OSError:\n"
        "    pass\n"
        "free = held.pop()\n"
        "os.close(free)\n"
        "try:\n"
        "    h = BatchedStreamHandler(stream)\n"
        "    made = b'made'\n"
        "except OSError as exc:\n"
        "    made = b'raised ' + exc.__class__.__name__.encode()\n"
        "try:\n"
        "    os.fstat(free)\n"
        "    leak = b'leaked' if made != b'made' else b'in use'\n"
        "except OSError:\n"
        "    leak = b'free'\n"
        "os.write(1, made + b' ' + leak + b'\\n')\n"
        "os._exit(0)\n")
    status, out, _ = run(program)
    assert status == 0
    assert out.split()[0] == b"made", out


@pytest.mark.timeout(60)
def test_configure_again_keeps_the_earlier_handler_s_lines_first_and_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() says 'lines an earlier configure() holds go out first'. The earlier
    handler's thread has written half of a long line when the new handler logs: the new line
    must come after it, not inside it (the same holds for any two outputs on one pipe: the
    processes of ``--processes N`` on a shared stderr)."""
    real = log_sink._write_all
    halfway, resume = threading.Event(), threading.Event()

    def paused(fd: int, data: bytes) -> None:  # the kernel took half, the rest waits
        if halfway.is_set():
            real(fd, data)
            return
        real(fd, data[:len(data) // 2])
        halfway.set()
        resume.wait(20)
        real(fd, data[len(data) // 2:])

    monkeypatch.setattr(log_sink, "_write_all", paused)
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.setattr(sys, "stderr", stream)
    log = logging.getLogger("asyncjobs.test.hostile2.configure")
    handlers: list[logging.Handler] = []
    try:
        logs.configure("INFO")
        handlers.append(root.handlers[0])
        fill(w)
        log.warning("%s", "O" * 20_000)
        got = [drain(r, halfway.is_set)]
        logs.configure("INFO")  # again (an application re-configuring, a test)
        handlers.append(root.handlers[0])
        log.warning("new")
        resume.set()
        got.append(drain(r, lambda: not any(h.output.behind for h in handlers)))  # type: ignore[attr-defined]
    finally:
        resume.set()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for h in handlers:
            h.close()
        stream.close()
        os.close(r)
        os.close(w)
    messages = [line.split(": ", 1)[-1] for line in text_lines(b"".join(got))]
    assert messages == ["O" * 20_000, "new"], [m[:10] + "..." + m[-70:] for m in messages]


@pytest.mark.timeout(60)
def test_a_text_the_encoder_refuses_does_not_lose_the_dropped_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A strict ASCII stream: lines dropped on a full pipe, then a line with 'é' (a logging
    error, as StreamHandler reports it): the count of the dropped lines must still be told."""
    with pipe_logger(most_bytes=0, encoding="ascii", errors="strict") as (log, handler, r, w):
        errors: list[logging.LogRecord] = []
        monkeypatch.setattr(handler, "handleError", errors.append)
        fill(w)
        for i in range(5):
            log.warning("line %d", i)
        drain(r, lambda: True)
        log.warning("caf\u00e9")
        log.warning("after")
        lines = text_lines(drain(r, lambda: not handler.output.behind))
        assert len(errors) == 1
        assert notices(lines) == [5] and lines[-1] == "after"


# ---------------------------------------------------------------------------------------
# What held


def _handler_on(w: int) -> tuple[BatchedStreamHandler, io.TextIOWrapper]:
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed by the caller
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler, stream


@pytest.mark.timeout(120)
def test_500_handlers_dropped_without_close_leak_no_descriptor_or_thread() -> None:
    """500 handlers on pipes, dropped without close(): half of them with a thread started
    (a line longer than the pipe took) and idle again. After gc.collect() every descriptor
    the outputs opened is closed and every thread of theirs has ended."""
    gc.collect()
    fds, threads = open_fds(), set(output_threads())
    for i in range(500):
        r, w = os.pipe()
        handler, stream = _handler_on(w)
        if i % 2:
            handler.handle(record("z" * 100_000))  # more than the pipe takes: the thread
            drain(r, lambda h=handler: not h.output.behind)  # type: ignore[misc]
        else:
            handler.handle(record("short"))
            assert drain(r, lambda: True) == b"short\n"
        stream.close()
        os.close(r)
        os.close(w)
        del handler, stream
    gc.collect()
    assert wait_until(lambda: not set(output_threads()) - threads)
    assert open_fds() - fds == set()


@pytest.mark.timeout(120)
def test_outputs_collected_while_their_threads_write_lose_nothing_and_leak_nothing() -> None:
    """50 outputs collected while each thread is stuck on a full pipe with lines waiting:
    once the readers read, every line comes out, in order, then the descriptors are closed
    and the threads end (the finalizer races each thread)."""
    gc.collect()
    fds, threads = open_fds(), set(output_threads())
    pipes = []
    for _ in range(50):
        r, w = os.pipe()
        handler, stream = _handler_on(w)
        fill(w)
        for i in range(20):
            handler.handle(record(f"line {i:02d} {'q' * 300}"))
        assert handler.output.behind
        stream.close()
        os.close(w)
        pipes.append(r)
        del handler, stream
    gc.collect()
    for r in pipes:
        lines = text_lines(drain(r, lambda: False, timeout_s=0.3))
        more = drain(r, lambda: False, timeout_s=0.05)  # (EOF once the output let go)
        lines += text_lines(more)
        assert lines == [f"line {i:02d} {'q' * 300}" for i in range(20)]
        os.close(r)
    assert wait_until(lambda: not set(output_threads()) - threads)
    assert open_fds() - fds == set()


@pytest.mark.timeout(60)
def test_stuck_outputs_dropped_then_readers_gone_release_everything() -> None:
    """100 outputs dropped while stuck on pipes nobody will ever read: once the readers
    close, each thread's write fails, and its descriptors and thread go."""
    gc.collect()
    fds, threads = open_fds(), set(output_threads())
    readers = []
    for _ in range(100):
        r, w = os.pipe()
        handler, stream = _handler_on(w)
        fill(w)
        handler.handle(record("s" * 1000))
        stream.close()
        os.close(w)
        readers.append(r)
        del handler, stream
    gc.collect()
    assert len(set(output_threads()) - threads) == 100
    for r in readers:
        os.close(r)
    assert wait_until(lambda: not set(output_threads()) - threads)
    assert open_fds() - fds == set()


@pytest.mark.timeout(60)
def test_close_while_the_thread_writes_then_more_lines_come_out_once_in_order() -> None:
    """close() with lines waiting, then more lines, then the reader reads: every line once,
    in order; once the thread is done the descriptors are closed and later lines go through
    the stream, after all of them."""
    with pipe_logger() as (log, handler, r, w):
        fill(w)
        for i in range(300):
            log.warning("before %03d %s", i, "b" * 200)
        sink = handler.output._sink
        assert sink is not None
        handler.output.close()
        for i in range(300):
            log.warning("after %03d", i)
        lines = text_lines(drain(r, lambda: sink.closed))
        assert sink.closed and sink.thread is None
        log.warning("through the stream")
        lines += text_lines(drain(r, lambda: True))
        assert lines == ([f"before {i:03d} {'b' * 200}" for i in range(300)]
                         + [f"after {i:03d}" for i in range(300)] + ["through the stream"])


@pytest.mark.timeout(60)
def test_a_handler_replaced_by_configure_leaks_nothing_once_collected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.setattr(sys, "stderr", stream)
    gc.collect()
    fds = open_fds()
    try:
        for i in range(200):
            logs.configure("INFO")
            logging.getLogger("asyncjobs.test.hostile2").warning("line %d", i)
            assert drain(r, lambda: True).endswith(f"line {i}\n".encode())
        root.handlers[0].close()
        root.handlers[:] = []
        gc.collect()
        assert open_fds() - fds == set()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        stream.close()
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
def test_after_fd_2_moves_away_close_lets_the_old_pipe_s_reader_see_its_end() -> None:
    """A process moves its stderr elsewhere (``dup2``): the output keeps its own
    descriptors of the old pipe (so, until closed, its lines still go there and the old
    reader sees no end: see the report). Once the handler is closed, the reader sees EOF."""
    program = (
        "import logging, os, sys\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "log = logging.getLogger('asyncjobs.x')\n"
        "log.warning('on the pipe')\n"
        "null = os.open(os.devnull, os.O_WRONLY)\n"
        "os.dup2(null, 2)\n"
        "os.dup2(null, 1)\n"
        "log.warning('after dup2')\n"
        "logging.getLogger().handlers[0].close()\n"
        "os.close(null)\n"
        "import time\n"
        "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 20)
        assert ready
        err = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 65536)
                if not chunk:
                    break  # EOF: nobody holds the pipe any more
                err += chunk
        else:
            pytest.fail("the old pipe's reader never saw its end")
        assert proc.poll() is None  # (the process is still running)
        assert b"on the pipe" in err
    finally:
        proc.kill()
        proc.wait(10)
        proc.stderr.close()


@pytest.mark.timeout(60)
def test_a_socket_takes_long_lines_in_parts_and_keeps_them_whole_and_in_order() -> None:
    """stderr a socket (journald's stream, a shipper's socket): sends that take part of a
    100 KB line, the rest from the thread, short lines following it there; all whole and in
    order; while the socket takes text, a line is out when the call returns."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stream = open(ours.fileno(), "w", buffering=1, closefd=False)  # noqa: SIM115
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    sent = []
    try:
        theirs.setblocking(False)
        handler.handle(record("first"))
        assert theirs.recv(65536) == b"first\n"
        for i in range(30):
            line = f"{i:02d} " + chr(ord("a") + i % 26) * (100_000 if i % 3 == 0 else 50)
            sent.append(line)
            handler.handle(record(line))
        assert handler.output.behind
        data = drain(theirs.fileno(), lambda: not handler.output.behind)
        assert text_lines(data) == sent
        handler.handle(record("direct again"))
        assert theirs.recv(65536) == b"direct again\n"
    finally:
        handler.close()
        stream.close()
        ours.close()
        theirs.close()


@pytest.mark.timeout(60)
def test_a_process_whose_stderr_socket_is_never_read_exits_in_its_bound() -> None:
    ours, theirs = socket.socketpair()
    program = (
        "import logging, os, sys\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "log = logging.getLogger('asyncjobs.x')\n"
        "for i in range(20000):\n"
        "    log.warning('line %d %s', i, 'x' * 200)\n"
        "os.write(1, b'logged\\n')\n"
        "sys.exit(0)\n")
    try:
        proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=theirs.fileno())
        theirs.close()
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 40)
            assert ready and proc.stdout.readline() == b"logged\n"
            start = time.monotonic()
            assert proc.wait(EXIT_WAIT_S + 10) == 0
            assert time.monotonic() - start < EXIT_WAIT_S + 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()
    finally:
        ours.close()


@pytest.mark.timeout(60)
def test_a_fifo_whose_reader_goes_and_comes_back_gets_the_lines_logged_meanwhile_or_none(
        tmp_path: Path) -> None:
    """stderr a FIFO opened by path: a first reader reads a line as the call returns, then
    goes (the lines meanwhile fail: nothing blocks, no line is half-written); a second
    reader gets each new line as the call returns."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    first = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    stream = open(fifo, "w", buffering=1)  # noqa: SIM115  # closed below
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        handler.handle(record("one"))
        assert os.read(first, 100) == b"one\n"
        os.close(first)
        done = threading.Event()

        def log_some() -> None:
            for i in range(100):
                handler.handle(record(f"lost {i}"))
            done.set()

        threading.Thread(target=log_some, daemon=True).start()
        assert done.wait(10), "a logging call blocked on a FIFO without a reader"
        assert wait_until(lambda: not handler.output.behind)
        second = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            for i in range(3):
                handler.handle(record(f"two {i}"))
                assert os.read(second, 100) == f"two {i}\n".encode()
        finally:
            os.close(second)
    finally:
        handler.close()
        with contextlib.suppress(OSError):
            stream.close()


@pytest.mark.timeout(60)
def test_a_terminal_shows_each_line_when_the_call_returns() -> None:
    master, slave = os.openpty()
    stream = open(slave, "w", buffering=1)  # noqa: SIM115  # closed below
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        for i in range(5):
            handler.handle(record(f"tty {i}"))
            assert os.read(master, 100) == f"tty {i}\r\n".encode()
        assert handler.output._sink.thread is None  # type: ignore[union-attr]
    finally:
        handler.close()
        stream.close()
        os.close(master)


@pytest.mark.timeout(60)
def test_dev_null_takes_everything_without_a_thread_and_close_releases_it() -> None:
    fds = open_fds()
    stream = open(os.devnull, "w")  # noqa: SIM115  # closed below
    handler = BatchedStreamHandler(stream, most_bytes=0)
    handler.setFormatter(logging.Formatter("%(message)s"))
    assert handler.output._sink is not None  # a character device: non-blocking writes
    for i in range(2000):
        handler.handle(record(f"line {i} {'n' * (i % 5000)}"))
    assert handler.output._sink.thread is None and handler.output.dropped == 0
    handler.close()
    stream.close()
    assert open_fds() - fds == set()


@pytest.mark.timeout(60)
def test_two_processes_appending_to_one_file_keep_every_line_whole(tmp_path: Path) -> None:
    """A regular file opened O_APPEND by two processes (``>>`` twice): written as
    StreamHandler does, one write a line, so no line is cut by the other's."""
    path = tmp_path / "shared.log"
    program = (
        "import logging, sys\n"
        "from asyncjobs._cli.logs import BatchedStreamHandler\n"
        "stream = open(sys.argv[1], 'a', buffering=1)\n"
        "h = BatchedStreamHandler(stream)\n"
        "h.setFormatter(logging.Formatter('%(message)s'))\n"
        "assert h.output._sink is None\n"
        "for i in range(5000):\n"
        "    h.handle(logging.makeLogRecord({'msg': '%s %05d %s' % (sys.argv[2], i, "
        "sys.argv[2] * (10 + i % 400)), 'levelno': 30}))\n"
        "h.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", program, str(path), name], cwd=ROOT)
             for name in ("a", "b")]
    for proc in procs:
        assert proc.wait(60) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 10_000
    for name in ("a", "b"):
        mine = [line for line in lines if line.startswith(name + " ")]
        assert [int(line.split()[1]) for line in mine] == list(range(5000))
        assert all(line.split()[2] == name * (10 + int(line.split()[1]) % 400) for line in mine)


def test_a_stream_whose_descriptor_was_closed_behaves_as_a_stream_handler() -> None:
    """EBADF when the handler is made: no output of its own, each line a logging error
    (as StreamHandler reports it), never a crash or a block."""
    r, w = os.pipe()
    os.close(r)
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    os.close(w)
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    errors: list[logging.LogRecord] = []
    handler.handleError = errors.append  # type: ignore[method-assign]
    try:
        assert handler.output._sink is None
        handler.handle(record("nowhere"))
        assert len(errors) == 1
    finally:
        with contextlib.suppress(OSError):
            stream.close()


@pytest.mark.timeout(60)
def test_a_child_forked_while_the_thread_is_stuck_logs_a_lot_and_exits_in_its_bound() -> None:
    """Fork while the parent's thread is stuck on the full pipe; the child logs 20,000
    lines into the same full pipe (its own thread, its own bound) and exits with
    ``sys.exit`` (atexit, logging.shutdown): within EXIT_WAIT_S and a margin; the parent then
    exits within its own bound; nobody ever reads."""
    program = (
        "import logging, os, sys, time\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "log = logging.getLogger('asyncjobs.x')\n"
        "for i in range(2000):\n"
        "    log.warning('parent %05d %s', i, 'x' * 100)\n"
        "h = logging.getLogger().handlers[0]\n"
        "assert h.output.behind\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    assert not h.output.behind\n"
        "    for i in range(20000):\n"
        "        log.warning('child %05d %s', i, 'y' * 100)\n"
        "    assert h.output.behind and h.output._sink.thread is not None\n"
        "    sys.exit(7)\n"
        "start = time.monotonic()\n"
        "_, status = os.waitpid(pid, 0)\n"
        "os.write(1, b'%d %.2f\\n' % (os.waitstatus_to_exitcode(status), "
        "time.monotonic() - start))\n"
        "sys.exit(0)\n")
    with python_program(program) as proc:
        line = first_line(proc, 40)
        assert line is not None
        code, took = line.split()
        assert int(code) == 7 and float(took) < EXIT_WAIT_S + 5
        start = time.monotonic()
        assert proc.wait(EXIT_WAIT_S + 10) == 0
        assert time.monotonic() - start < EXIT_WAIT_S + 5


@pytest.mark.timeout(120)
def test_four_threads_a_slow_reader_and_a_logging_signal_handler_keep_order_and_counts(
        ) -> None:
    """4 threads log 5,000 lines each while a SIGALRM handler (main thread, every 2 ms)
    logs too and a reader reads in slow bursts, with a small bound: lines in the order the
    handler took them, none twice, each gap told in its place, read + told == logged, and
    each thread's (and the signal handler's) own lines in its order."""
    formatter = Numbered()
    fired = [0]
    with pipe_logger(most_bytes=24 * 1024, formatter=formatter) as (log, handler, r, _):
        busy = [False]

        def on_alarm(signum: int, frame: FrameType | None) -> None:
            if busy[0]:  # (a signal handler runs again inside itself: not this test's)
                return
            busy[0] = True
            try:
                log.info("sig-%d", fired[0])
                fired[0] += 1
            finally:
                busy[0] = False

        got: list[bytes] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                got.append(drain(r, lambda: True, chunk=8192, pause_s=0.002))
                time.sleep(0.02)

        def log_all(k: int) -> None:
            for i in range(5000):
                log.info("t%d-%d %s", k, i, "p" * (20 + (i * 7919) % 200))

        previous = signal.signal(signal.SIGALRM, on_alarm)
        reading = threading.Thread(target=reader)
        threads = [threading.Thread(target=log_all, args=(k,)) for k in range(4)]
        try:
            reading.start()
            signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while any(t.is_alive() for t in threads):  # the signal handler runs here
                assert time.monotonic() < deadline
                time.sleep(0.001)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, previous)
            stop.set()
            reading.join(30)
        got.append(drain(r, lambda: not handler.output.behind))
        log.info("after")
        got.append(drain(r, lambda: not handler.output.behind))
        lines = text_lines(b"".join(got))
        kept, _ = check_numbered(lines, 20_000 + fired[0] + 1)
        assert fired[0] > 0 and kept > 100
        own: dict[str, list[int]] = {}
        for line in lines:
            if m := re.match(r"\d+ (t\d|sig)-(\d+)", line):
                own.setdefault(m.group(1), []).append(int(m.group(2)))
        assert all(v == sorted(set(v)) for v in own.values())


def test_a_pipe_costs_one_write_a_line_while_it_takes_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the pipe takes text: exactly one os.write a line, no thread, no poll."""
    calls = {"write": 0, "poll": 0}
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        calls["write"] += 1
        return real_write(fd, data)

    class NoPoll:
        def __init__(self) -> None:
            calls["poll"] += 1

    with pipe_logger() as (log, handler, r, _):
        monkeypatch.setattr(log_sink.os, "write", write)
        monkeypatch.setattr(log_sink.select, "poll", NoPoll)
        for i in range(1000):
            log.warning("line %d", i)
            assert os.read(r, 100) == f"line {i}\n".encode()
        monkeypatch.undo()
        assert calls == {"write": 1000, "poll": 0}
        assert handler.output._sink.thread is None  # type: ignore[union-attr]


@pytest.mark.skipif(not Path("/usr/bin/strace").exists(), reason="needs strace")
@pytest.mark.parametrize("where", ["file", "pipe"])
@pytest.mark.timeout(120)
def test_system_calls_a_line(where: str, tmp_path: Path) -> None:
    """strace -c of 2,000 lines: one write a line (file: the stream's; pipe: the output's,
    a reader keeping up), and no per-line poll, fstat, fcntl, lseek or ioctl."""
    program = (
        "import logging, sys\n"
        "from asyncjobs._cli.logs import BatchedStreamHandler\n"
        "h = BatchedStreamHandler(sys.stderr)\n"
        "h.setFormatter(logging.Formatter('%(message)s'))\n"
        "import os\n"
        "os.write(1, b'MARK\\n')\n"
        "for i in range(2000):\n"
        "    h.handle(logging.makeLogRecord({'msg': 'line %d' % i, 'levelno': 30}))\n"
        "os.write(1, b'MARK\\n')\n"
        "h.close()\n")
    trace = tmp_path / "trace"
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            ["strace", "-f", "-o", str(trace), "-e",
             "trace=write,writev,pwrite64,pwritev2,sendto,sendmsg,poll,ppoll,select,"
             "pselect6,fstat,newfstatat,statx,fcntl,lseek,ioctl,clone,clone3",
             sys.executable, "-c", program], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=log_file if where == "file" else subprocess.PIPE)
        if where == "pipe":
            assert proc.stderr is not None
            data = proc.stderr.read()
            proc.stderr.close()
        assert proc.stdout is not None
        proc.stdout.read()
        proc.stdout.close()
        assert proc.wait(60) == 0
    if where == "file":
        data = log_path.read_bytes()
    assert data.decode().splitlines() == [f"line {i}" for i in range(2000)]
    calls = trace.read_text().splitlines()
    marks = [i for i, line in enumerate(calls) if "MARK" in line]
    between = calls[marks[0] + 1:marks[1]]
    names: dict[str, int] = {}
    for line in between:
        if (m := re.match(r"\d+\s+(\w+)\(", line)) and "resumed" not in line:
            names[m.group(1)] = names.get(m.group(1), 0) + 1
    writes = sum(names.get(n, 0) for n in ("write", "writev", "sendto", "sendmsg"))
    assert writes <= 2000 + 5, names
    others = {n: c for n, c in names.items() if n not in ("write", "writev")}
    assert sum(others.values()) <= 10, names

