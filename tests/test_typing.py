"""The public API type-checks as users write it, and typed mistakes are caught by mypy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = Path("tests/typecheck/check_typing.py")
IGNORE = re.compile(r"  # type: ignore\[([a-z-]+)\]$")


def mypy(target: Path | str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml",
         *extra, str(target)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )


def test_check_typing_passes_mypy_strict() -> None:
    result = mypy(CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_line_is_a_type_error_with_that_code(tmp_path: Path) -> None:
    lines = (ROOT / CHECKED).read_text().splitlines()
    expected: dict[int, str] = {}
    stripped = []
    for number, line in enumerate(lines, start=1):
        found = IGNORE.search(line)
        if found:
            expected[number] = found.group(1)
            line = line[: found.start()]
        stripped.append(line)
    assert len(expected) >= 8
    copy = tmp_path / "check_typing_stripped.py"
    copy.write_text("\n".join(stripped) + "\n")

    result = mypy(copy, "--cache-dir", str(tmp_path / "cache"))
    errors: dict[int, set[str]] = {}
    for found in re.finditer(r"^.*?:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M):
        errors.setdefault(int(found.group(1)), set()).add(found.group(2))
    assert {n: {code} for n, code in expected.items()} == errors, result.stdout

