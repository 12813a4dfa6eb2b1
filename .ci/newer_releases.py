"""The comparison ``.ci/newer-releases`` prints: the versions a fresh resolve of the dev
extra would install (pip's ``--report`` JSON) against the pins of ``constraints.txt``.

    python .ci/newer_releases.py REPORT.json constraints.txt
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

PROJECT = "asyncjobs-redis"


def canonical(name: str) -> str:
    """A distribution name as PyPI compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: str) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name."""
    found = {}
    for line in constraints.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.lstrip().startswith("#"):
            found[canonical(name)] = version.strip()
    return found


def differences(report: dict[str, Any], constraints: str) -> list[str]:
    """Each package the resolve would install at another version than its pin, or that
    has no pin at all (the project itself left out), one text each, sorted."""
    pinned = pins(constraints)
    newest = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
              for item in report.get("install", [])}
    newest.pop(PROJECT, None)
    return sorted(f"{name} {version} (pinned {pinned[name]})" if name in pinned
                  else f"{name} {version} (not pinned)"
                  for name, version in newest.items() if pinned.get(name) != version)


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as report, open(argv[2], encoding="utf-8") as pinned:
        found = differences(json.load(report), pinned.read())
    if found:
        print("newer releases than constraints.txt: " + "; ".join(found))
        print("run .ci/run --latest, then .ci/update-constraints")
    else:
        print("constraints.txt pins the newest releases pyproject.toml allows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
