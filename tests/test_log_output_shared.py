"""Outputs on one pipe share one sink (its descriptors, queue and thread), and an output
whose sink is closed writes only what the stream takes without waiting.

Each test attacks what sharing or closing could break: the order of two handlers' lines,
a handler closed while the other still writes, a sink closed and then asked for again, a
full pipe after every handler closed, and a fork while another thread held the registry's
lock."""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import pytest

from asyncjobs._cli import log_sink
from asyncjobs._cli.log_output import Output
from asyncjobs._cli.logs import BatchedStreamHandler

from .procs import python_program
from .test_log_output_hostile import drain, fill, notices, pipe_logger, record, text_lines


def _handler(stream: object) -> BatchedStreamHandler:
    handler = BatchedStreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def _dropped(count: int) -> str:
    return f"- {count} log lines were dropped\n"


@pytest.mark.timeout(60)
def test_two_handlers_on_one_pipe_share_one_sink_and_keep_their_order() -> None:
    """Handler A's long line waits for the thread (the pipe is full); handler B, on another
    stream object of the same pipe, logs after it: B's line must come after A's, whole."""
    r, w = os.pipe()
    a_stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    b_stream = open(os.dup(w), "w", buffering=1)  # noqa: SIM115  # another descriptor
    a, b = _handler(a_stream), _handler(b_stream)
    try:
        assert a.output._sink is b.output._sink is not None
        fill(w)
        a.handle(record("A" * 20_000))
        assert a.output.behind
        b.handle(record("B after A"))
        got = drain(r, lambda: not a.output.behind)
        assert text_lines(got) == ["A" * 20_000, "B after A"]
    finally:
        a.close()
        b.close()
        a_stream.close()
        b_stream.close()
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
def test_closing_one_handler_leaves_the_shared_descriptors_to_the_other() -> None:
    """A closes (configure() again); B's lines on the full pipe must still be queued for the
    thread, not written through the blocking stream, and the descriptors closed only after
    B closes too."""
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    a, b = _handler(stream), _handler(stream)
    sink = a.output._sink
    assert sink is not None and sink is b.output._sink
    try:
        a.close()
        assert not sink.closed and sink.users == 1
        fill(w)
        returned = threading.Event()

        def log_b() -> None:
            b.handle(record("from B while the pipe is full"))
            returned.set()

        threading.Thread(target=log_b, daemon=True).start()
        blocked = not returned.wait(3)
        got = drain(r, lambda: returned.is_set() and not b.output.behind)
        assert not blocked, "B's logging call waited for the pipe's reader"
        assert text_lines(got) == ["from B while the pipe is full"]
        b.close()
        assert sink.closed and sink.users == 0
    finally:
        stream.close()
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
def test_a_closed_sink_is_never_shared_again() -> None:
    """Every output on a pipe closed (descriptors released): a new output on it must get
    descriptors of its own that write, not the closed ones."""
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    try:
        first = Output(stream, _dropped)
        old = first._sink
        first.close()
        assert old is not None and old.closed
        second = Output(stream, _dropped)
        assert second._sink is not None and second._sink is not old
        assert not second._sink.closed
        second.write("through the new sink\n")
        assert drain(r, lambda: True) == b"through the new sink\n"
        second.close()
        first.close()  # again: changes nothing (the sink's count of users stays right)
        assert second._sink.closed and second._sink.users == 0
    finally:
        stream.close()
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
def test_after_close_a_full_pipe_drops_lines_and_the_next_line_tells_the_count() -> None:
    """After close (a daemon thread logging past logging.shutdown): on a full pipe the calls
    return and their lines are counted; once the pipe takes text, the count goes first."""
    with pipe_logger() as (log, handler, r, w):
        log.warning("before close")
        handler.output.close()
        assert handler.output._sink is not None and handler.output._sink.closed
        assert drain(r, lambda: True) == b"before close\n"
        fill(w)
        for i in range(3):
            log.warning("dropped %d", i)
        assert handler.output.dropped == 3
        drain(r, lambda: True)
        log.warning("after the reader came back")
        lines = text_lines(drain(r, lambda: True))
        assert notices(lines) == [3]
        assert lines[-1] == "after the reader came back" and len(lines) == 2
        assert handler.output.dropped == 0


@pytest.mark.timeout(60)
def test_write_now_takes_what_the_pipe_takes_and_no_more() -> None:
    """write_now on a pipe with room for one piece: it writes whole pieces only, says how
    many bytes went, and leaves no descriptor of its own open."""
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    try:
        fill(w)
        os.read(r, log_sink.PIPE_BUF)  # room for one piece exactly
        before = set(os.listdir("/proc/self/fd"))
        line = b"x" * 99 + b"\n"
        data = line * (2 * log_sink.PIPE_BUF // len(line))
        took = log_sink.write_now(stream, data)
        assert set(os.listdir("/proc/self/fd")) == before
        assert took is not None and 0 < took <= log_sink.PIPE_BUF and took % len(line) == 0
    finally:
        stream.close()
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
def test_a_fork_while_another_thread_holds_the_registry_lock_does_not_hang_the_child() -> None:
    """Another thread is inside sink_for (holding the registry's lock) when the process
    forks: the child's own logging set-up must not wait for a lock nobody will release."""
    program = (
        "import os, sys, threading\n"
        "from asyncjobs._cli import log_sink\n"
        "from asyncjobs._cli.log_output import Output\n"
        "held, release = threading.Event(), threading.Event()\n"
        "def holder():\n"
        "    with log_sink._sinks_lock:\n"
        "        held.set()\n"
        "        release.wait(30)\n"
        "threading.Thread(target=holder, daemon=True).start()\n"
        "held.wait(10)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    r, w = os.pipe()\n"
        "    out = Output(open(w, 'w', buffering=1), lambda n: '')\n"
        "    out.write('child\\n')\n"
        "    os.write(1, os.read(r, 100))\n"
        "    os._exit(0)\n"
        "release.set()\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n")
    with python_program(program) as proc:
        status = proc.wait(20)
        assert proc.stdout is not None
        assert (status, proc.stdout.read()) == (0, b"child\n")


# ---------------------------------------------------------------------------------------
# Found by a review of the sharing (each failed before its fix)


@pytest.mark.timeout(60)
def test_after_close_a_terminal_with_no_write_that_never_waits_does_not_block(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal this process may not open again (another user's: the reopen fails) and
    on which ``pwritev(RWF_NOWAIT)`` is not supported, nobody reading it: a line after close
    must be dropped and counted, never written through the blocking stream."""
    monkeypatch.setattr(log_sink, "_reopened_try", lambda fd: None)
    master, slave = os.openpty()
    stream = open(slave, "w", buffering=1)  # noqa: SIM115  # closed below
    try:
        out = Output(stream, _dropped)
        out.close()
        assert out._sink is not None and out._sink.closed
        os.set_blocking(slave, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(slave, b"#" * 1024)
        os.set_blocking(slave, True)
        returned = threading.Event()

        def late() -> None:
            out.write("after close\n")
            returned.set()

        threading.Thread(target=late, daemon=True).start()
        blocked = not returned.wait(3)
        drain(master, returned.is_set)
        assert not blocked, "a write after close waited for the terminal's reader"
        assert out.dropped == 1
    finally:
        stream.close()
        os.close(master)


@pytest.mark.timeout(60)
def test_after_close_a_line_the_pipe_took_part_of_is_ended_before_the_next() -> None:
    """After close, a pipe with room for part of one long line (a JSON traceback is one
    line) takes that part: the next text must start on a line of its own, and the cut line
    is counted as dropped."""
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    try:
        out = Output(stream, lambda n: f"{n} log lines were dropped: the log output took "
                                       "nothing for a while\n")
        out.close()
        fill(w)
        os.read(r, 8192)  # room for 8 KiB
        out.write("L" * 20_000 + "\n")
        assert out.dropped == 1
        drain(r, lambda: True)
        out.write("next line\n")
        lines = drain(r, lambda: True).decode().split("\n")
        assert lines[0] == ""  # the cut line ended
        assert notices(lines[1:2]) == [1] and lines[2:] == ["next line", ""]
    finally:
        stream.close()
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
def test_a_forked_child_gets_its_own_thread_for_a_sink_no_handler_reaches() -> None:
    """An output closed and collected while its thread was still writing to a full pipe
    leaves its sink in the registry; a child forked then makes a new output on that pipe:
    its line must be written (by a thread of the child's), not wait on the parent's."""
    program = (
        "import contextlib, gc, os, sys, time\n"
        "from asyncjobs._cli.log_output import Output\n"
        "r, w = os.pipe()\n"
        "stream = open(w, 'w', buffering=1, closefd=False)\n"
        "os.set_blocking(w, False)\n"
        "with contextlib.suppress(BlockingIOError):\n"
        "    while True:\n"
        "        os.write(w, b'#' * 4096)\n"
        "os.set_blocking(w, True)\n"
        "a = Output(stream, str)\n"
        "a.write('parent line\\n')\n"
        "assert a.behind\n"
        "a.close()\n"
        "del a\n"
        "gc.collect()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    b = Output(stream, str)\n"
        "    b.write('CHILD LINE\\n')\n"
        "    os._exit(0 if b.wait(20) else 3)\n"
        "os.set_blocking(r, False)\n"
        "got, deadline = b'', time.monotonic() + 20\n"
        "while b'CHILD LINE' not in got and time.monotonic() < deadline:\n"
        "    try:\n"
        "        got += os.read(r, 1 << 20)\n"
        "    except BlockingIOError:\n"
        "        time.sleep(0.01)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(b'CHILD LINE' in got, os.waitstatus_to_exitcode(status))\n")
    with python_program(program) as proc:
        assert proc.wait(40) == 0
        assert proc.stdout is not None
        assert proc.stdout.read() == b"True 0\n"


@pytest.mark.timeout(60)
def test_a_signal_handler_that_sets_up_logging_inside_sink_for_does_not_hang() -> None:
    """SIGHUP's handler makes a new output (configure() again) while this thread is inside
    ``sink_for``, holding the registry's lock: it must not wait for itself."""
    program = (
        "import faulthandler, os, signal\n"
        "from asyncjobs._cli import log_sink\n"
        "from asyncjobs._cli.log_output import Output\n"
        "r, w = os.pipe()\n"
        "stream = open(w, 'w', buffering=1, closefd=False)\n"
        "signal.signal(signal.SIGHUP, lambda s, f: Output(stream, str).close())\n"
        "real, fired = os.dup, []\n"
        "def dup(fd):  # called in sink_for, under the registry's lock\n"
        "    if not fired:\n"
        "        fired.append(1)\n"
        "        os.kill(os.getpid(), signal.SIGHUP)\n"
        "    return real(fd)\n"
        "log_sink.os.dup = dup\n"
        "faulthandler.dump_traceback_later(10, exit=True)\n"
        "Output(stream, str).write('after\\n')\n"
        "print(fired == [1], os.read(r, 100) == b'after\\n')\n")
    with python_program(program) as proc:
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        assert proc.stdout.read() == b"True True\n"


@pytest.mark.timeout(60)
def test_the_last_close_during_a_write_still_releases_the_descriptors() -> None:
    """A signal handler closes the last output while its write is between the attempt and
    queueing what was not taken: once the write is done, the descriptors must be closed
    (the pipe's reader sees its end), not held for the life of the process."""
    r, w = os.pipe()
    stream = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115  # closed below
    out = Output(stream, _dropped)
    sink = out._sink
    assert sink is not None and sink.attempt is not None
    real = sink.attempt

    class Closing:
        fd = real.fd

        def __call__(self, data: bytes) -> int | None:
            out.close()  # what a handler running inside the attempt does
            return real(data)

        def close(self) -> None:
            real.close()

    sink.attempt = Closing()  # type: ignore[assignment]
    try:
        out.write("a line\n")
        assert sink.closed and sink.users == 0 and sink.thread is None
        stream.close()
        os.close(w)
        assert drain(r, lambda: True) == b"a line\n"
        assert os.read(r, 100) == b""  # the end: no descriptor of the pipe is left open
    finally:
        os.close(r)
