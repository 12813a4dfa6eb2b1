"""A Ctrl-C while the ``asyncjobs`` command is still importing (before any handler of ours)
ends it quietly, as SIGINT's default action does, never with a ``KeyboardInterrupt``
traceback.

The command's entry point (``_asyncjobs_entry``) lies outside the package for this: an entry
inside it (``asyncjobs.cli:main``, before) runs only once the package and its dependencies
are imported, about a quarter of a second of a start in which a Ctrl-C printed a traceback
(37 of 40 presses 0 to 0.2 s after the start, measured). Here a ``sitecustomize`` holds the
import of one module until the test presses Ctrl-C, so each run lands where it means to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .procs import ROOT, first_line

PAUSE = '''
import importlib.abc
import os
import sys
import time


class _Pause(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == os.environ.get("PAUSE_AT_IMPORT"):
            os.write(1, b"importing\\n")
            time.sleep(30)
        return None


sys.meta_path.insert(0, _Pause())
'''

SCRIPT = Path(sys.executable).parent / "asyncjobs"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("module", ["redis", "msgspec", "asyncjobs._worker.worker", "typer"])
def test_ctrl_c_while_the_command_imports_ends_it_quietly(tmp_path: Path, module: str) -> None:
    """Ctrl-C while ``asyncjobs worker`` imports ``module`` (a dependency, the package
    itself, the command line's parser): the process ends by SIGINT with nothing on
    stderr."""
    assert SCRIPT.is_file(), f"the asyncjobs script is not installed beside {sys.executable}"
    (tmp_path / "sitecustomize.py").write_text(PAUSE)
    env = {**os.environ, "PAUSE_AT_IMPORT": module,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.Popen([str(SCRIPT), "worker", "tests.apps.basic:worker",
                             "--redis-url", "redis://127.0.0.1:1/0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert first_line(proc, 30) == b"importing\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert b"Traceback" not in err, err.decode(errors="replace")[-3000:]
    assert (proc.returncode, err) == (-signal.SIGINT, b"")


@pytest.mark.timeout(60)
def test_the_script_s_entry_point_is_the_module_outside_the_package() -> None:
    """The installed script calls ``_asyncjobs_entry:main`` (an entry inside the package runs
    only after the package is imported), and the worker processes start with it too."""
    from asyncjobs._cli import entry

    assert "_asyncjobs_entry" in SCRIPT.read_text()
    assert entry.module() == "_asyncjobs_entry"
    done = subprocess.run([sys.executable, "-c", "import _asyncjobs_entry as e; "
                           "print(e.__file__)"], cwd="/", capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout.strip().endswith("_asyncjobs_entry.py")
