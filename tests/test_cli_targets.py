"""``asyncjobs worker TARGET`` given a target that is not an importable ``package.module``
(a file path, a relative name), or whose module raises while Python imports it: one line,
``asyncjobs: error: ...``, exit 2; for a module that raises, the line is followed by the
application's own frames only (none of runpy, importlib or asyncjobs), as Python shows
them, and under ``--processes`` the supervisor stops on it with the same line instead of
restarting children that cannot start."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from asyncjobs._cli.target import ImportFailed, load
from asyncjobs._redis.embedded import free_port
from asyncjobs.exceptions import ConfigurationError

from .procs import run_cli

NOWHERE = f"redis://127.0.0.1:{free_port()}/0"  # never reached: the import fails first


def worker(target: str, *args: str, where: Path | None = None,
           timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``asyncjobs worker TARGET`` with ``where`` importable (PYTHONPATH)."""
    env = {}
    if where is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(where), os.environ.get("PYTHONPATH", "")) if p)
    return run_cli("worker", target, "--redis-url", NOWHERE, *args, env=env,
                   timeout_s=timeout_s)


@pytest.fixture
def package(tmp_path: Path) -> tuple[Path, str]:
    """An empty package of a name of its own, in ``tmp_path``."""
    name = f"ajt_targets_{secrets.token_hex(4)}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    return tmp_path, name


def frames_of(stderr: str) -> list[str]:
    """The files of the frames a traceback shows."""
    return re.findall(r'^  File "([^"]+)"', stderr, re.MULTILINE)


# -- B: not a module's dotted name ------------------------------------------------------


@pytest.mark.parametrize("target", ["../x:worker", ".jobs:worker", "..jobs:worker",
                                    "app.:worker", "app..jobs:worker", "app/jobs:worker",
                                    "app/jobs.py:worker"])
def test_a_relative_name_or_a_file_path_is_one_line(target: str) -> None:
    done = worker(target)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"asyncjobs: error: expected 'package.module:attribute', got {target!r}: ")


@pytest.mark.parametrize("target", ["../x:worker", ".jobs:worker"])
def test_load_refuses_a_relative_name(target: str) -> None:
    with pytest.raises(ConfigurationError, match=r"expected 'package\.module:attribute'"):
        load(target)


# -- C: a module that raises while it is imported -----------------------------------------


def test_a_module_that_raises_at_import_is_a_line_and_its_own_frames(
        package: tuple[Path, str]) -> None:
    where, name = package
    boom = where / name / "boom.py"
    boom.write_text("import os\n\nraise RuntimeError('boom at import')\n")
    done = worker(f"{name}.boom:worker", where=where)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == (
        f"asyncjobs: error: cannot import '{name}.boom': RuntimeError: boom at import")
    assert lines[1] == "Traceback (most recent call last):"
    assert frames_of(done.stderr) == [str(boom)]
    assert lines[-1] == "RuntimeError: boom at import"


def test_a_syntax_error_shows_file_line_and_caret(package: tuple[Path, str]) -> None:
    where, name = package
    syn = where / name / "syn.py"
    syn.write_text("import os\nx = (\n")
    done = worker(f"{name}.syn:worker", where=where)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith(
        f"asyncjobs: error: cannot import '{name}.syn': SyntaxError: "), done.stderr
    assert lines[1:] == [f'  File "{syn}", line 2', "    x = (", "        ^",
                         "SyntaxError: '(' was never closed"], done.stderr


def test_a_failure_deeper_in_the_application_shows_each_of_its_frames(
        package: tuple[Path, str]) -> None:
    """The module imports another of the application's, which fails in a function: every
    frame of the application, none of the import machinery between them."""
    where, name = package
    top, helper = where / name / "top.py", where / name / "helper.py"
    top.write_text(f"import {name}.helper\n")
    helper.write_text("def f():\n    raise KeyError('deep')\n\n\nf()\n")
    done = worker(f"{name}.top:worker", where=where)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"asyncjobs: error: cannot import '{name}.top': KeyError: 'deep'"
    assert frames_of(done.stderr) == [str(top), str(helper), str(helper)]
    assert lines[-1] == "KeyError: 'deep'"


def test_a_missing_dependency_names_it(package: tuple[Path, str]) -> None:
    where, name = package
    (where / name / "dep.py").write_text("import ajt_no_such_dependency\n")
    done = worker(f"{name}.dep:worker", where=where)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == (f"asyncjobs: error: cannot import '{name}.dep': ModuleNotFoundError: "
                        "No module named 'ajt_no_such_dependency'")
    assert frames_of(done.stderr) == [str(where / name / "dep.py")]


def test_load_keeps_the_error_for_a_program(package: tuple[Path, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    where, name = package
    (where / name / "bad.py").write_text("raise ValueError('no')\n")
    monkeypatch.syspath_prepend(str(where))
    with pytest.raises(ImportFailed) as caught:
        load(f"{name}.bad:worker")
    assert str(caught.value) == f"cannot import '{name}.bad': ValueError: no"
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.details.endswith("ValueError: no\n")


def test_under_processes_a_module_that_raises_is_the_same_line(
        package: tuple[Path, str]) -> None:
    where, name = package
    (where / name / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    done = worker(f"{name}.boom:worker", "--processes", "2", where=where)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[0] == (
        f"asyncjobs: error: cannot import '{name}.boom': RuntimeError: boom at import")


def test_under_processes_children_that_cannot_import_stop_the_supervisor(
        package: tuple[Path, str]) -> None:
    """The module imports in the supervisor but raises in each child (it reads the
    variable only children have): the first child's line, then the supervisor stops at once
    with exit 2, restarting nothing (before: the child's whole traceback, then exit 1)."""
    where, name = package
    (where / name / "kids.py").write_text(
        "import os\n\nimport asyncjobs\n\n"
        "if 'ASYNCJOBS_WORKER_PROCESS' in os.environ:\n"
        "    raise RuntimeError('boom in a child')\n"
        "worker = asyncjobs.Worker([])\n")
    done = worker(f"{name}.kids:worker", "--processes", "2", where=where, timeout_s=20)
    assert done.returncode == 2, done.stderr
    line = f"asyncjobs: error: cannot import '{name}.kids': RuntimeError: boom in a child"
    assert done.stderr.splitlines().count(line) == 1, done.stderr
    assert "exited 2 (a configuration error): stopping" in done.stderr
    assert "restarting" not in done.stderr
    assert frames_of(done.stderr) == [str(where / name / "kids.py")]


def test_load_keeps_a_missing_dependency_a_module_not_found_error(
        package: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that catches ``ModuleNotFoundError`` (what ``load`` raised before) still
    can; the CLI reads it as the configuration error it is."""
    where, name = package
    (where / name / "dep.py").write_text("import ajt_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(where))
    with pytest.raises(ModuleNotFoundError) as caught:
        load(f"{name}.dep:worker")
    assert isinstance(caught.value, ImportFailed)
    assert caught.value.name == "ajt_no_such_dependency"
