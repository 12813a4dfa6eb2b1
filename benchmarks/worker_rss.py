"""Resident memory of an idle `asyncjobs worker` next to arq's worker, and where it goes.

    python benchmarks/worker_rss.py [--runs 3] [--idle 5] [--burst 2000] [--no-dev]

Three workers, each its command line on a trivial app (one no-op task, concurrency 100),
started in turn against one fresh redis-server, alternating over --runs runs:

- `asyncjobs (runtime)`: `asyncjobs worker app:worker` in benchmarks/.venvs/rss-asyncjobs,
  this checkout installed as users install it (`pip install -c constraints.txt .`, no extra);
- `asyncjobs (dev venv)`: the same command in the checkout's .venv (the dev extra: redis-py
  8.x then imports the opentelemetry SDK it finds installed; --no-dev leaves it out);
- `arq`: `arq app.WorkerSettings` (max_jobs=100) in benchmarks/.venvs/rss-arq;
- `stack floor`: no job runner, only what asyncjobs' design fixes for any worker of it, in
  the runtime venv: redis-py (with hiredis), msgspec and uvloop imported, a uvloop loop
  running and one redis-py connection waiting in a blocking XREAD. No asyncjobs code, so
  no asyncjobs worker can hold less (it runs no jobs: its burst readings are left out).

For each: VmRSS after --idle seconds idle; then --burst no-op jobs are enqueued (by a script
in the same venv that waits for every result), and once they are done and --idle seconds more
have passed, VmRSS again and VmHWM (the peak). Medians over the runs.

Then an import-by-import breakdown in each venv: one fresh interpreter imports the modules of
each step in order and reports VmRSS after each (a step's figure is what it adds on top of
the steps before it; modules shared with an earlier step count there). Results go to
benchmarks/results/worker_rss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RedisServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"
ARQ_PIN = "arq==0.28.0"  # as benchmarks/setup_peers.py

APPS = {
    "ourapp.py": '''
import asyncjobs


@asyncjobs.task
async def noop(ctx: asyncjobs.Context, i: int) -> None:
    return None


worker = asyncjobs.Worker([noop], prefix="rss")
''',
    "arqapp.py": '''
import os

from arq.connections import RedisSettings


async def noop(ctx, i):
    return None


class WorkerSettings:
    functions = [noop]
    max_jobs = 100
    redis_settings = RedisSettings.from_dsn(os.environ["RSS_REDIS_URL"])
''',
    "floor.py": '''
import os

import msgspec  # noqa: F401  (the payload codec: imported, as any worker of ours imports it)
import redis.asyncio
import uvloop


async def main():
    client = redis.asyncio.Redis.from_url(os.environ["RSS_REDIS_URL"])
    while True:
        await client.xread({"rss:floor": "$"}, block=1000)

uvloop.run(main())
''',
    "enqueue_ours.py": '''
import asyncio, os, sys
import asyncjobs


async def main(n):
    async with asyncjobs.create_pool(os.environ["RSS_REDIS_URL"], prefix="rss") as pool:
        jobs = await pool.enqueue_many([asyncjobs.call("noop", i) for i in range(n)])
        await asyncio.gather(*(job.result(timeout=120) for job in jobs))

asyncio.run(main(int(sys.argv[1])))
''',
    "enqueue_arq.py": '''
import asyncio, os, sys
from arq import create_pool
from arq.connections import RedisSettings


async def main(n):
    redis = await create_pool(RedisSettings.from_dsn(os.environ["RSS_REDIS_URL"]))
    jobs = []
    for start in range(0, n, 1000):
        jobs += await asyncio.gather(*(redis.enqueue_job("noop", i)
                                       for i in range(start, min(n, start + 1000))))
    await asyncio.gather(*(job.result(timeout=120) for job in jobs))
    await redis.aclose()

asyncio.run(main(int(sys.argv[1])))
''',
}

COMMON = ["asyncio", "importlib.metadata", "hiredis", "redis.asyncio"]
STEPS = {
    "asyncjobs": [*COMMON, "msgspec", "uvloop", "anyio", "anyio._backends._asyncio",
                  "asyncjobs", "asyncjobs._cli.worker_run"],
    "arq": [*COMMON, "arq", "arq.worker", "arq.cli"],
}
STEP_CODE = r'''
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
out = [["python", rss(), 0]]
for step in sys.argv[1:]:
    mods = [m for m in step.split("+") if m]
    before = len(sys.modules)
    try:
        for m in mods:
            importlib.import_module(m)
    except ImportError:
        out.append([step, None, 0])
        continue
    out.append([step, rss(), len(sys.modules) - before])
print(json.dumps(out))
'''


def status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def make_venv(name: str, *requirements: str) -> Path:
    python = VENVS / name / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(python.parent.parent)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    return python


class Subject:
    def __init__(self, name: str, python: Path, kind: str) -> None:
        self.name, self.python, self.kind = name, python, kind

    def command(self) -> list[str]:
        bindir = self.python.parent
        if self.kind == "asyncjobs":
            return [str(bindir / "asyncjobs"), "worker", "ourapp:worker"]
        if self.kind == "floor":
            return [str(self.python), "floor.py"]
        return [str(bindir / "arq"), "arqapp.WorkerSettings"]

    def measure(self, app: Path, url: str, server: RedisServer, idle: float,
                burst: int) -> dict[str, float]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(ASYNCJOBS_REDIS_URL=url, RSS_REDIS_URL=url, PYTHONPATH=str(app))
        server.client.call("FLUSHALL")
        log = (app / f"{self.kind}.log").open("w")
        proc = subprocess.Popen(self.command(), cwd=app, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            time.sleep(idle)
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {log.name}")
            result = {"idle": status(proc.pid)["VmRSS"]}
            if burst and self.kind != "floor":
                script = "enqueue_ours.py" if self.kind == "asyncjobs" else "enqueue_arq.py"
                # the script returns once every job's result is in
                subprocess.run([str(self.python), script, str(burst)], cwd=app, env=env,
                               check=True, timeout=300)
                time.sleep(idle)
                after = status(proc.pid)
                result.update(after_burst=after["VmRSS"], peak=after["VmHWM"])
            return result
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    def steps(self) -> list[list[object]]:
        if self.kind == "floor":  # its imports are the first steps of asyncjobs' own
            return []
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        steps = list(STEPS[self.kind])
        if self.name.endswith("(dev venv)"):  # what redis-py imports when it finds it
            steps.insert(steps.index("redis.asyncio"), "opentelemetry.sdk.metrics")
        done = subprocess.run([str(self.python), "-c", STEP_CODE, *steps], env=env,
                              capture_output=True, text=True, check=True,
                              cwd=tempfile.gettempdir())
        return json.loads(done.stdout)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds idle before measuring")
    ap.add_argument("--burst", type=int, default=2000, help="jobs after the idle reading")
    ap.add_argument("--no-dev", action="store_true", help="leave out the checkout's .venv")
    args = ap.parse_args()

    ours = make_venv("rss-asyncjobs", "-c", str(ROOT / "constraints.txt"), str(ROOT))
    # the same version number may hold other code: install this checkout's over it
    subprocess.run([str(ours), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps",
                    str(ROOT)], check=True)
    subjects = [Subject("asyncjobs (runtime)", ours, "asyncjobs")]
    dev = ROOT / ".venv" / "bin" / "python"
    if not args.no_dev and dev.exists():
        # the editable checkout: compile it first, so no run pays for compiling
        subprocess.run([str(dev), "-m", "compileall", "-q", str(ROOT / "asyncjobs")],
                       check=True)
        subjects.append(Subject("asyncjobs (dev venv)", dev, "asyncjobs"))
    subjects.append(Subject("arq", make_venv("rss-arq", ARQ_PIN), "arq"))
    subjects.append(Subject("stack floor", ours, "floor"))

    samples: dict[str, list[dict[str, float]]] = {s.name: [] for s in subjects}
    with tempfile.TemporaryDirectory(prefix="worker-rss-") as tmp, RedisServer() as server:
        app = Path(tmp)
        for name, text in APPS.items():
            (app / name).write_text(text.lstrip())
        for run in range(args.runs):
            for subject in subjects:
                sample = subject.measure(app, server.url, server, args.idle, args.burst)
                samples[subject.name].append(sample)
                print(f"run {run + 1} {subject.name}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in sample.items()), file=sys.stderr)

    medians = {name: {k: median([s[k] for s in runs]) for k in runs[0]}
               for name, runs in samples.items()}
    steps = {s.name: s.steps() for s in subjects if s.kind != "floor"}
    arq_idle = medians["arq"]["idle"]
    print(f"\nworker RSS, MiB (medians of {args.runs}; idle {args.idle:g} s, burst "
          f"{args.burst} jobs)\n")
    columns = list(next(iter(medians.values())))
    print("| worker | " + " | ".join(columns) + " | idle / arq |")
    print("|---|" + "---|" * (len(columns) + 1))
    for name, m in medians.items():
        print(f"| {name} | " + " | ".join(f"{m[c]:.1f}" if c in m else "-" for c in columns)
              + f" | {m['idle'] / arq_idle:.2f}x |")
    for name, rows in steps.items():
        print(f"\nimports, {name}: MiB after each step (+ what it adds)\n")
        previous = None
        for step, rss, count in rows:
            if rss is None:
                print(f"  {step:32s}  (not installed)")
                continue
            added = "" if previous is None else f"+{rss - previous:5.2f}"
            print(f"  {step:32s} {rss:6.2f} {added}  ({count} modules)")
            previous = rss
    out = HERE / "results" / "worker_rss.json"
    out.write_text(json.dumps({"runs": args.runs, "idle_s": args.idle, "burst": args.burst,
                               "samples": samples, "medians": medians, "imports": steps},
                              indent=1) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
