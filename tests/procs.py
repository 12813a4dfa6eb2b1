"""Running ``asyncjobs`` as a subprocess, the way users and deploy tools do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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

    def wait_for(self, text: str, timeout_s: float = 20.0) -> None:
        """Wait until ``text`` appears in the output."""
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
