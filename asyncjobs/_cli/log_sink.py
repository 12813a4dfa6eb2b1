"""The descriptors behind a ``log_output.Output``: its own on the stream's pipe, terminal or
socket, a write that never waits (a non-blocking reopen through ``/proc/self/fd``,
``MSG_DONTWAIT`` on a socket, ``pwritev(RWF_NOWAIT)`` on a pipe it may not open again), and
a thread that waits on the stream instead, writing what waits in order, in pieces of at
most ``PIPE_BUF`` bytes that end with a line. See ``log_output`` for what is written when.

One sink per pipe, terminal or socket (by its device and inode): every output on it in this
process (``configure()`` again, ``setStream``, stdout and stderr on one pipe) shares its
queue, thread and lock, so their lines go out in the order they were written. The
descriptors are closed once every output using the sink has closed and nothing waits.
"""

from __future__ import annotations

import errno
import io
import os
import select
import socket
import stat
import threading
from collections.abc import Iterator
from typing import TextIO

PIPE_BUF = getattr(select, "PIPE_BUF", 512)
"""What a pipe takes whole or not at all (POSIX: 512 bytes at least; Linux: 4,096)."""


class Sink:
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
        self.users = 1
        """Outputs using the sink that have not closed it."""
        self.forget()

    def share(self) -> bool:
        """One more output uses the sink; False if its descriptors are closed already."""
        with self.changed:
            if self.closed:
                return False
            self.users += 1
            self._closing = False  # (the thread, if still running, goes on waiting)
            return True

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
        done, works = _attempt_pieces(self.attempt, data)
        if not works:  # not on this descriptor, after all: the thread writes all
            self.attempt = None
        return done

    def close(self) -> None:
        """One output stops using the sink; after the last, close the descriptors once
        nothing waits (the thread closes them when done)."""
        with self.changed:
            self.users = max(0, self.users - 1)
            if self.users:
                return
            self._closing = True
            if not self.behind:
                self.release()
            self.changed.notify_all()

    def settle(self) -> None:
        """Close the descriptors if every user has closed the sink and nothing waits (a
        close that came while a write held the sink: under the lock)."""
        if self._closing and not self.behind:
            self.release()

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


def _drain(sink: Sink) -> None:
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


def sink_for(stream: TextIO) -> Sink | None:
    """A sink for ``stream``'s descriptor, or None to write through the stream (see the
    module docstring)."""
    if type(stream) is not io.TextIOWrapper:
        return None
    try:
        fd = stream.fileno()
        status = os.fstat(fd)
    except (OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    mode = status.st_mode
    if stat.S_ISREG(mode):
        return None
    stream.flush()  # what the stream holds goes first
    key = (status.st_dev, status.st_ino)
    with _sinks_lock:
        shared = _sinks.get(key)
        if shared is not None and shared.share():
            return shared
        attempt = _socket_try(fd) if stat.S_ISSOCK(mode) else _reopened_try(fd)
        try:
            own = os.dup(fd)
        except OSError:  # out of descriptors: write through the stream
            if attempt is not None:
                attempt.close()
            return None
        if attempt is None and not stat.S_ISSOCK(mode):
            attempt = _Try(own, owned=False, nowait=True)  # a pipe we may not open again
        sink = _sinks[key] = Sink(own, attempt)
        return sink


def write_now(stream: TextIO, data: bytes) -> int | None:
    """Write what ``stream``'s pipe, terminal or socket takes of ``data`` without waiting,
    in pieces that end with a line, through a descriptor made for this call only (an output
    whose sink is closed): how many bytes it took (0 where no write that never waits works
    on it: a terminal another user owns, not Linux), or None for a regular file or a stream
    without a descriptor, whose writes never wait on a reader."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    attempt = _socket_try(fd) if stat.S_ISSOCK(mode) else _reopened_try(fd)
    if attempt is None and not stat.S_ISSOCK(mode):
        attempt = _Try(fd, owned=False, nowait=True)  # a pipe we may not open again
    if attempt is None:
        return 0
    try:
        return _attempt_pieces(attempt, data)[0]
    finally:
        attempt.close()


_sinks: dict[tuple[int, int], Sink] = {}
"""The sink of each pipe, terminal or socket (device, inode); a closed one stays until the
next output on its stream replaces it."""
_sinks_lock = threading.RLock()
"""Re-entrant: a signal handler may set up logging while its thread is in ``sink_for``."""


def _after_fork() -> None:
    """In a forked child: the parent's locks may have been held by another of its threads,
    and every sink's thread and waiting text are the parent's (a sink no handler reaches
    any more, whose thread was still writing, included)."""
    global _sinks_lock
    _sinks_lock = threading.RLock()
    for sink in _sinks.values():
        sink.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _attempt_pieces(attempt: _Try, data: bytes) -> tuple[int, bool]:
    """Write what the stream takes of ``data`` through ``attempt``, in pieces that end with
    a line (see ``_pieces``): how many bytes it took, and False if that kind of write does
    not work on the descriptor (found at the first piece that tried it)."""
    done = 0
    for piece in _pieces(data):
        took = attempt(piece)
        if took is None:
            return done, False
        done += took
        if took < len(piece):
            break
    return done, True


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
                nowait = getattr(os, "RWF_NOWAIT", None)
                if nowait is None:  # not Linux
                    return None
                return os.pwritev(self.fd, [data], -1, nowait)
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
