"""The README's sizing table (*Running Redis for asyncjobs*) is what
``benchmarks/redis_bytes.py`` measured, and that script runs.

No memory figure is asserted against a bound here: the script measures, the README quotes
its last results file, and this checks that the two agree and that the parts it names add up
to what it measured (so a field added to the record shows up as a gap, not silently)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import need_redis_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "redis_bytes.json"


def readme_table() -> dict[str, int]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("- **Sizing.**"):text.index("## Scaling out")]
    rows = re.findall(r"^\s*\| ([a-z][^|]*?) \| (\d+) \|", section, re.MULTILINE)
    return {name.split(",")[0]: int(value) for name, value in rows}


def test_the_readme_quotes_the_last_measurement() -> None:
    measured = json.loads(RESULTS.read_text())
    per_job, parts = measured["per_job_bytes"], measured["parts_bytes"]
    assert readme_table() == {"waiting": round(per_job["waiting"]),
                              "complete": round(per_job["complete"]),
                              "dead-lettered": round(per_job["dead"])}
    section = (ROOT / "README.md").read_text().split("- **Sizing.**")[1][:3000]
    for name, figure in (("stream entry", parts["stream entry"]),
                         ("record's key", parts["empty key"]), ("TTL", parts["TTL"])):
        assert f"({round(figure)})" in section, (name, figure)
    assert f"({measured['key_name_bytes']} bytes" in section


@pytest.mark.slow
@pytest.mark.real_redis
def test_the_script_measures_parts_that_add_up(tmp_path: Path) -> None:
    need_redis_server()  # the script starts its own
    out = tmp_path / "bytes.json"
    run = subprocess.run([sys.executable, "benchmarks/redis_bytes.py", "--jobs", "2000",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    per_job, parts = result["per_job_bytes"], result["parts_bytes"]
    waiting_fields = sum(result["record_fields_waiting"].values())
    assert set(result["record_fields_waiting"]) == {"j", "a", "s", "e"}
    assert set(result["record_fields_complete"]) >= {"j", "a", "s", "st", "et", "r"}
    # A waiting job is its stream entry, its record's key and the record's fields: within
    # 15 % (allocator rounding, the keyspace's table growth), not a byte more unexplained.
    explained = parts["stream entry"] + parts["empty key"] + waiting_fields
    assert abs(per_job["waiting"] - explained) <= 0.15 * explained, (per_job, explained)
    complete_fields = sum(result["record_fields_complete"].values())
    explained = (parts["empty key"] + parts["TTL"] + complete_fields
                 + sum(result["indexes_complete"].values()))
    assert abs(per_job["complete"] - explained) <= 0.15 * explained, (per_job, explained)
    assert per_job["dead"] > per_job["complete"]  # the error history and the letter
