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
RUN = ROOT / "benchmarks" / "results" / "2026-12-01-vm-5.json"
EARLIER = ROOT / "benchmarks" / "results" / "2026-12-01-vm-4.json"
LATENCY = ROOT / "benchmarks" / "results" / "2026-12-01-vm-latency-2.json"
JOB_CPU = ROOT / "benchmarks" / "results" / "job_cpu.json"
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
    assert (f"Every core: {cores[0]} the fastest peer ({cores[1]}) on the probe's jobs, "
            f"{cores_incr[0]} ({cores_incr[1]}) on redis-py jobs") in text
    best = NAMES[cores_incr[1]]
    fastest = median(summary, "cores", best, "incr_jobs_per_s")
    budget = 2 / (4 * fastest) * 1e6  # µs a job for everything on 2 cores at 4x
    ours, ours_cpu = (median(summary, "cores", "asyncjobs", k)
                      for k in ("incr_jobs_per_s", "incr_cpu_us_per_job"))
    assert (f"4x {cores_incr[1]}'s {fastest:,.0f} redis-py jobs/s would be {4 * fastest:,.0f} "
            f"jobs/s: at most {budget:.0f} µs a job") in text
    assert f"at {ours:,.0f} jobs/s asyncjobs kept them {ours * ours_cpu / 1e6 / 2:.0%}" \
        .replace("%", " %") in text
    one, both = (median(summary, w, "asyncjobs", "jobs_per_s") for w in ("process_noop", "cores"))
    assert (f"on both cores the probe's jobs ran {both / one - 1:.0%} faster than on one"
            .replace("%", " %")) in text
    assert (f"one process the two kinds of job are far apart ({one:,.0f} and "
            f"{median(summary, 'process_incr', 'asyncjobs', 'jobs_per_s'):,.0f} jobs/s)") in text
    p50 = (median(summary, "latency", "asyncjobs", "p50_ms")
           / median(summary, "latency", "taskiq", "p50_ms"))
    assert (f"p50 {p50:.2f}x taskiq's, p99 "
            f"{median(summary, 'latency', 'asyncjobs', 'p99_ms'):.1f} ms") in text
    runs = [c["metrics"]["p50_ms"] for c in run["cells"]
            if c["workload"] == "latency" and c["system"] == "asyncjobs"]
    assert ("asyncjobs' p50 went " + ", ".join(f"{x:.2f}" for x in runs[:-1])
            + f" and {runs[-1]:.2f} ms run by run") in text
    lat = summary["latency"]["taskiq"]["p50_ms"]
    assert f"taskiq's {lat['min']:.2f} to {lat['max']:.2f}" in text
    earlier = json.loads(EARLIER.read_text())["summary"]
    figures = " / ".join(f"{median(earlier, w, 'asyncjobs', k):,.0f}" for w, k in [
        ("process_noop", "jobs_per_s"), ("process_incr", "jobs_per_s"),
        ("cores", "jobs_per_s"), ("cores", "incr_jobs_per_s")])
    assert (f"measured asyncjobs at {figures} jobs/s in the same four columns, and latency "
            f"p50 {median(earlier, 'latency', 'asyncjobs', 'p50_ms'):.2f} ms against "
            f"taskiq's {median(earlier, 'latency', 'taskiq', 'p50_ms'):.2f}") in text
    before = (median(earlier, "latency", "asyncjobs", "p50_ms")
              / median(earlier, "latency", "taskiq", "p50_ms"))
    assert f"the run before this one measured {before:.2f}x" in text
    cpu = [f"{median(s, w, n, 'worker_cpu_us_per_job'):.0f}" for s, w, n in [
        (summary, "process_noop", "asyncjobs"), (summary, "process_incr", "asyncjobs"),
        (earlier, "process_noop", "asyncjobs"), (earlier, "process_incr", "asyncjobs"),
        (summary, "process_noop", "dramatiq"), (earlier, "process_noop", "dramatiq")]]
    assert (f"asyncjobs' worker used {cpu[0]} µs a probe job and {cpu[1]} µs a redis-py "
            f"job, against {cpu[2]} and {cpu[3]} in the run before") in text
    assert (f"Dramatiq used {cpu[4]} µs a probe job where the run before measured "
            f"{cpu[5]}") in text
    core = summary["cores"]
    assert (f"used {median(summary, 'cores', 'asyncjobs', 'cpu_us_per_job'):.0f} µs a probe "
            f"job and {median(summary, 'cores', 'asyncjobs', 'incr_cpu_us_per_job'):.0f} µs a "
            "redis-py job") in text
    assert cores_incr[1] == "Dramatiq"  # the sentence names the fastest peer, then two more
    assert ("Dramatiq used " + ", ".join(
        f"{shown}{' ' if shown else ''}{core[system]['cpu_us_per_job']['median']:.0f} and "
        f"{core[system]['incr_cpu_us_per_job']['median']:.0f}"
        for shown, system in (("", "dramatiq"), ("SAQ", "saq"), ("taskiq", "taskiq")))
        + ".") in text
    latency = json.loads(LATENCY.read_text())
    assert latency["config"]["runs"] == 3 and latency["config"]["workloads"] == ["latency"]
    alone = latency["summary"]
    assert set(alone["latency"]) == set(NAMES.values())
    ours_p50, theirs = (median(alone, "latency", s, "p50_ms") for s in ("asyncjobs", "taskiq"))
    assert f"measured {ours_p50 / theirs:.2f}x, the run before" in text
    assert (f"taskiq's own p50 was {median(summary, 'latency', 'taskiq', 'p50_ms'):.2f} ms in "
            f"this run and {theirs:.2f} ms in that one") in text
    incr_runs = summary["process_incr"]
    peer = NAMES[incr[1]]
    assert (f"asyncjobs ranged from {incr_runs['asyncjobs']['jobs_per_s']['min']:,.0f} to "
            f"{incr_runs['asyncjobs']['jobs_per_s']['max']:,.0f} jobs/s on redis-py jobs "
            f"({incr[1]} {incr_runs[peer]['jobs_per_s']['min']:,.0f} to "
            f"{incr_runs[peer]['jobs_per_s']['max']:,.0f})") in text


def test_the_readme_quotes_where_a_job_s_cpu_goes() -> None:
    """The README's split of a job's CPU is ``benchmarks/job_cpu.py``'s medians."""
    result = json.loads(JOB_CPU.read_text())
    assert result["runs"] == 3 and result["jobs"] == 40_000
    m = result["medians"]
    text = " ".join((ROOT / "README.md").read_text().split())
    assert (f"is {m['bare x1']['worker_cpu_us_per_job']:.1f} µs of worker CPU with one process "
            f"({m['bare x1']['jobs_per_s']:,.0f} jobs/s) and "
            f"{m['bare x2']['worker_cpu_us_per_job']:.1f} µs with `--processes 2`, and Redis "
            f"{m['bare x1']['redis_cpu_us_per_job']:.1f} µs") in text
    assert (f"costs the worker {m['incr x1']['worker_cpu_us_per_job']:.1f} µs with one process "
            f"({m['incr x1']['jobs_per_s']:,.0f} jobs/s) and "
            f"{m['incr x2']['worker_cpu_us_per_job']:.1f} µs with two "
            f"({m['incr x2']['jobs_per_s']:,.0f} jobs/s), Redis "
            f"{m['incr x1']['redis_cpu_us_per_job']:.1f} and "
            f"{m['incr x2']['redis_cpu_us_per_job']:.1f}") in text
    assert (f"cost {m['alone x1']['worker_cpu_us_per_job']:.1f} µs of process CPU and "
            f"{m['alone x1']['redis_cpu_us_per_job']:.1f} µs of Redis with one program, "
            f"{m['alone x2']['worker_cpu_us_per_job']:.1f} and "
            f"{m['alone x2']['redis_cpu_us_per_job']:.1f} with two") in text

    def total(cell: str) -> float:
        return m[cell]["worker_cpu_us_per_job"] + m[cell]["redis_cpu_us_per_job"]

    ours = total("incr x2") - total("alone x2")
    assert (f"a redis-py job cost the machine {total('incr x2'):.1f} µs, "
            f"{total('alone x2'):.1f} of it that floor: asyncjobs' part was {ours:.1f} µs, "
            f"where its whole work on a bare job cost {total('bare x2'):.1f} µs") in text
    more = ours - total("bare x2")
    assert more > 0 and f"costs asyncjobs about {more:.0f} µs more than one that does not" in text


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


@pytest.mark.slow
@pytest.mark.real_redis
def test_job_cpu_runs_and_counts_every_job(tmp_path: Path) -> None:
    """``benchmarks/job_cpu.py`` runs each cell (it exits non-zero unless every job of the
    cell is done, or every INCR of the runner-free ``alone`` cells is sent) and measures
    over the jobs after the first tenth at least (the worker's start-up left out)."""
    need_redis_server()  # the harness starts its own
    out = tmp_path / "job_cpu.json"
    run = subprocess.run([sys.executable, "benchmarks/job_cpu.py", "--jobs", "2000", "--runs",
                          "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["medians"]) == {"bare x1", "bare x2", "incr x1", "incr x2",
                                      "alone x1", "alone x2"}
    for cell, samples in result["samples"].items():
        (sample,) = samples
        assert 0 < sample["jobs"] <= 2000 - 2000 // 10, cell
        assert sample["worker_cpu_us_per_job"] > 0 and sample["redis_cpu_us_per_job"] > 0


@pytest.mark.slow
@pytest.mark.real_redis
def test_redis_cost_counts_both_phases(tmp_path: Path) -> None:
    """``benchmarks/redis_cost.py`` runs a redis-server under callgrind, drains every job (it
    exits non-zero otherwise) and counts the instructions of each phase: a bulk enqueue
    costs Redis less per job than a single one (one script call for many jobs) and than the
    drain (which starts and settles each job), and none is near zero (a count of nothing
    would be)."""
    need_redis_server()
    out = tmp_path / "redis_cost.json"
    run = subprocess.run([sys.executable, "benchmarks/redis_cost.py", "--jobs", "300",
                          "--single", "50", "--runs", "1", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    (sample,) = result["runs"]
    assert 10_000 < sample["enqueue_many_per_job"] < sample["enqueue_per_job"]
    assert sample["enqueue_many_per_job"] < sample["drain_per_job"]
    assert result["medians"] == sample


def test_the_readme_quotes_the_redis_cost() -> None:
    result = json.loads((ROOT / "benchmarks" / "results" / "redis_cost.json").read_text())
    before = json.loads((ROOT / "benchmarks" / "results" / "redis_cost-f348ab5.json")
                        .read_text())
    text = " ".join((ROOT / "README.md").read_text().split())
    for r in (result, before):
        assert len(r["runs"]) == 2 and r["jobs"] == 4000 and r["single"] == 1000
    m, b = result["medians"], before["medians"]
    assert (f"{m['enqueue_per_job']:,.0f} instructions to enqueue a job on its own, "
            f"{m['enqueue_many_per_job']:,.0f} a job with `enqueue_many`, and "
            f"{m['drain_per_job']:,.0f} a job to drain.") in text
    assert (f"`benchmarks/results/redis_cost-f348ab5.json`): {b['enqueue_per_job']:,.0f}, "
            f"{b['enqueue_many_per_job']:,.0f} and {b['drain_per_job']:,.0f}.") in text


def test_the_readme_quotes_the_third_vm_s_run() -> None:
    """The later run of 2026-12-02 on a third VM of the kind: its medians and ratios."""
    summary = json.loads((ROOT / "benchmarks/results/2026-12-02-vm-2.json").read_text())[
        "summary"]
    ours = [median(summary, w, "asyncjobs", k) for w, k in [
        ("process_noop", "jobs_per_s"), ("process_incr", "jobs_per_s"),
        ("cores", "jobs_per_s"), ("cores", "incr_jobs_per_s")]]
    theirs = [median(summary, w, "dramatiq", k) for w, k in [
        ("process_noop", "jobs_per_s"), ("process_incr", "jobs_per_s"),
        ("cores", "jobs_per_s"), ("cores", "incr_jobs_per_s")]]
    assert all(theirs[i] == max(median(summary, w, s, k) for s in ("dramatiq", "celery", "taskiq"))
               for i, (w, k) in enumerate([("process_noop", "jobs_per_s"),
                                           ("process_incr", "jobs_per_s"),
                                           ("cores", "jobs_per_s"),
                                           ("cores", "incr_jobs_per_s")]))
    x = [f"{a / b:.2f}x" for a, b in zip(ours, theirs, strict=True)]
    text = " ".join((ROOT / "README.md").read_text().split())
    assert (f"gave {ours[0]:,.0f} and {ours[1]:,.0f} jobs/s on one process ({x[0]} and "
            f"{x[1]} Dramatiq), {ours[2]:,.0f} and {ours[3]:,.0f} on every core ({x[2]} and "
            f"**{x[3]}**), {median(summary, 'process_noop', 'asyncjobs', 'cmds_per_job'):.2f} "
            "commands a job") in text


def test_the_readme_quotes_the_faster_vm_s_run() -> None:
    """The run of 2026-12-04, where taskiq was the fastest peer, and ``job_cpu.py`` on
    that VM: their medians, ratios and what the README derives from them."""
    summary = json.loads((ROOT / "benchmarks/results/2026-12-04-vm.json").read_text())[
        "summary"]
    cells = [("process_noop", "jobs_per_s"), ("process_incr", "jobs_per_s"),
             ("cores", "jobs_per_s"), ("cores", "incr_jobs_per_s")]
    ours = [median(summary, w, "asyncjobs", k) for w, k in cells]
    taskiq = [median(summary, w, "taskiq", k) for w, k in cells]
    assert all(taskiq[i] > median(summary, w, "dramatiq", k)
               for i, (w, k) in enumerate(cells)), "taskiq is the fastest peer of the run"
    x = [f"{a / b:.2f}x" for a, b in zip(ours, taskiq, strict=True)]
    p50, t50 = (median(summary, "latency", s, "p50_ms") for s in ("asyncjobs", "taskiq"))
    own, redis_ = (median(summary, "process_noop", "asyncjobs", k)
                   for k in ("worker_cpu_us_per_job", "redis_cpu_us_per_job"))
    target = 4 * taskiq[3]
    text = " ".join((ROOT / "README.md").read_text().split())
    assert (f"one process {ours[0]:,.0f} probe jobs/s (taskiq {taskiq[0]:,.0f}: {x[0]}) and "
            f"{ours[1]:,.0f} redis-py jobs/s (taskiq {taskiq[1]:,.0f}: {x[1]}); every core "
            f"{ours[2]:,.0f} probe jobs/s (taskiq {taskiq[2]:,.0f}: **{x[2]}**) and "
            f"{ours[3]:,.0f} redis-py jobs/s (taskiq {taskiq[3]:,.0f}: **{x[3]}**); Dramatiq "
            f"{median(summary, 'cores', 'dramatiq', 'jobs_per_s'):,.0f} and "
            f"{median(summary, 'cores', 'dramatiq', 'incr_jobs_per_s'):,.0f}; latency p50 "
            f"{p50:.2f} ms (taskiq {t50:.2f}: {p50 / t50:.2f}x), p99 "
            f"{median(summary, 'latency', 'asyncjobs', 'p99_ms'):.2f} ms. taskiq's two "
            f"processes did {taskiq[2] / taskiq[0]:.2f}x its one on probe jobs and "
            f"{taskiq[3] / taskiq[1]:.2f}x on redis-py jobs, asyncjobs' "
            f"{ours[2] / ours[0]:.2f}x and {ours[3] / ours[1]:.2f}x") in text
    assert (f"({own:.0f} µs of its own and {redis_:.0f} µs of Redis a probe job at "
            f"{ours[0]:,.0f} jobs/s: {(own + redis_) * ours[0] / 1e6:.1f} cores)") in text
    assert (f"would be {target:,.0f} jobs/s, at most {2e6 / target:.0f} µs of the machine a "
            "job, everything included; asyncjobs' two processes and Redis used "
            f"{median(summary, 'cores', 'asyncjobs', 'incr_cpu_us_per_job'):.0f}.") in text
    job_cpu = json.loads((ROOT / "benchmarks/results/job_cpu-2026-12-04.json").read_text())
    cpu = job_cpu["medians"]
    rate = {cell: m["jobs_per_s"] for cell, m in cpu.items()}
    runs = {cell: sorted(r["jobs_per_s"] for r in rs) for cell, rs in job_cpu["samples"].items()}
    assert (f"ran at {rate['bare x1']:,.0f} jobs/s on one process and {rate['bare x2']:,.0f} "
            f"on two (each process's CPU a job went from "
            f"{cpu['bare x1']['worker_cpu_us_per_job']:.1f} to "
            f"{cpu['bare x2']['worker_cpu_us_per_job']:.1f} µs; run by run one process did "
            f"{runs['bare x1'][0]:,.0f} to {runs['bare x1'][-1]:,.0f} jobs/s, two "
            f"{runs['bare x2'][0]:,.0f} to {runs['bare x2'][-1]:,.0f}), redis-py jobs at "
            f"{rate['incr x1']:,.0f} and {rate['incr x2']:,.0f}, plain uvloop programs sending "
            f"the same `INCR`s at {rate['alone x1']:,.0f} and {rate['alone x2']:,.0f}.") in text
    assert (f"two processes ran {rate['incr x2'] / rate['incr x1']:.2f}x the jobs of one that "
            "each send an `INCR` through redis-py, but "
            f"{rate['bare x2'] / rate['bare x1']:.2f}x those that do nothing") in text


def test_the_readme_quotes_the_runs_before_and_after_the_settle_trim() -> None:
    """The two runs of 2026-12-05 (every core on 100,000 jobs), before and after a settle
    took its entries out with one XTRIM: their medians, ratios and the derived budget."""
    cells = [("process_noop", "jobs_per_s"), ("process_incr", "jobs_per_s"),
             ("cores", "jobs_per_s"), ("cores", "incr_jobs_per_s")]
    runs = {}
    for name in ("2026-12-05-vm", "2026-12-05-vm-before-trim"):
        run = json.loads((ROOT / f"benchmarks/results/{name}.json").read_text())
        assert run["config"]["runs"] == 3 and run["config"]["n_cores"] == 100_000
        runs[name] = run["summary"]
    after, before = runs["2026-12-05-vm"], runs["2026-12-05-vm-before-trim"]
    for summary in (after, before):
        for w, k in cells:
            assert median(summary, w, "taskiq", k) == max(
                median(summary, w, s, k) for s in summary[w] if s != "asyncjobs")
    ours = [median(after, w, "asyncjobs", k) for w, k in cells]
    taskiq = [median(after, w, "taskiq", k) for w, k in cells]
    x = [f"{a / b:.2f}x" for a, b in zip(ours, taskiq, strict=True)]
    target = 4 * taskiq[3]
    text = " ".join((ROOT / "README.md").read_text().split())
    assert (f"With it: one process {ours[0]:,.0f} probe jobs/s (taskiq {taskiq[0]:,.0f}: "
            f"{x[0]}) and {ours[1]:,.0f} redis-py jobs/s (taskiq {taskiq[1]:,.0f}: {x[1]}); "
            f"every core {ours[2]:,.0f} probe jobs/s (taskiq {taskiq[2]:,.0f}: **{x[2]}**) "
            f"and {ours[3]:,.0f} redis-py jobs/s (taskiq {taskiq[3]:,.0f}: **{x[3]}**), "
            f"{median(after, 'process_noop', 'asyncjobs', 'cmds_per_job'):.2f} commands a "
            f"job, Redis {median(after, 'process_noop', 'asyncjobs', 'redis_cpu_us_per_job'):.1f}"
            " µs a probe job on one process.") in text
    was = [median(before, "cores", s, k) for s in ("asyncjobs", "taskiq")
           for k in ("jobs_per_s", "incr_jobs_per_s")]
    assert (f"Before it: every core {was[0]:,.0f} (taskiq {was[2]:,.0f}: "
            f"{was[0] / was[2]:.2f}x) and {was[1]:,.0f} (taskiq {was[3]:,.0f}: "
            f"{was[1] / was[3]:.2f}x), Redis "
            f"{median(before, 'process_noop', 'asyncjobs', 'redis_cpu_us_per_job'):.1f} µs a "
            f"probe job; Celery {median(before, 'cores', 'celery', 'jobs_per_s'):,.0f} and "
            f"{median(before, 'cores', 'celery', 'incr_jobs_per_s'):,.0f} on every core.") in text
    assert (x[2] >= "4.00x") == ("the every-core target is met on probe jobs" in text)
    assert (f"4x taskiq's would be {target:,.0f} jobs/s, at most {2e6 / target:.0f} µs of the "
            "machine a job, everything included; asyncjobs' two processes and Redis used "
            f"{median(after, 'cores', 'asyncjobs', 'incr_cpu_us_per_job'):.0f}.") in text
