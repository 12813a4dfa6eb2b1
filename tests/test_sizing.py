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
    return {name: int(value) for name, value in rows}


def test_the_readme_quotes_the_last_measurement() -> None:
    measured = json.loads(RESULTS.read_text())
    per_job, parts = measured["per_job_bytes"], measured["parts_bytes"]
    assert readme_table() == {"waiting": round(per_job["waiting"]),
                              "complete, kept for `result_ttl`": round(per_job["complete"]),
                              "complete, alone in its hash": round(parts["alone in its hash"]),
                              "dead-lettered": round(per_job["dead"])}
    section = (ROOT / "README.md").read_text().split("- **Sizing.**")[1][:6000]
    for name, figure in (("stream entry", parts["stream entry"]),
                         ("record's key", parts["empty key"])):
        assert f"({round(figure)})" in section, (name, figure)
    assert f"TTL ({round(parts['TTL'])} bytes)" in section
    assert f"({measured['key_name_bytes']} bytes" in section
    kept, (ended,) = measured["kept"], measured["indexes_complete"].values()
    assert (f"shared hash ({round(kept['bytes_per_job'])}: its id and its record packed in "
            f"{kept['packed_record_bytes']} bytes, {round(kept['jobs_per_hash'])} jobs a hash)"
            in section)
    assert f"ended index ({round(ended)})" in section
    assert f"64 jobs a hash ({round(kept['bytes_per_job'])} bytes a job here)" in section
    assert f"alone, {round(parts['alone in its hash'])}." in section


@pytest.mark.slow
@pytest.mark.real_redis
def test_the_script_measures_parts_that_add_up(tmp_path: Path) -> None:
    need_redis_server()  # the script starts its own
    # 10,000 jobs: what is not the jobs' (allocator rounding, a table's growth) is a few tens
    # of KB whatever their number, which 2,000 jobs of 120 bytes could not absorb.
    out = tmp_path / "bytes.json"
    run = subprocess.run([sys.executable, "benchmarks/redis_bytes.py", "--jobs", "10000",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    per_job, parts = result["per_job_bytes"], result["parts_bytes"]
    waiting_fields = sum(result["record_fields_waiting"].values())
    assert set(result["record_fields_waiting"]) == {"j", "a", "s", "e"}
    assert set(result["record_fields_complete"]) == {"j", "a", "s", "q", "st", "et", "w", "r"}
    # A waiting job is its stream entry, its record's key and the record's fields: within
    # 15 % (allocator rounding, the keyspace's table growth), not a byte more unexplained.
    explained = parts["stream entry"] + parts["empty key"] + waiting_fields
    assert abs(per_job["waiting"] - explained) <= 0.15 * explained, (per_job, explained)
    # A complete job is its share of a shared hash (asyncjobs/_redis/kept.py) and of the
    # ended index; the hashes are listpacks of up to 64 jobs, each job its id, its packed
    # record and a few bytes of listpack and hash overhead.
    kept = result["kept"]
    assert result["records_not_kept"] == 0  # each record went into a shared hash
    explained = kept["bytes_per_job"] + sum(result["indexes_complete"].values())
    assert abs(per_job["complete"] - explained) <= 0.15 * explained, (per_job, explained)
    assert kept["encodings"] == ["listpack"] and 10000 / 64 <= kept["hashes"] <= 170
    assert kept["packed_record_bytes"] < 64  # Redis' hash-max-listpack-value
    assert kept["bytes_per_job"] <= 22 + kept["packed_record_bytes"] + 24
    # Alone in its hash (a producer enqueueing rarely), a job pays a key of its own again.
    assert parts["alone in its hash"] - kept["bytes_per_job"] >= 40
    assert per_job["dead"] > per_job["complete"]  # the error history and the letter


@pytest.mark.real_redis
def test_a_packed_record_over_64_bytes_costs_its_hash_about_60_bytes_a_job() -> None:
    """The README's *Sizing*: a shared hash whose packed records all fit in 64 bytes stays
    a listpack; one record over it makes the hash a regular one, about 60 bytes more for
    each of its jobs (Redis' own MEMORY USAGE, every field counted)."""
    need_redis_server()
    import redis

    from asyncjobs._redis.embedded import RedisServer

    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        per_job = {}
        for size in (64, 65):
            name = f"asyncjobs:{{default}}:kept:t{size}"
            r.hset(name, mapping={f"{size:010d}{i:012d}": b"v" * size for i in range(64)})
            r.pexpire(name, 3_600_000)
            per_job[size] = (r.memory_usage(name, samples=0), r.object("encoding", name))
        r.close()
    (small, small_kind), (big, big_kind) = per_job[64], per_job[65]
    assert (small_kind, big_kind) == (b"listpack", b"hashtable")
    assert 40 <= (big - small) / 64 <= 80, per_job
