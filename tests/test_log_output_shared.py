"""Outputs on one pipe share one sink (its descriptors, queue and thread), and an output
whose sink is closed writes only what the stream takes without waiting.

Each test attacks what sharing or closing could break: the order of two handlers' lines,
a handler closed while the other still writes, a sink closed and then asked for again, a
full pipe after every handler closed, and a fork while another thread held the registry's
lock."""

from __future__ import annotations

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
