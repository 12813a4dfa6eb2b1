"""Log text out to a stream that may stop taking it, without blocking the caller.

A worker's log lines go to stderr, which is often a pipe, a socket or a terminal: a
container runtime, journald, a log shipper, ``| tee``, a terminal paused with Ctrl-S. When
the reader stops reading, a plain write blocks the thread that logs: on a worker, its
event loop, so no job, keep-alive or heartbeat runs and not even SIGTERM is handled.

``Output`` writes each text at once, as far as the stream takes it without waiting: through
a non-blocking descriptor of its own on the same pipe or terminal (opened again through
``/proc/self/fd``), or a non-blocking send on a socket. What the stream does not take then
goes to a thread of its own, which waits on the stream instead (through its own duplicate
of the descriptor, so a stream closed or a descriptor number reused meanwhile is never
written to), and every text after it follows it there, in order, until the thread has
written it all. While the stream takes text, a line is out once the logging call returns
(a process killed right after still shows it). What waits for the thread is bounded
(``most_bytes``): past it, lines are dropped and counted until the thread is done, and the
count is told in a line of its own before the next text written (``notice``). The
descriptors, the thread and the writes that never wait are ``log_sink``'s; this module
decides what is written, queued or dropped, and says so.

Text goes out in pieces of at most ``PIPE_BUF`` bytes ending with a line, which a pipe takes
whole: the lines of processes sharing one (``--processes N``) never cut into each other.
Where no non-blocking open is allowed (a pipe made by another user), ``pwritev`` with
``RWF_NOWAIT`` on the duplicate does the same.

What this costs, by design: the output holds descriptors of its own on the stream's pipe,
so its reader sees the end only once the handler is closed (or collected), and a process
that closes descriptors it did not open (daemonizing) must configure logging again; text
written to the stream by other means (``print(file=sys.stderr)``, a traceback) while the
thread writes may land between the pieces of a line longer than ``PIPE_BUF``. Outputs on
one pipe in one process (``configure()`` again, while the first still holds lines it cannot
write) share its descriptors and thread, so their lines keep the order they were written
in. Once an output is closed and no other shares them, its descriptors are closed: text
written after that (a daemon thread logging after ``logging.shutdown``) goes out as far as
the stream takes it without waiting, and the rest is dropped and counted.

A regular file (whose writes never wait on a reader), a stream without a file descriptor
(``io.StringIO``, a test's capture) and a stream of another class than ``io.TextIOWrapper``
(a wrapper with a ``write`` of its own) are written as ``logging.StreamHandler`` does. So
is a descriptor no non-blocking way is known for (not Linux): there, everything goes through
the thread.
"""

from __future__ import annotations

import codecs
import weakref
from collections.abc import Callable
from typing import TextIO

from .log_sink import Sink, sink_for, write_now

MOST_BYTES = 4 * 1024 * 1024
"""How much log text may wait for a stream that does not take it, by default."""

_BOMS = frozenset({"utf-8-sig", "utf-16", "utf-32"})
"""Codecs whose encoder starts with a byte order mark (the stream wrote it, if anyone)."""


class Output:
    """Writes text to ``stream`` (see the module docstring). ``notice(n)`` gives the line
    (with its newline) that says ``n`` lines were dropped. Thread-safe (and re-entrant: a
    signal handler may log while the thread that it interrupted was writing). Its
    descriptors are closed by ``close()``, or once it is garbage (after its thread wrote
    what waited)."""

    def __init__(self, stream: TextIO, notice: Callable[[int], str],
                 most_bytes: int = MOST_BYTES) -> None:
        self.stream = stream
        self.notice = notice
        self.most_bytes = most_bytes
        self.dropped = 0
        """Lines dropped since the last notice (physical lines: a traceback counts many)."""
        self._cut = False
        """A line was cut short by a write after close (see ``_write_now``)."""
        self._sink = sink_for(stream)
        """The descriptors of the stream's pipe, terminal or socket, what waits for them and
        the thread (None: written through the stream)."""
        if self._sink is not None:
            encoding = codecs.lookup(stream.encoding).name
            self._encoder = codecs.getincrementalencoder(encoding)(stream.errors or "strict")
            if encoding in _BOMS:
                self._encoder.setstate(0)  # no mark before each text: the stream's start had it
            # Once, by close() or when garbage. Not at exit: logging.shutdown, later, still
            # writes through the sink.
            self._release = weakref.finalize(self, self._sink.close)
            self._release.atexit = False

    @property
    def behind(self) -> bool:
        """Whether text waits for the thread (or is being written by it)."""
        return self._sink is not None and self._sink.behind

    def write(self, text: str) -> None:
        """Write ``text`` (whole lines, or nothing) now, as far as the stream takes it, and
        hand the rest to the thread (see the module docstring); the line telling of dropped
        lines goes first, once nothing waits."""
        sink = self._sink
        if sink is not None:
            with sink.changed:
                if not sink.closed:
                    self._write_to(sink, text)
                    return
                if self._write_now(text):
                    return
        if self.dropped:  # counted by an output this one replaced (``setStream``)
            carried, self.dropped = self.dropped, 0
            text = self._notice(carried) + text
        if text:
            self.stream.write(text)
        self.stream.flush()

    def _write_to(self, sink: Sink, text: str) -> None:
        """``write`` on a sink's descriptors (under its lock)."""
        if sink.behind:
            if text:
                self._queue(sink, self._encoder.encode(text), text.count("\n"))
            return
        carried = self.dropped
        head = self._encoder.encode(self._notice(carried)) if carried else b""
        data = head + self._encoder.encode(text)
        self.dropped = 0
        if not data:
            return
        # Held until what the stream did not take is queued: a signal handler that logs
        # meanwhile (this thread, the lock re-entered) queues its text behind this one's.
        sink.holding = True
        try:
            done = sink.attempt_all(data)
        except OSError:
            return  # the stream is gone (closed, a broken pipe): nowhere to say so
        finally:
            sink.holding = False
            sink.settle()  # closed meanwhile (a signal handler): released if nothing waits
        if done == 0:
            lines = data.count(b"\n") + (carried - 1 if carried else 0)
            self._queue(sink, data, lines, first=True)  # (the notice stands for its count)
        elif done < len(data):  # started: the rest goes, whatever the bound says
            rest = data[done:]
            if not sink.put(rest, first=True):
                self.dropped += max(1, rest.count(b"\n"))
                sink.settle()

    def _write_now(self, text: str) -> bool:
        """``write`` once the sink's descriptors are closed (a daemon thread logging after
        ``logging.shutdown``): what the stream takes without waiting goes out, the rest is
        dropped and counted (there is no thread to wait for it any more, and no write may
        wait); False for a regular file or a stream without a descriptor (then the text
        goes through the stream, whose writes never wait on a reader)."""
        carried = self.dropped
        # A line cut by the last such write is ended first, so the next starts a line.
        head = (b"\n" if self._cut else b"") + (
            self._encoder.encode(self._notice(carried)) if carried else b"")
        data = head + self._encoder.encode(text)
        if not data:
            return True
        try:
            done = write_now(self.stream, data)
        except OSError:
            return True  # the stream is gone (closed, a broken pipe): nowhere to say so
        if done is None:
            return False
        if done:
            self._cut = not data[:done].endswith(b"\n")
        if done < len(head):  # the notice did not go out whole: it is told again later
            self.dropped = carried + (max(1, text.count("\n")) if text else 0)
        else:
            self.dropped = data[done:].count(b"\n")
        return True

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the thread to write what waits; whether it did."""
        sink = self._sink
        if sink is None:
            return True
        with sink.changed:
            return sink.changed.wait_for(lambda: not sink.behind, timeout_s)

    def close(self) -> None:
        """Stop using the stream's descriptors: they are closed once the thread has written
        what waits (at once if nothing does) and no other output shares them; later text
        goes out only as far as the stream takes it without waiting."""
        if self._sink is not None:
            self._release()

    def forget(self) -> None:
        """In a forked child: what waits is the parent's to write (and its thread and lock
        are not the child's)."""
        if self._sink is not None:
            self._sink.forget()
        self.dropped = 0

    def _notice(self, count: int) -> str:
        """The notice of ``count`` dropped lines, even if the handler cannot format it."""
        try:
            return self.notice(count)
        except Exception:
            return f"asyncjobs: {count} log lines were dropped: the log output took nothing\n"

    def _queue(self, sink: Sink, data: bytes, lines: int, *, first: bool = False) -> None:
        """Hand ``data`` (``lines`` lines) to the thread, or drop it when too much waits
        (once dropping, every text until the thread is done: they stay in order around the
        notice). Under the sink's lock."""
        if (self.dropped or sink.waiting_bytes + len(data) > self.most_bytes
                or not sink.put(data, first=first)):
            self.dropped += max(1, lines)
