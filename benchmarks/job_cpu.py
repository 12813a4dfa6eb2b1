"""Where the CPU of a processed job goes: asyncjobs' own work, the job's redis-py command, and
Redis, with one worker process and with ``--processes 2``.

    .venv/bin/python benchmarks/job_cpu.py [--jobs 40000] [--runs 3] [--processes 1,2]
        [--out benchmarks/results/job_cpu.json]

The processing benchmarks (``run.py``'s ``process_noop``, ``process_incr`` and ``cores``) time
jobs that report to the harness: their CPU per job includes that bookkeeping. Here the jobs
report nothing. Two tasks:

- ``bare``: ``async def bare(ctx, i): return None``; the worker's CPU per job is then
  asyncjobs' own work, all of it (take, start, the attempt, its timeout, the settle);
- ``incr``: one ``INCR`` through a module-level ``redis.asyncio`` client, what the benchmarks'
  ``process_incr`` job does without the harness's first/last marks;
- ``alone``: the same ``INCR`` with no job runner at all: a plain uvloop program (P of them
  for P processes) that runs each ``INCR`` in a Task of its own, 100 at once (a worker's
  default concurrency), until it has sent its share. What this costs is the floor of a
  redis-py job: the part of ``incr`` that no job runner can take away.

``--job-logs`` picks the per-job log lines the worker writes: ``failures`` (the default here:
only failed attempts, at log level WARNING, as the processing benchmarks run) or ``both`` /
``end`` at log level INFO (``both`` is what ``asyncjobs worker`` writes unless told
otherwise), the lines going to a file as a service's stderr goes to its log collector.

For each task, count of processes P and run (the cells alternate, so drift on a shared VM
hits each alike): a fresh redis-server (the harness's), --jobs jobs enqueued with
``enqueue_many`` (untimed), then ``asyncjobs worker app:worker --processes P --job-logs
failures`` starts on them. The span measured starts once a tenth of the jobs are done (the
processes are up, their imports and start-up left out) and ends at the last; over it, the
CPU of the worker's process tree and of the redis-server (``INFO cpu``), each divided by the
jobs done in it. Medians over --runs; the results file keeps every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _harness import RedisServer, machine_info, stop_worker, tree_cpu_s  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs._redis.keys import Keys  # noqa: E402

QUEUE = "cpu"
APP = '''
import os

import redis.asyncio

import asyncjobs

_client = None


@asyncjobs.task
async def bare(ctx: asyncjobs.Context, i: int) -> None:
    return None


@asyncjobs.task
async def incr(ctx: asyncjobs.Context, i: int) -> None:
    global _client
    if _client is None:
        _client = redis.asyncio.Redis.from_url(os.environ["JOB_CPU_REDIS_URL"])
    await _client.incr("job_cpu:done")


worker = asyncjobs.Worker([bare, incr], queues=["cpu"])
'''

ALONE = '''
import asyncio
import os
import sys

import redis.asyncio
import uvloop


async def main(n: int, concurrency: int) -> None:
    client = redis.asyncio.Redis.from_url(os.environ["JOB_CPU_REDIS_URL"])
    free = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            await client.incr("job_cpu:done")
        finally:
            free.release()

    for _ in range(n):
        await free.acquire()
        task = asyncio.create_task(one())
        running.add(task)
        task.add_done_callback(running.discard)
    while running:
        await asyncio.wait(set(running))
    await client.aclose()


uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
'''


async def _enqueue(url: str, task: str, n: int) -> None:
    ref = asyncjobs.task_ref(task, queue=QUEUE)
    async with asyncjobs.create_pool(url, queue=QUEUE) as pool:
        for start in range(0, n, 1000):
            await pool.enqueue_many(asyncjobs.call(ref, i)
                                    for i in range(start, min(n, start + 1000)))


def _done(r: RedisServer) -> int:
    value = r.client.call("HGET", Keys("asyncjobs", QUEUE).stats, "complete")
    return int(value) if value is not None else 0


def one_run(app_dir: str, task: str, processes: int, n: int,
            job_logs: str = "failures") -> dict[str, float]:
    if task == "alone":
        return _alone_run(app_dir, processes, n)
    level = "warning" if job_logs == "failures" else "info"
    with RedisServer() as r, tempfile.TemporaryFile("w+") as log:
        asyncio.run(_enqueue(r.url, task, n))
        worker = subprocess.Popen(
            [sys.executable, "-m", "asyncjobs", "worker", "app:worker", "--redis-url", r.url,
             "--processes", str(processes), "--job-logs", job_logs, "--log-level", level],
            cwd=app_dir, env={**os.environ, "JOB_CPU_REDIS_URL": r.url,
                              "PYTHONPATH": os.pathsep.join([app_dir, str(ROOT)])},
            stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True)

        def tail() -> str:
            log.seek(0)
            return log.read()[-2000:]

        try:
            deadline = time.monotonic() + max(120.0, n / 500)
            while (done0 := _done(r)) < n // 10:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the worker did not start: {tail()}")
                time.sleep(0.001)
            cpu0, redis0, t0 = tree_cpu_s(worker.pid), r.cpu_s(), time.monotonic()
            while (done1 := _done(r)) < n:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"only {done1}/{n} jobs done: {tail()}")
                time.sleep(0.002)
            cpu1, redis1, t1 = tree_cpu_s(worker.pid), r.cpu_s(), time.monotonic()
        finally:
            stop_worker(worker)
    jobs = done1 - done0
    return {"jobs": jobs, "jobs_per_s": jobs / (t1 - t0),
            "worker_cpu_us_per_job": (cpu1 - cpu0) / jobs * 1e6,
            "redis_cpu_us_per_job": (redis1 - redis0) / jobs * 1e6}


def _alone_run(app_dir: str, processes: int, n: int) -> dict[str, float]:
    """The ``alone`` cell: ``processes`` plain programs send ``n`` INCRs between them,
    measured over the same span as a worker's (from a tenth done to the last)."""
    with RedisServer() as r:
        env = {**os.environ, "JOB_CPU_REDIS_URL": r.url}
        shares = [n // processes + (1 if k < n % processes else 0) for k in range(processes)]
        procs = [subprocess.Popen([sys.executable, "alone.py", str(share), "100"], cwd=app_dir,
                                  env=env, stderr=subprocess.PIPE, text=True)
                 for share in shares]

        def done() -> int:
            value = r.client.call("GET", "job_cpu:done")
            return int(value) if value is not None else 0

        def cpu() -> float:
            return sum(tree_cpu_s(p.pid) for p in procs)

        try:
            deadline = time.monotonic() + max(120.0, n / 500)
            while (done0 := done()) < n // 10:
                if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                    raise SystemExit("the INCR programs did not start: "
                                     + "".join(p.stderr.read()[-2000:] for p in procs
                                               if p.poll() not in (None, 0) and p.stderr))
                time.sleep(0.001)
            cpu0, redis0, t0 = cpu(), r.cpu_s(), time.monotonic()
            while (done1 := done()) < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {done1}/{n} INCRs done")
                time.sleep(0.002)
            cpu1, redis1, t1 = cpu(), r.cpu_s(), time.monotonic()
        finally:
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    jobs = done1 - done0
    return {"jobs": jobs, "jobs_per_s": jobs / (t1 - t0),
            "worker_cpu_us_per_job": (cpu1 - cpu0) / jobs * 1e6,
            "redis_cpu_us_per_job": (redis1 - redis0) / jobs * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=40_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--tasks", default="bare,incr,alone")
    ap.add_argument("--job-logs", choices=["failures", "end", "both"], default="failures")
    ap.add_argument("--out", default=str(HERE / "results" / "job_cpu.json"))
    args = ap.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    cells = [(task, p) for task in args.tasks.split(",") for p in counts]
    runs: dict[str, list[dict[str, float]]] = {f"{t} x{p}": [] for t, p in cells}
    with tempfile.TemporaryDirectory() as app_dir:
        Path(app_dir, "app.py").write_text(APP)
        Path(app_dir, "alone.py").write_text(ALONE)
        for k in range(args.runs):
            for task, p in cells:
                got = one_run(app_dir, task, p, args.jobs, args.job_logs)
                runs[f"{task} x{p}"].append(got)
                print(f"[run {k + 1}/{args.runs}] {task} x{p}: "
                      + ", ".join(f"{key} {value:,.1f}" for key, value in got.items()),
                      flush=True)
    medians = {cell: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
               for cell, rs in runs.items()}
    result = {"machine": machine_info(), "jobs": args.jobs, "runs": args.runs,
              "job_logs": args.job_logs,
              "asyncjobs": asyncjobs.__version__, "medians": medians, "samples": runs}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for cell, m in medians.items():
        print(f"{cell}: {m['jobs_per_s']:,.0f} jobs/s, worker {m['worker_cpu_us_per_job']:.1f}"
              f" µs + Redis {m['redis_cpu_us_per_job']:.1f} µs a job")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
