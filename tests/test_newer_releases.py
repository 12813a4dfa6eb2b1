"""``.ci/newer-releases``' comparison (``.ci/newer_releases.py``): what a fresh resolve
would install against what ``constraints.txt`` pins."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("newer_releases",
                                                  ROOT / ".ci" / "newer_releases.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(*installed: tuple[str, str]) -> dict[str, Any]:
    return {"install": [{"metadata": {"name": n, "version": v}} for n, v in installed]}


CONSTRAINTS = """# Pinned versions ...
# on 2026-11-29 with Python 3.11.7: a comment that looks like pin==1.0 is no pin
redis==8.1.0
typing_extensions==4.15.0
Jinja2==3.1.6
"""


def test_a_newer_release_an_unpinned_package_and_name_spellings() -> None:
    """A newer version is named with its pin; a package with no pin is named; names compare
    as PyPI compares them (case, ``_`` and ``-``); the project itself and packages at
    their pin are not listed; comment lines are no pins."""
    found = _module().differences(_report(
        ("redis", "8.2.0"), ("typing-extensions", "4.15.0"), ("jinja2", "3.1.6"),
        ("pin", "1.0"), ("asyncjobs-redis", "0.1.0")), CONSTRAINTS)
    assert found == ["pin 1.0 (not pinned)", "redis 8.2.0 (pinned 8.1.0)"]


def test_everything_at_its_pin_lists_nothing() -> None:
    assert _module().differences(_report(("redis", "8.1.0"), ("Jinja2", "3.1.6")),
                                 CONSTRAINTS) == []


def test_the_script_says_so_in_one_line_each_way(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(CONSTRAINTS)
    outputs = []
    for redis_version in ("8.1.0", "8.2.0"):
        report = tmp_path / f"{redis_version}.json"
        report.write_text(json.dumps(_report(("redis", redis_version))))
        outputs.append(subprocess.run(
            [sys.executable, str(ROOT / ".ci" / "newer_releases.py"), str(report),
             str(constraints)], capture_output=True, text=True, check=True).stdout)
    assert outputs == [
        "constraints.txt pins the newest releases pyproject.toml allows\n",
        "newer releases than constraints.txt: redis 8.2.0 (pinned 8.1.0)\n"
        "run .ci/run --latest, then .ci/update-constraints\n",
    ]
