"""``asyncjobs demo`` on machines that lack things: no ``redis-server`` on PATH, and a plain
install without the ``testing`` extra (no fakeredis, or no lupa for its Lua scripts).

The missing pieces are simulated in a subprocess: PATH is an empty directory, and a module
is made unimportable by a file of its name, first on PYTHONPATH, that raises ImportError.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .procs import ROOT

pytestmark = [pytest.mark.slow]


def demo(tmp_path: Path, *, unimportable: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    empty_bin = tmp_path / "bin"
    shadow = tmp_path / "shadow"
    empty_bin.mkdir()
    shadow.mkdir()
    for name in unimportable:
        (shadow / f"{name}.py").write_text("raise ImportError('made unimportable')\n")
    env = {**os.environ, "PATH": str(empty_bin), "PYTHONPATH": str(shadow)}
    env.pop("ASYNCJOBS_REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "asyncjobs", "demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("missing", ["fakeredis", "lupa"])
def test_demo_without_any_redis_says_what_to_install(tmp_path: Path, missing: str) -> None:
    done = demo(tmp_path, unimportable=(missing,))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""  # no announcement of a fallback that cannot work
    [line] = done.stderr.splitlines()
    assert line.startswith("asyncjobs: error: the demo needs a Redis: no redis-server on PATH")
    assert "apt-get install redis-server" in line and "brew install redis" in line
    assert 'pip install -e ".[testing]"' in line and "--redis-url" in line


def test_demo_without_redis_server_runs_on_the_in_memory_redis(tmp_path: Path) -> None:
    done = demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No redis-server on PATH: using an in-memory fake Redis (fakeredis)" in done.stdout
    assert "asyncjobs demo (" in done.stdout  # the table of outcomes
    assert "OK: 6 complete, 2 failed" in done.stdout
