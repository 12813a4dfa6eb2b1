"""What a job costs Redis itself, in instructions: counted by valgrind's callgrind on the
redis-server, so the figure is the same run after run on one binary (CPU time on a shared VM
swings by 20 % or more; instructions do not).

    .venv/bin/python benchmarks/redis_cost.py [--jobs 4000] [--single 1000] [--runs 2]
        [--out benchmarks/results/redis_cost.json]

Each run starts a fresh redis-server under ``valgrind --tool=callgrind`` and counts three
phases, zeroing the counters before each and dumping them after (``callgrind_control``):

- ``enqueue``: --single no-op jobs enqueued one at a time (``Pool.enqueue``: one script
  call each, as a web request enqueues its job);
- ``enqueue_many``: --jobs no-op jobs enqueued in chunks of 1,000 (``Pool.enqueue_many``);
- ``drain``: one ``asyncjobs worker app:worker --burst`` (a task that returns None) runs
  them all (the --single jobs too); its start-up (the scripts loaded, the consumer group)
  and its stop are counted too, spread over the jobs.

Instructions per job of each phase, every run kept, medians reported. Redis runs some 50
times slower under valgrind, so the worker's batches are fuller than at full speed; compare
figures of this script with each other (one binary, one --jobs), not with CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _harness import free_port, machine_info  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs._redis.keys import Keys  # noqa: E402

QUEUE = "cost"
APP = '''
import asyncjobs


@asyncjobs.task
async def bare(ctx: asyncjobs.Context, i: int) -> None:
    return None


worker = asyncjobs.Worker([bare], queues=["cost"])
'''


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def _dumped(out_dir: Path, n: int) -> int:
    """The instructions counted in the n-th dump (``summary:`` of cg.out.<n>)."""
    path = out_dir / f"cg.out.{n}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise SystemExit(f"callgrind wrote no {path.name}")


async def _enqueue_single(url: str, n: int) -> None:
    ref = asyncjobs.task_ref("bare", queue=QUEUE)
    async with asyncjobs.create_pool(url, queue=QUEUE) as pool:
        for i in range(n):
            await pool.enqueue(ref, -1 - i)


async def _enqueue(url: str, n: int) -> None:
    ref = asyncjobs.task_ref("bare", queue=QUEUE)
    async with asyncjobs.create_pool(url, queue=QUEUE) as pool:
        for start in range(0, n, 1000):
            await pool.enqueue_many(asyncjobs.call(ref, i)
                                    for i in range(start, min(n, start + 1000)))


def _ping(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                              text=True)
        if done.stdout.strip() == "PONG":
            return
        time.sleep(0.2)
    raise SystemExit("redis-server did not answer under valgrind")


def one_run(app_dir: str, n: int, single: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        port = free_port()
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.out",
             shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _ping(port, 60)
            url = f"redis://127.0.0.1:{port}"
            asyncio.run(_enqueue_single(url, 1))  # the scripts loaded: not counted
            _control("-z", server.pid)
            asyncio.run(_enqueue_single(url, single))
            _control("-d", server.pid)
            one_by_one = _dumped(out_dir, 1)
            _control("-z", server.pid)
            asyncio.run(_enqueue(url, n))
            _control("-d", server.pid)
            enqueued = _dumped(out_dir, 2)
            _control("-z", server.pid)
            subprocess.run(
                [sys.executable, "-m", "asyncjobs", "worker", "app:worker", "--redis-url", url,
                 "--burst", "--job-logs", "failures", "--log-level", "warning"],
                cwd=app_dir, check=True,  # the asyncjobs of this checkout, as above
                env={**os.environ, "PYTHONPATH": os.pathsep.join([app_dir, str(HERE.parent)])},
                stdout=subprocess.DEVNULL, timeout=max(300.0, n / 20))
            _control("-d", server.pid)
            drained = _dumped(out_dir, 3)
            done = subprocess.run(["redis-cli", "-p", str(port), "hget",
                                   Keys("asyncjobs", QUEUE).stats, "complete"],
                                  capture_output=True, text=True).stdout.strip()
            total = n + single + 1
            if done != str(total):
                raise SystemExit(f"only {done or 0}/{total} jobs complete")
        finally:
            server.terminate()
            server.wait(60)
    return {"enqueue_per_job": one_by_one / single, "enqueue_many_per_job": enqueued / n,
            "drain_per_job": drained / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=4000)
    ap.add_argument("--single", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "redis_cost.json"))
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    runs = []
    with tempfile.TemporaryDirectory() as app_dir:
        Path(app_dir, "app.py").write_text(APP)
        for k in range(args.runs):
            got = one_run(app_dir, args.jobs, args.single)
            runs.append(got)
            print(f"[run {k + 1}/{args.runs}] " + ", ".join(
                f"{key} {value:,.0f}" for key, value in got.items()), flush=True)
    version = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.strip()
    result = {"machine": machine_info(), "redis": version, "jobs": args.jobs,
              "single": args.single,
              "runs": runs,
              "medians": {key: statistics.median(r[key] for r in runs) for key in runs[0]}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}: {result['medians']}")


if __name__ == "__main__":
    main()
