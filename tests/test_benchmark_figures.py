"""The README's processing table is what the benchmark run it names measured, and
``benchmarks/commands.py`` (Redis commands per job, phase by phase) runs and accounts for
every command.

Nothing here asserts a speed: the suite measures, the README quotes its results file, and
this checks that the two agree. Commands are counted, which a test may bound."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import need_redis_server

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "results" / "2026-12-01-vm-3.json"
EARLIER = ROOT / "benchmarks" / "results" / "2026-12-01-vm-2.json"
LATENCY = ROOT / "benchmarks" / "results" / "2026-12-01-vm-latency.json"
NAMES = {"asyncjobs": "asyncjobs", "Dramatiq": "dramatiq", "SAQ": "saq", "bullmq": "bullmq",
         "taskiq": "taskiq", "Celery": "celery"}


def readme_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| system | no-op, 1 process (jobs/s) |")
    table = text[start:text.index("\n\n", start)].splitlines()[2:]
    return {cells[0]: cells[1:] for cells in
            ([c.strip() for c in row.strip("|").split("|")] for row in table)}


def median(summary: dict[str, Any], workload: str, system: str, key: str) -> float:
    return float(summary[workload][system][key]["median"])


def test_the_readme_quotes_the_run_s_medians() -> None:
    run = json.loads(RUN.read_text())
    summary = run["summary"]
    assert run["config"]["runs"] == 3
    rows = readme_rows()
    assert set(rows) == set(NAMES)
    for shown, system in NAMES.items():
        expected = [
            f"{median(summary, 'process_noop', system, 'jobs_per_s'):,.0f}",
            f"{median(summary, 'process_incr', system, 'jobs_per_s'):,.0f}",
            f"{median(summary, 'cores', system, 'jobs_per_s'):,.0f}",
            f"{median(summary, 'cores', system, 'incr_jobs_per_s'):,.0f}",
            f"{median(summary, 'process_noop', system, 'worker_cpu_us_per_job'):.0f} + "
            f"{median(summary, 'process_noop', system, 'redis_cpu_us_per_job'):.0f}",
            f"{median(summary, 'process_noop', system, 'cmds_per_job'):.1f}",
            f"{median(summary, 'latency', system, 'p50_ms'):.2f} / "
            f"{median(summary, 'latency', system, 'p99_ms'):.1f}",
        ]
        assert rows[shown] == expected, shown
    text = " ".join((ROOT / "README.md").read_text().split())
    assert (f"{median(summary, 'process_noop', 'asyncjobs', 'cmds_per_job'):.2f} with the "
            f"probe's jobs and {median(summary, 'process_incr', 'asyncjobs', 'cmds_per_job'):.2f}"
            " with redis-py jobs") in text
    def ratio(workload: str, key: str) -> tuple[str, str]:
        """asyncjobs' median over the fastest peer's, and that peer's name as shown."""
        peers = {shown: median(summary, workload, system, key)
                 for shown, system in NAMES.items() if system != "asyncjobs"}
        best = max(peers, key=lambda shown: peers[shown])
        return f"{median(summary, workload, 'asyncjobs', key) / peers[best]:.2f}x", best

    noop, incr = ratio("process_noop", "jobs_per_s"), ratio("process_incr", "jobs_per_s")
    assert (f"One process: {noop[0]} the fastest peer ({noop[1]}) on the probe's jobs, "
            f"{incr[0]} ({incr[1]}) on redis-py jobs") in text
    cores, cores_incr = ratio("cores", "jobs_per_s"), ratio("cores", "incr_jobs_per_s")
    assert cores[1] == cores_incr[1] == "Dramatiq"
    assert (f"Every core: {cores[0]} Dramatiq on the probe's jobs, {cores_incr[0]} on "
            "redis-py jobs") in text
    p50 = (median(summary, "latency", "asyncjobs", "p50_ms")
           / median(summary, "latency", "taskiq", "p50_ms"))
    assert (f"p50 {p50:.2f}x taskiq's, p99 "
            f"{median(summary, 'latency', 'asyncjobs', 'p99_ms'):.1f} ms") in text
    earlier = json.loads(EARLIER.read_text())["summary"]
    figures = " / ".join(f"{median(earlier, w, 'asyncjobs', k):,.0f}" for w, k in [
        ("process_noop", "jobs_per_s"), ("process_incr", "jobs_per_s"),
        ("cores", "jobs_per_s"), ("cores", "incr_jobs_per_s")])
    assert (f"measured asyncjobs at {figures} jobs/s in the same four columns, and latency "
            f"p50 {median(earlier, 'latency', 'asyncjobs', 'p50_ms'):.2f} ms against "
            f"taskiq's {median(earlier, 'latency', 'taskiq', 'p50_ms'):.2f}") in text
    before = (median(earlier, "latency", "asyncjobs", "p50_ms")
              / median(earlier, "latency", "taskiq", "p50_ms"))
    assert f"the run before this one {before:.2f}x" in text
    cpu = [f"{median(s, w, n, 'worker_cpu_us_per_job'):.0f}" for s, w, n in [
        (summary, "process_noop", "asyncjobs"), (summary, "process_incr", "asyncjobs"),
        (earlier, "process_noop", "asyncjobs"), (earlier, "process_incr", "asyncjobs"),
        (summary, "process_noop", "dramatiq"), (earlier, "process_noop", "dramatiq")]]
    assert (f"asyncjobs' worker used {cpu[0]} µs a probe job and {cpu[1]} µs a redis-py "
            f"job, against {cpu[2]} and {cpu[3]} in the run before") in text
    assert (f"Dramatiq used {cpu[4]} µs a probe job where the run before measured "
            f"{cpu[5]}") in text
    cores = run["summary"]["cores"]
    assert (f"used {median(summary, 'cores', 'asyncjobs', 'cpu_us_per_job'):.0f} µs a probe "
            f"job and {median(summary, 'cores', 'asyncjobs', 'incr_cpu_us_per_job'):.0f} µs a "
            "redis-py job") in text
    assert (f"Dramatiq used {cores['dramatiq']['cpu_us_per_job']['median']:.0f} and "
            f"{cores['dramatiq']['incr_cpu_us_per_job']['median']:.0f}.") in text
    latency = json.loads(LATENCY.read_text())
    assert latency["config"]["runs"] == 3 and latency["config"]["workloads"] == ["latency"]
    alone = latency["summary"]
    assert set(alone["latency"]) == set(NAMES.values())
    ours, theirs = (median(alone, "latency", s, "p50_ms") for s in ("asyncjobs", "taskiq"))
    assert f"measured {ours / theirs:.2f}x, the run before" in text
    incr = summary["process_incr"]
    assert (f"asyncjobs ranged from {incr['asyncjobs']['jobs_per_s']['min']:,.0f} to "
            f"{incr['asyncjobs']['jobs_per_s']['max']:,.0f} jobs/s on redis-py jobs (Dramatiq "
            f"{incr['dramatiq']['jobs_per_s']['min']:,.0f} to "
            f"{incr['dramatiq']['jobs_per_s']['max']:,.0f})") in text


@pytest.mark.slow
@pytest.mark.real_redis
def test_commands_by_phase_account_for_every_command(tmp_path: Path) -> None:
    """The phases add up to the total; a producer waiting on one job's result does not make
    the other jobs' settles publish."""
    need_redis_server()  # the script starts its own
    out = tmp_path / "commands.json"
    run = subprocess.run([sys.executable, "benchmarks/commands.py", "--jobs", "400",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in ("enqueue_one_by_one", "enqueue_many", "drain"):
        part = result[name]
        assert sum(part["phases_per_job"].values()) == pytest.approx(
            part["total_per_job"], abs=0.01), name
    drain = result["drain"]
    assert {"read and start", "settle and notify"} <= set(drain["phases_per_job"])
    jobs = 2 * 400 + 2
    assert drain["by_command_per_job"].get("publish", 0) * jobs < 10  # one waiter, one end
    assert result["enqueue_one_by_one"]["phases_per_job"] == {"enqueue": pytest.approx(
        result["enqueue_one_by_one"]["total_per_job"])}
    assert re.fullmatch(r"\d+\.\d+\.\d+", result["redis"])


def test_the_readme_quotes_the_commands_by_phase() -> None:
    result = json.loads((ROOT / "benchmarks" / "results" / "commands.json").read_text())
    drain = result["drain"]
    text = " ".join((ROOT / "README.md").read_text().split())
    quoted = (f"{drain['total_per_job']:.2f} commands per job in the drain, "
              f"{drain['phases_per_job']['read and start']:.2f} to read and start")
    assert quoted in text
    assert f"{drain['phases_per_job']['settle and notify']:.2f} to settle and notify" in text
    rest = drain["total_per_job"] - drain["phases_per_job"]["read and start"] - \
        drain["phases_per_job"]["settle and notify"]
    assert rest < 0.02
    assert (f"an enqueue costs {result['enqueue_one_by_one']['total_per_job']:.0f} one by one "
            f"and {result['enqueue_many']['total_per_job']:.0f} in `enqueue_many`") in text
