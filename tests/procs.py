"""Running ``asyncjobs`` as a subprocess, the way users and deploy tools do."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def python_program(program: str, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``python -c program`` in the repository, stdout (and, unless ``popen`` says else,
    stderr) on pipes the test reads or leaves unread; killed if still running at the end,
    its pipes closed."""
    popen.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT,
                            stdout=subprocess.PIPE, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def first_line(proc: subprocess.Popen[bytes], wait_s: float) -> bytes | None:
    """The first line ``proc`` prints on stdout within ``wait_s``, or None."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], wait_s)
    return proc.stdout.readline() if ready else None


class WorkerProcess:
    """``asyncjobs worker ...`` in a subprocess, with its output captured to a file."""

    def __init__(self, target: str, redis_url: str, prefix: str, *args: str,
                 env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.log_path = (log_dir or Path("/tmp")) / f"worker-{prefix}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "TEST_PREFIX": prefix, "ASYNCJOBS_REDIS_URL": redis_url,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asyncjobs", "worker", target, *args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = 60.0) -> None:
        """Wait until ``text`` appears in the output. The default deadline is generous: a
        worker took 7 s to be ready on a loaded two-core machine (0.4-1.1 s idle), and no
        test here is about start-up time; a process that exits fails at once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen; output:\n{self.output[-4000:]}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap."""
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout_s: float = 60.0) -> int:
        """Wait for exit; returns the exit code."""
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        """Kill if still running; close the log."""
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


@contextmanager
def workers(target: str, redis_url: str, prefix: str, count: int,
            **env: str) -> Iterator[list[WorkerProcess]]:
    """``count`` worker processes, started and ready; killed on the way out. The list may be
    changed inside the block (a test replacing a dead worker): whatever it holds is closed."""
    procs = [WorkerProcess(target, redis_url, prefix, env=env) for _ in range(count)]
    try:
        for proc in procs:
            proc.wait_for("ready:")
        yield procs
    finally:
        for proc in procs:
            proc.close()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
            ) -> subprocess.CompletedProcess[str]:
    """Run ``asyncjobs ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout_s, env={**os.environ, **(env or {})},
    )


@contextmanager
def uvicorn(app: str, env: dict[str, str], *, cwd: Path = ROOT, probe: str = "/docs",
            timeout_s: float = 60.0) -> Iterator[str]:
    """``app`` under ``python -m uvicorn`` in a subprocess; yields its base URL once it
    answers HTTP on ``probe`` (any status). Terminated on the way out.

    The port is the one the kernel gives uvicorn's own bind (``--port 0``, read from its
    "running on" line): a port picked free beforehand can be taken by another process (a
    server, or a client's outgoing connection) while uvicorn imports the app, and then the
    probe could even reach someone else's server. Start-up is waited for as an event, up
    to ``timeout_s`` (imports take seconds on a loaded machine); a uvicorn that exits
    fails at once, with its output."""
    log_path = Path("/tmp") / f"uvicorn-{os.getpid()}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "0",
             "--log-level", "info", "--no-access-log"],
            cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = _wait_for_http(proc, log_path, probe, timeout_s)
            yield base
        finally:
            stop(proc)
            log_path.unlink(missing_ok=True)  # a failure has shown its output already


def _wait_for_http(proc: subprocess.Popen[bytes], log_path: Path, probe: str,
                   timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    base = ""
    while True:
        output = log_path.read_text(errors="replace")
        if proc.poll() is not None:
            raise AssertionError(f"uvicorn exited ({proc.returncode}):\n{output[-4000:]}")
        if not base and (found := re.search(r"running on (http://[\d.]+:\d+)", output)):
            base = found[1]
        if base:
            try:
                httpx.get(f"{base}{probe}", timeout=5)
                return base
            except httpx.TransportError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"uvicorn did not answer within {timeout_s:g} s:\n"
                                 f"{output[-4000:]}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM ``proc``, then SIGKILL if it has not ended within 10 s; waits for it."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
