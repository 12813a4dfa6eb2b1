"""The scaling curve: how processing grows with worker processes, against one Redis and
against a Redis Cluster of three masters.

For each target (``single``: one redis-server; ``cluster``: three masters, no replicas, both
started here on free ports), each workload (no-op jobs, and jobs that await 10 ms of I/O)
and each count of worker processes P (default 1, 2, 4, 8): N jobs are enqueued (untimed),
spread evenly over Q queues (default 3; on the cluster each falls on its own master), then
P burst workers (concurrency 100 each, uvloop, serving every queue with equal weights)
start together and drain them. jobs/s = N / (the last job's end - the first job's start),
both read from the jobs' records (the Redis clock), so process start-up is not counted.
Also recorded: the Redis servers' CPU (``used_cpu_sys`` + ``used_cpu_user`` summed over the
masters, read before the workers start and after they exit) divided by that span, in cores:
near 1 per master, Redis is the limit; well below it with every core busy, the machine is.
And the machine's core count. Medians of --runs; with matplotlib installed, a chart.

    .venv/bin/python benchmarks/scaling.py [--targets single,cluster] [--processes 1,2,4,8]
        [--jobs 20000] [--queues 3] [--runs 3] [--out benchmarks/results/scaling.json]
        [--chart benchmarks/results/scaling.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from redis.cluster import RedisCluster  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs import Context  # noqa: E402
from asyncjobs._redis.embedded import RedisServer  # noqa: E402
from asyncjobs._redis.keys import Keys  # noqa: E402

PREFIX = "scaling"


@asyncjobs.task
async def noop(ctx: Context, i: int) -> None:
    return None


@asyncjobs.task
async def io_10ms(ctx: Context, i: int) -> None:
    await asyncio.sleep(0.01)


TASKS = {"noop": noop, "io_10ms": io_10ms}


def queue_names(count: int) -> list[str]:
    return [f"q{i}" for i in range(count)]


async def child(url: str, queues: int) -> None:
    await asyncjobs.Worker([noop, io_10ms], prefix=PREFIX, concurrency=100, burst=True,
                           queues=dict.fromkeys(queue_names(queues), 1)).run(redis_url=url)


async def enqueue(url: str, kind: str, n: int, queues: int) -> list[tuple[str, str]]:
    names = queue_names(queues)
    calls = [(names[i % queues], i) for i in range(n)]
    done: list[tuple[str, str]] = []
    async with asyncjobs.create_pool(url, prefix=PREFIX) as pool:
        for start in range(0, n, 5000):
            batch = calls[start:start + 5000]
            jobs = await pool.enqueue_many([asyncjobs.call(TASKS[kind].options(queue=q), i)
                                            for q, i in batch])
            done += [(q, j.id) for (q, _), j in zip(batch, jobs, strict=True)]
    return done


class Target:
    """One redis-server, or a cluster of three masters, for one measurement."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._server: RedisServer | None = None
        self._cluster: Any = None

    def __enter__(self) -> Target:
        if self.kind == "single":
            self._server = RedisServer()
            self._server.__enter__()
        else:
            from tests.cluster import ClusterSetup
            self._cluster = ClusterSetup(masters=3)
            self._cluster.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        if self._cluster is not None:
            self._cluster.close()

    @property
    def url(self) -> str:
        return self._server.url if self._server is not None else self._cluster.url

    def clients(self) -> list[redis.Redis]:
        """A client of each master (CPU readings)."""
        if self._server is not None:
            return [redis.Redis.from_url(self._server.url)]
        return [redis.Redis(port=p) for p in self._cluster.ports]

    def reader(self) -> Any:
        """A client that reads any key."""
        if self._server is not None:
            return redis.Redis.from_url(self._server.url)
        return RedisCluster(host="127.0.0.1", port=self._cluster.ports[0])


def redis_cpu(clients: list[redis.Redis]) -> float:
    total = 0.0
    for client in clients:
        cpu = client.info("cpu")
        total += float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    return total


def one(target_kind: str, kind: str, processes: int, n: int, queues: int
        ) -> dict[str, float]:
    with Target(target_kind) as target:
        clients = target.clients()
        ids = asyncio.run(enqueue(target.url, kind, n, queues))
        cpu_before = redis_cpu(clients)
        began = time.monotonic()
        procs = [subprocess.Popen([sys.executable, __file__, "--child", target.url,
                                   str(queues)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(processes)]
        for p in procs:
            if p.wait(timeout=600) != 0:
                raise SystemExit(f"a worker exited with {p.returncode}")
        wall = time.monotonic() - began
        cpu = redis_cpu(clients) - cpu_before
        reader = target.reader()
        pipe = reader.pipeline(transaction=False)
        for queue, job_id in ids:
            pipe.hmget(Keys(PREFIX, queue).job(job_id), "s", "st", "et")
        rows = pipe.execute()
        reader.close()
        for client in clients:
            client.close()
    if any(s != b"complete" for s, _, _ in rows):
        raise SystemExit(f"{target_kind} {kind} x{processes}: not every job completed")
    span_s = (max(int(e) for _, _, e in rows) - min(int(s) for _, s, _ in rows)) / 1000
    # Redis works for the jobs in the span (before it, the workers only connect)
    return {"jobs_per_s": n / span_s, "redis_cpu_cores": cpu / span_s, "span_s": span_s,
            "wall_s": wall}


def chart(summary: dict[str, Any], counts: list[int], path: Path, cores: int | None) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: chart skipped (pip install matplotlib)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind, title in ((axes[0], "noop", "no-op jobs"),
                            (axes[1], "io_10ms", "jobs awaiting 10 ms of I/O")):
        for target, style in (("single", "o-"), ("cluster", "s--")):
            points = [summary.get(f"{target} {kind} x{p}") for p in counts]
            if all(points):
                ax.plot(counts, [pt["jobs_per_s"] for pt in points], style,
                        label="one Redis" if target == "single" else "3-master cluster")
        ax.set_title(title)
        ax.set_xlabel("worker processes")
        ax.set_ylabel("jobs/s")
        ax.set_xticks(counts)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"asyncjobs scaling curve ({cores} cores, Redis and workers on one machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"wrote {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="single,cluster")
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--queues", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--chart", type=Path)
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    targets = args.targets.split(",")
    cells: dict[str, list[dict[str, float]]] = {}
    for run in range(args.runs):
        for target in targets:
            for kind in TASKS:
                for p in counts if run % 2 == 0 else reversed(counts):
                    got = one(target, kind, p, args.jobs, args.queues)
                    cells.setdefault(f"{target} {kind} x{p}", []).append(got)
                    print(f"run {run + 1} {target} {kind} x{p}: {got['jobs_per_s']:,.0f} "
                          f"jobs/s, Redis CPU {got['redis_cpu_cores']:.2f} cores",
                          file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for name, got in cells.items():
        summary[name] = {k: round(statistics.median(g[k] for g in got), 3 if "cpu" in k else 1)
                         for k in got[0]}
    result = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "config": {"jobs": args.jobs, "queues": args.queues, "runs": args.runs,
                         "concurrency": 100, "cluster_masters": 3},
              "median": summary}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.chart:
        print(chart(summary, counts, args.chart, os.cpu_count()), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        import uvloop
        uvloop.run(child(sys.argv[2], int(sys.argv[3])))
    else:
        main()
