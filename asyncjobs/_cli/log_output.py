"""Log text out to a stream that may stop taking it, without blocking the caller.

A worker's log lines go to stderr, which is often a pipe: to a container runtime, a log
shipper, ``| tee``, a terminal paused with Ctrl-S. When the reader stops reading, the pipe
fills and a plain write blocks the thread that logs: on a worker, its event loop, so no job,
keep-alive or heartbeat runs and not even SIGTERM is handled (the process cannot stop until
the reader reads). ``Output`` writes at once while the stream takes text (a line, once the
logging call returns, is written: a process killed right after still shows it); when a
write might block (``poll`` says the stream is full, or the text is longer than what is
sure to fit), the text goes to a thread of its own, which waits on the stream instead, and
the lines after it follow it there, in order, until that thread has written them all. What
waits there is bounded (``most_bytes``): past it, lines are dropped and counted until the
thread is done, and the count is told in a line of its own before the next line written.

The thread writes to the stream's file descriptor itself (after the stream's buffer was
flushed), so a process exiting while that thread waits on a stuck reader is not held by the
stream's own lock. A stream without a file descriptor (``io.StringIO``, a test's capture) is
written at once, as ``logging.StreamHandler`` does.
"""

from __future__ import annotations

import os
import select
import stat
import threading
from collections.abc import Callable
from typing import TextIO

SURE_FIT = getattr(select, "PIPE_BUF", 512)
"""The longest text written at once when ``poll`` says the stream takes more: a pipe with
room at all takes this much without blocking (POSIX: 512 bytes at least; Linux: 4,096)."""

MOST_BYTES = 4 * 1024 * 1024
"""How much log text may wait for a stream that does not take it, by default."""


class Output:
    """Writes text to ``stream`` (see the module docstring). ``notice(n)`` gives the line
    (with its newline) that says ``n`` lines were dropped. Thread-safe, but written for a
    logging handler: ``write`` is called under the handler's lock."""

    def __init__(self, stream: TextIO, notice: Callable[[int], str],
                 most_bytes: int = MOST_BYTES) -> None:
        self.stream = stream
        self.notice = notice
        self.most_bytes = most_bytes
        self.dropped = 0
        """Lines dropped since the last notice was written."""
        self._fd = _fd_of(stream)
        self._poll: select.poll | None = None
        if self._fd is not None and hasattr(select, "poll") and not _is_file(self._fd):
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLOUT)
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._errors = getattr(stream, "errors", None) or "backslashreplace"
        self._setup()

    def _setup(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._writing = False
        self._thread: threading.Thread | None = None

    @property
    def behind(self) -> bool:
        """Whether text waits for the thread (or is being written by it)."""
        return bool(self._waiting) or self._writing  # in this order: see _run

    def write(self, text: str) -> None:
        """Write ``text`` (whole lines, or nothing) now, or hand it to the thread (see the
        module docstring); the line telling of dropped lines goes first, once nothing waits."""
        if self._fd is None:
            if text:
                self.stream.write(text)
            self.stream.flush()
            return
        if text and not (self.dropped or self.behind) and self._takes(text):
            # Nothing waits, and only a caller under the handler's lock hands text over:
            # the thread stays idle while this writes, without taking the lock.
            self.stream.write(text)
            self.stream.flush()
            return
        with self._changed:
            if self.dropped and not self.behind:
                text = self.notice(self.dropped) + text
                self.dropped = 0
            if not text:
                return
            direct = not self.behind and self._takes(text)
            if not direct:
                self._hand_over(text)
        if direct:
            self.stream.write(text)
            self.stream.flush()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the thread to write what waits; whether it did."""
        with self._changed:
            return self._changed.wait_for(lambda: not self.behind, timeout_s)

    def forget(self) -> None:
        """In a forked child: what waits is the parent's to write (and its thread and lock
        are not the child's)."""
        self._setup()
        self.dropped = 0

    def _takes(self, text: str) -> bool:
        """Whether the stream takes ``text`` without blocking, as far as can be known."""
        if self._poll is None:
            return True  # a regular file, or no poll on this platform: as a plain handler
        if (len(text) > SURE_FIT // 10  # no character takes more than 10 bytes
                and len(text.encode(self._encoding, self._errors)) > SURE_FIT):
            return False
        try:
            return bool(self._poll.poll(0))
        except (OSError, ValueError):
            return True  # the write itself will say what is wrong

    def _hand_over(self, text: str) -> None:
        """Queue ``text`` for the thread, or drop it (once too much waited, every line until
        the thread is done: they stay in order around the notice). Under the lock."""
        data = text.encode(self._encoding, self._errors)
        if self.dropped or self._waiting_bytes + len(data) > self.most_bytes:
            self.dropped += max(1, text.count("\n"))
            return
        if not self.behind:
            self.stream.flush()  # what the stream holds goes first
        self._waiting.append(data)
        self._waiting_bytes += len(data)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="asyncjobs-log-output")
            self._thread.start()
        self._changed.notify_all()

    def _run(self) -> None:
        """The thread: write what waits, in order, until the process ends."""
        fd = self._fd
        assert fd is not None  # only a stream with a file descriptor hands text over
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._waiting))
                self._writing = True  # before the list empties: a reader without the lock
                data = b"".join(self._waiting)  # (``behind``) sees one or the other
                self._waiting.clear()
                self._waiting_bytes = 0
            try:
                _write_all(fd, data)
            except OSError:
                pass  # the stream is gone (closed, a broken pipe): nowhere to say so
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()


def _fd_of(stream: TextIO) -> int | None:
    """``stream``'s file descriptor, or None if it has none."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


def _is_file(fd: int) -> bool:
    """Whether ``fd`` is a regular file (whose writes never wait on a reader)."""
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
