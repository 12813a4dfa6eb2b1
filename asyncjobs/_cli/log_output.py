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
count is told in a line of its own before the next text written (``notice``).

Text goes out in pieces of at most ``PIPE_BUF`` bytes ending with a line, which a pipe takes
whole: the lines of processes sharing one (``--processes N``) never cut into each other.
Where no non-blocking open is allowed (a pipe made by another user), ``pwritev`` with
``RWF_NOWAIT`` on the duplicate does the same.

What this costs, by design: the output holds descriptors of its own on the stream's pipe,
so its reader sees the end only once the handler is closed (or collected), and a process
that closes descriptors it did not open (daemonizing) must configure logging again; text
written to the stream by other means (``print(file=sys.stderr)``, a traceback) while the
thread writes may land between the pieces of a line longer than ``PIPE_BUF``. Two outputs
on one pipe (``configure()`` again, while the first still holds lines it cannot write)
keep their order only if the first gets its lines out within the close's wait.

A regular file (whose writes never wait on a reader), a stream without a file descriptor
(``io.StringIO``, a test's capture) and a stream of another class than ``io.TextIOWrapper``
(a wrapper with a ``write`` of its own) are written as ``logging.StreamHandler`` does. So
is a descriptor no non-blocking way is known for (not Linux): there, everything goes through
the thread.
"""

from __future__ import annotations

import codecs
import errno
import io
import os
import select
import socket
import stat
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TextIO

PIPE_BUF = getattr(select, "PIPE_BUF", 512)
"""What a pipe takes whole or not at all (POSIX: 512 bytes at least; Linux: 4,096)."""

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
        self._sink = _sink_for(stream)
        """The descriptors of the stream's pipe, terminal or socket, what waits for them and
        the thread (None: written through the stream)."""
        if self._sink is not None:
            encoding = codecs.lookup(stream.encoding).name
            self._encoder = codecs.getincrementalencoder(encoding)(stream.errors or "strict")
            if encoding in _BOMS:
                self._encoder.setstate(0)  # no mark before each text: the stream's start had it
            # Not at exit: logging.shutdown, later, still writes through the sink.
            weakref.finalize(self, self._sink.close).atexit = False

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
        if self.dropped:  # counted by an output this one replaced (``setStream``)
            carried, self.dropped = self.dropped, 0
            text = self._notice(carried) + text
        if text:
            self.stream.write(text)
        self.stream.flush()

    def _write_to(self, sink: _Sink, text: str) -> None:
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
        if done == 0:
            lines = data.count(b"\n") + (carried - 1 if carried else 0)
            self._queue(sink, data, lines, first=True)  # (the notice stands for its count)
        elif done < len(data):  # started: the rest goes, whatever the bound says
            rest = data[done:]
            if not sink.put(rest, first=True):
                self.dropped += max(1, rest.count(b"\n"))

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the thread to write what waits; whether it did."""
        sink = self._sink
        if sink is None:
            return True
        with sink.changed:
            return sink.changed.wait_for(lambda: not sink.behind, timeout_s)

    def close(self) -> None:
        """Stop using the stream's descriptors: they are closed once the thread has written
        what waits (at once if nothing does); later text goes through the stream."""
        if self._sink is not None:
            self._sink.close()

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

    def _queue(self, sink: _Sink, data: bytes, lines: int, *, first: bool = False) -> None:
        """Hand ``data`` (``lines`` lines) to the thread, or drop it when too much waits
        (once dropping, every text until the thread is done: they stay in order around the
        notice). Under the sink's lock."""
        if (self.dropped or sink.waiting_bytes + len(data) > self.most_bytes
                or not sink.put(data, first=first)):
            self.dropped += max(1, lines)


class _Sink:
    """What an output shares with its thread: its own descriptors of the stream's pipe,
    terminal or socket (a duplicate for the thread's blocking writes; ``attempt``, a write
    that never waits), what waits for the thread, and the lock. The thread holds this, not
    the output, so an output dropped without ``close()`` is collected and its descriptors
    closed."""

    def __init__(self, fd: int, attempt: _Try | None) -> None:
        self.fd = fd
        self.attempt = attempt
        self.closed = False
        self._closing = False
        self.forget()

    def forget(self) -> None:
        """Start afresh (a forked child: the parent's thread, lock and lines are not its)."""
        self.changed = threading.Condition(threading.RLock())
        self.waiting: list[bytes] = []
        self.waiting_bytes = 0
        self.writing = False
        self.holding = False
        """True while a write is between its attempt and queueing what was not taken."""
        self.thread: threading.Thread | None = None

    @property
    def behind(self) -> bool:
        """Whether text waits for the thread (or is being written by it)."""
        return bool(self.waiting) or self.writing or self.holding

    def put(self, data: bytes, *, first: bool = False) -> bool:
        """Queue ``data`` for the thread (started on first use), before what waits with
        ``first``; False if no thread could start (then nothing is queued). Under the
        lock."""
        if self.thread is None:
            thread = threading.Thread(target=_drain, args=(self,), daemon=True,
                                      name="asyncjobs-log-output")
            try:
                thread.start()
            except RuntimeError:  # can't start new thread (a pids limit...)
                return False
            self.thread = thread
        if first:
            self.waiting.insert(0, data)
        else:
            self.waiting.append(data)
        self.waiting_bytes += len(data)
        self.changed.notify_all()
        return True

    def attempt_all(self, data: bytes) -> int:
        """Write what the stream takes of ``data`` without waiting, in pieces that end with
        a line (see ``_pieces``); how many bytes it took (0 with no such write)."""
        if self.attempt is None:
            return 0
        done = 0
        for piece in _pieces(data):
            took = self.attempt(piece)
            if took is None:  # not on this descriptor, after all: the thread writes all
                self.attempt = None
                return done
            done += took
            if took < len(piece):
                break
        return done

    def close(self) -> None:
        """Close the descriptors once nothing waits (the thread closes them when done)."""
        with self.changed:
            self._closing = True
            if not self.behind:
                self.release()
            self.changed.notify_all()

    @property
    def closing(self) -> bool:
        """Whether the descriptors are to be closed once nothing waits."""
        return self._closing

    def release(self) -> None:
        """Close the descriptors (under the lock; once)."""
        if self.closed:
            return
        self.closed = True
        try:
            os.close(self.fd)
            if self.attempt is not None:
                self.attempt.close()
        except OSError:
            pass


def _drain(sink: _Sink) -> None:
    """The thread: write what waits, in order, until the sink is closed."""
    while True:
        with sink.changed:
            sink.changed.wait_for(lambda: bool(sink.waiting) or sink.closing)
            if not sink.waiting:  # closing, and nothing left
                sink.release()
                sink.thread = None
                return
            sink.writing = True
            data = b"".join(sink.waiting)
            sink.waiting.clear()  # (still counted in waiting_bytes until written)
        try:
            _write_all(sink.fd, data)
        except OSError:
            pass  # the stream is gone (closed, a broken pipe): nowhere to say so
        finally:
            with sink.changed:
                sink.writing = False
                sink.waiting_bytes -= len(data)
                sink.changed.notify_all()


def _sink_for(stream: TextIO) -> _Sink | None:
    """A sink for ``stream``'s descriptor, or None to write through the stream (see the
    module docstring)."""
    if type(stream) is not io.TextIOWrapper:
        return None
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    if stat.S_ISREG(mode):
        return None
    stream.flush()  # what the stream holds goes first
    attempt = _socket_try(fd) if stat.S_ISSOCK(mode) else _reopened_try(fd)
    try:
        own = os.dup(fd)
    except OSError:  # out of descriptors: write through the stream
        if attempt is not None:
            attempt.close()
        return None
    if attempt is None and not stat.S_ISSOCK(mode):
        attempt = _Try(own, owned=False, nowait=True)  # a pipe we may not open again
    return _Sink(own, attempt)


class _Try:
    """A write that never waits: on a non-blocking descriptor of its own (closed with the
    output), a socket (``MSG_DONTWAIT``), or ``pwritev(RWF_NOWAIT)`` on the sink's own
    duplicate (a pipe this process may not open again: made by another user)."""

    def __init__(self, fd: int, sock: socket.socket | None = None, *, owned: bool = True,
                 nowait: bool = False) -> None:
        self.fd = fd
        self._sock = sock
        self._owned = owned
        self._nowait = nowait

    def __call__(self, data: bytes) -> int | None:
        """How many bytes the stream took (0: none without waiting); None when this kind
        of write does not work on the descriptor."""
        try:
            if self._sock is not None:
                return self._sock.send(data, socket.MSG_DONTWAIT)
            if self._nowait:
                return os.pwritev(self.fd, [data], -1, os.RWF_NOWAIT)
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if self._nowait and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ESPIPE,
                                              errno.ENOSYS):
                return None
            raise

    def close(self) -> None:
        """Close the descriptor (if it is this write's own)."""
        if self._sock is not None:
            self._sock.close()
        elif self._owned:
            os.close(self.fd)


def _reopened_try(fd: int) -> _Try | None:
    """A non-blocking write to what ``fd`` writes to (a pipe, a terminal), opened again
    through ``/proc/self/fd`` (so the flag is not the stream's): None where that fails."""
    try:
        own = os.open(f"/proc/self/fd/{fd}",
                      os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    return _Try(own)


def _socket_try(fd: int) -> _Try | None:
    """A send that never waits (``MSG_DONTWAIT``) on the socket ``fd`` writes to."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    return _Try(sock.fileno(), sock)


def _pieces(data: bytes) -> Iterator[bytes]:
    """``data`` in pieces of at most ``PIPE_BUF`` bytes that end with a line (a line longer
    than that is a piece of its own): a pipe takes each whole or not at all, so the lines
    of processes sharing it (``--processes N``) never cut into each other."""
    start, size = 0, len(data)
    while start < size:
        end = start + PIPE_BUF
        if end < size:
            cut = data.rfind(b"\n", start, end)
            if cut >= 0:
                end = cut + 1
            else:
                found = data.find(b"\n", end)
                end = size if found < 0 else found + 1
        yield data[start:end]
        start = end


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, waiting as long as it takes (a write may take part
    of it; a descriptor someone made non-blocking says EAGAIN: wait until it takes more)."""
    for piece in _pieces(data):
        _write_piece(fd, piece)


def _write_piece(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (see ``_write_all``)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            poller.poll(1000)
        except InterruptedError:  # pragma: no cover - PEP 475 retries these
            continue
        except OSError as exc:
            if exc.errno == errno.EINTR:  # pragma: no cover
                continue
            raise
