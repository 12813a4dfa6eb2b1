"""A throwaway ``redis-server`` on a free port, for ``asyncjobs demo`` and test suites.

Runs in a temporary directory, with or without an append-only file, and can be killed and
restarted on the same port (to test outages). On Linux it ends with the process that
started it, even one killed by SIGKILL (see ``_dying_with``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

_BELOW_EPHEMERAL = 10_000
"""The lowest port ``free_port`` picks from, up to the start of the ephemeral range."""


def _ephemeral_start() -> int:
    """Where the kernel's range of ports for outgoing connections starts (32768 when it
    cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1, picked at random below the
    ephemeral range when there is room: a port the kernel hands out would otherwise be
    taken, now and then, by some connection's source port before the server binds it (a
    server that still loses its port is started again on another: see ``start``)."""
    top = _ephemeral_start()
    for _ in range(50 if top > _BELOW_EPHEMERAL + 1000 else 0):
        port = random.randrange(_BELOW_EPHEMERAL, top)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_path() -> str | None:
    """The ``redis-server`` binary on PATH, if any."""
    return shutil.which("redis-server")


class RedisServer:
    """One ``redis-server`` process; ``start()`` returns its URL."""

    def __init__(self, *, appendonly: bool = False, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        binary = redis_server_path()
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = binary
        self.port = port or free_port()
        self._port_chosen = port is None
        self._started = False  # once it has run, it starts again on the same ports only
        self.appendonly = appendonly
        self.extra_args = extra_args
        self._dir = tempfile.TemporaryDirectory(prefix="asyncjobs-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def directory(self) -> Path:
        """The server's working directory (AOF files live here)."""
        return Path(self._dir.name)

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server and wait until it answers PING; returns its URL. At its first
        start, a server on ports this object chose that finds one of them taken (another
        process bound it since ``free_port`` saw it free) is started on new ones, up to 5
        times; a restart keeps its ports."""
        for tries_left in range(4, -1, -1):
            try:
                url = self._start_once(timeout_s)
            except _PortTaken:
                if not self._port_chosen or self._started or not tries_left:
                    raise
                self.new_ports()
            else:
                self._started = True
                return url
        raise AssertionError("unreachable")

    def new_ports(self) -> None:
        """Pick new free ports for a server that lost one at start."""
        self.port = free_port()

    def _start_once(self, timeout_s: float) -> str:
        self.process = subprocess.Popen(
            self.arguments(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_dying_with(os.getpid()),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                err = err or self._log_tail()
                self.stop()
                if "Address already in use" in err:
                    raise _PortTaken(f"redis-server exited at start: {err}")
                raise RuntimeError(f"redis-server exited at start: {err}")
            if self.ping():
                return self.url
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server did not answer within {timeout_s} s")

    def arguments(self) -> list[str]:
        """The ``redis-server`` command line."""
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", self._dir.name, "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec", "--logfile", str(self.directory / "redis.log"),
            *self.extra_args,
        ]

    def ping(self) -> bool:
        """True if the server answers (even "authentication required"), and is not loading."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH", b"-NOPERM"))

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGKILL with ``kill`` (no final AOF write), else SIGTERM."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self, *, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop (or kill) and start again on the same port and directory."""
        self.stop(kill=kill)
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()

    def _log_tail(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _dying_with(parent: int) -> Callable[[], None] | None:
    """What makes the server end (SIGTERM) when the process that starts it does, even by
    SIGKILL, so that no throwaway server is left running (Linux's ``PR_SET_PDEATHSIG``;
    elsewhere None: nothing). Only for a server started by the main thread: the kernel sends
    the signal when the *thread* that started the child ends, and the main thread lasts as
    long as the process. ``prctl`` is looked up here, so the child (between fork and exec)
    only calls it."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
            threading.main_thread()):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it ended before the prctl: no server
            os._exit(1)

    return in_child


_PR_SET_PDEATHSIG = 1


class _PortTaken(RuntimeError):
    """redis-server could not listen on a port: another process holds it."""
