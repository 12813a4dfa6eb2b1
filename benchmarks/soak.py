"""A long soak: one ``asyncjobs worker`` (the command, as deployed) on a fresh redis-server,
fed at a steady rate with a mix of jobs for a given time; every window the worker's RSS,
Redis' memory and the start delay of fast jobs are sampled. At the end the producer stops,
the queue drains, and every job is accounted for. Printed as JSON (and to --out).

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--rate 400] [--window 30] [--out F]

The mix, per enqueued job: 74 % fast (one pipelined INCR + RPUSH through the task's own
redis-py client), 10 % slow (``asyncio.sleep`` 0.2-1 s), 5 % blocking (a plain ``def``,
``time.sleep(0.01)`` in a thread), 10 % delayed by 1-5 s, 1 % failing (two tries, then a
dead letter); plus a cron job every second. Results live 5 minutes (``SOAK_RESULT_TTL``:
the shortest TTL whose results share hashes, see asyncjobs/_redis/kept.py) and dead letters
are capped at 1,000 (``SOAK_DEAD_LETTER_LIMIT``), so that Redis reaches its steady state
within the warm-up: with the defaults (1 h, 10,000) it would grow for an hour.

What it reports: per window, RSS (MiB), Redis ``used_memory`` (MiB), fast-job start delay
p50/p99 (ms), jobs run; after the warm-up (the first fifth of the windows, at least 2
minutes), the least-squares slope of RSS and of Redis memory in MiB per hour, and the
latency drift (median p50 of the last three windows minus the first three). ``accounted``
checks that every enqueued job ran (fast, delayed, slow, blocking), every failing job made
its two attempts and left a dead letter (or was trimmed by the cap, which is counted), and
the cron job ran once per second of the soak (within the first and last tick).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncjobs  # noqa: E402
from asyncjobs._redis.embedded import RedisServer  # noqa: E402

KINDS = (("fast", 74), ("slow", 10), ("blocking", 5), ("delayed", 10), ("failing", 1))


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in points) / den * 3600


def percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def produce(pool: asyncjobs.Pool, rate: float, until: float,
                  sent: dict[str, int]) -> None:
    """Enqueue at ``rate`` jobs/s until ``until`` (monotonic), in ticks of 10 ms."""
    weights = [w for _, w in KINDS]
    names = [k for k, _ in KINDS]
    started = time.monotonic()
    done = 0
    n = 0
    while (now := time.monotonic()) < until:
        due = int((now - started) * rate)
        batch = due - done
        for kind in random.choices(names, weights, k=max(batch, 0)):
            n += 1
            if kind == "fast":
                await pool.enqueue("fast", n)
            elif kind == "delayed":
                await pool.enqueue(asyncjobs.task_ref("delayed").options(
                    delay=random.uniform(1, 5)), n)
            elif kind == "slow":
                await pool.enqueue("slow", random.uniform(0.2, 1.0))
            elif kind == "blocking":
                await pool.enqueue("blocking", 0.01)
            else:
                await pool.enqueue("failing", n)
            sent[kind] += 1
        done += max(batch, 0)
        await asyncio.sleep(0.01)


def start_worker(url: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``asyncjobs worker soak_app:worker``, the command as deployed, logging to a file."""
    env = {**os.environ, "SOAK_REDIS_URL": url,
           "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{ROOT}"}
    log = Path("/tmp") / f"soak-worker-{os.getpid()}.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "worker", "soak_app:worker", "--job-logs",
         "failures", "--log-level", "WARNING"], cwd=ROOT / "benchmarks", env=env,
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return worker, log


async def soak(url: str, minutes: float, rate: float, window_s: float) -> dict[str, Any]:
    worker, log = start_worker(url)
    sent = {k: 0 for k, _ in KINDS}
    windows: list[dict[str, Any]] = []
    try:
        async with asyncjobs.create_pool(url) as pool:
            client = pool.client
            while not await client.get("soak:ran:cron"):  # the worker is up and leading
                assert worker.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.2)
            started = time.monotonic()
            cron_before = int(await client.get("soak:ran:cron") or 0)
            wall_started = time.time()
            until = started + minutes * 60
            producer = asyncio.create_task(produce(pool, rate, until, sent))
            while time.monotonic() < until:
                await asyncio.sleep(min(window_s, max(0.0, until - time.monotonic())))
                pipe = client.pipeline(transaction=False)
                pipe.lrange("soak:lat", 0, -1)
                pipe.delete("soak:lat")
                latencies, _ = await pipe.execute()
                lat = [int(x) for x in latencies]
                memory = await client.info("memory")
                stats = await pool.admin.queue_stats()
                windows.append({
                    "t_s": round(time.monotonic() - started, 1),
                    "rss_mib": round(rss_mib(worker.pid), 2),
                    "redis_mib": round(memory["used_memory"] / 2**20, 2),
                    "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
                    "fast_started": len(lat), "waiting": stats.waiting,
                    "delayed": stats.delayed, "dead": stats.dead})
                print(json.dumps(windows[-1]), file=sys.stderr, flush=True)
            await producer
            soak_s = time.time() - wall_started
            cron_after = int(await client.get("soak:ran:cron") or 0)
            accounted = await drain(pool, sent)
            accounted["cron_runs"] = cron_after - cron_before
            accounted["cron_expected_s"] = round(soak_s, 1)
    finally:
        worker.terminate()
        worker.wait(60)
    return {"windows": windows, "sent": sent, "accounted": accounted,
            **trends(windows), "worker_exit": worker.returncode}


async def drain(pool: asyncjobs.Pool, sent: dict[str, int], timeout_s: float = 120
                ) -> dict[str, Any]:
    """Wait until every job has run (or timeout); what ran against what was sent."""
    client = pool.client
    deadline = time.monotonic() + timeout_s
    ran: dict[str, int] = {}
    while True:
        names = ["fast", "delayed", "slow", "blocking", "failing_attempt"]
        values = await client.mget([f"soak:ran:{k}" for k in names])
        ran = {k: int(v or 0) for k, v in zip(names, values, strict=True)}
        stats = await pool.admin.queue_stats()
        done = all(ran[k] >= sent[k] for k in ("fast", "delayed", "slow", "blocking")) and \
            ran["failing_attempt"] >= 2 * sent["failing"]
        if (done and stats.in_flight == 0 and stats.waiting == 0) or \
                time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    stats = await pool.admin.queue_stats()
    return {"ran": ran, "dead_letters": stats.dead,
            "dead_trimmed": stats.counters.get("trimmed", 0),
            "every_job_ran_once": all(ran[k] == sent[k]
                                      for k in ("fast", "delayed", "slow", "blocking")),
            "failing_attempts_ok": ran["failing_attempt"] == 2 * sent["failing"],
            "dead_letters_ok": stats.dead + stats.counters.get("trimmed", 0)
            >= sent["failing"]}


def trends(windows: list[dict[str, Any]]) -> dict[str, Any]:
    warm = max(len(windows) // 5, 1)
    while warm < len(windows) and windows[warm]["t_s"] < 120:
        warm += 1
    steady = windows[warm:]
    if len(steady) < 3:
        return {"note": "too short for trends (needs 3 windows after 2 minutes)"}
    p50s = [w["p50_ms"] for w in steady if w["p50_ms"] is not None]
    return {
        "warmup_windows": warm,
        "rss_slope_mib_per_h": round(slope_per_hour([(w["t_s"], w["rss_mib"])
                                                     for w in steady]), 2),
        "redis_slope_mib_per_h": round(slope_per_hour([(w["t_s"], w["redis_mib"])
                                                       for w in steady]), 2),
        "rss_mib_range": [min(w["rss_mib"] for w in steady),
                          max(w["rss_mib"] for w in steady)],
        "redis_mib_range": [min(w["redis_mib"] for w in steady),
                            max(w["redis_mib"] for w in steady)],
        "p50_first_ms": statistics.median(p50s[:3]),
        "p50_last_ms": statistics.median(p50s[-3:]),
        "p99_max_ms": max(w["p99_ms"] or 0 for w in steady),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=400)
    parser.add_argument("--window", type=float, default=30)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    with RedisServer() as server:
        results = asyncio.run(soak(server.url, options.minutes, options.rate, options.window))
    results.update(minutes=options.minutes, rate=options.rate, window_s=options.window,
                   python=platform.python_version(), machine=platform.machine(),
                   cpus=os.cpu_count())
    text = json.dumps(results, indent=2)
    print(text)
    if options.out:
        options.out.write_text(text + "\n")
    accounted = results["accounted"]
    ok = accounted["every_job_ran_once"] and accounted["failing_attempts_ok"] \
        and accounted["dead_letters_ok"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
