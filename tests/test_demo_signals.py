"""``asyncjobs demo`` stopped by SIGTERM or SIGHUP, as by a Ctrl-C: its throwaway
redis-server is stopped and its directory removed, and the process ends by the signal
(143 or 129 in a shell). And the throwaway server ends with the process that started it
even when that one is killed (SIGKILL: no cleanup can run), so none is left running.

Each throwaway directory is made under the test's own ``TMPDIR``, so that what is left
behind is this test's alone; a server still running is found by that directory, its working
directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import need_redis_server
from .procs import ROOT, first_line, python_program

pytestmark = [pytest.mark.real_redis]

STARTED = b"Started a throwaway redis-server at redis://127.0.0.1:"


def servers_under(directory: Path) -> list[int]:
    """The live (not zombie) processes working in ``directory`` (redis-server moves into
    its ``--dir``, and rewrites its command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cwd.startswith(f"{directory}{os.sep}") and state != "Z":
            found.append(int(entry))
    return found


def gone_within(directory: Path, wait_s: float) -> list[int]:
    """The servers under ``directory`` still running after ``wait_s`` at most."""
    deadline = time.monotonic() + wait_s
    while (left := servers_under(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def tmpdir_of_its_own(tmp_path: Path) -> Iterator[Path]:
    """A ``TMPDIR`` for the processes a test starts; any server they left is killed after."""
    need_redis_server()
    yield tmp_path
    for pid in servers_under(tmp_path):
        os.kill(pid, signal.SIGKILL)


def start_demo(tmpdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``asyncjobs demo`` (no --redis-url: a throwaway server), once the server is up;
    and the server's port."""
    proc = subprocess.Popen([sys.executable, "-m", "asyncjobs", "demo"], cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = first_line(proc, 60)
    assert line is not None and line.startswith(STARTED), line
    return proc, int(line[len(STARTED):].split(b"/")[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stopped_demo_leaves_no_server_and_no_directory(
        tmpdir_of_its_own: Path, sig: signal.Signals) -> None:
    proc, port = start_demo(tmpdir_of_its_own)
    try:
        assert servers_under(tmpdir_of_its_own)
        time.sleep(0.5)  # jobs running
        proc.send_signal(sig)
        assert proc.wait(15) == -sig  # ended by the signal, as without a handler
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
        assert servers_under(tmpdir_of_its_own) == []  # stopped before the exit
        assert not answers(port)
        assert list(tmpdir_of_its_own.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            pipe.close()


def test_a_killed_demo_leaves_no_server_running(tmpdir_of_its_own: Path) -> None:
    """SIGKILL: nothing of the demo runs, but the server ends with it (its directory, a
    log file, stays: nothing can remove it)."""
    proc, port = start_demo(tmpdir_of_its_own)
    try:
        proc.kill()
        proc.wait(10)
        assert gone_within(tmpdir_of_its_own, 5.0) == []
        assert not answers(port)
    finally:
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            pipe.close()


PROGRAM = """
import sys, time
from asyncjobs._redis.embedded import RedisServer
server = RedisServer()
server.start()
print(server.port, flush=True)
time.sleep(60)
"""


def test_a_throwaway_server_ends_with_the_process_that_started_it(
        tmpdir_of_its_own: Path) -> None:
    with python_program(PROGRAM, env={**os.environ, "TMPDIR": str(tmpdir_of_its_own)}) as proc:
        line = first_line(proc, 30)
        assert line is not None, line
        port = int(line)
        assert answers(port)
        assert servers_under(tmpdir_of_its_own)
        proc.kill()
        proc.wait(10)
        assert gone_within(tmpdir_of_its_own, 5.0) == []
        assert not answers(port)
