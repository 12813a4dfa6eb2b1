"""The workloads, each composed from adapter roles the same way for every system.

Every workload function takes (system, cfg) and returns a flat dict of metrics; it raises
NotApplicable (reported as N/A with the reason) or BenchError (a crash / did not complete).
Each call starts its own throwaway redis-server(s).
"""

from __future__ import annotations

import os
import time

from _harness import (
    BenchError,
    RedisServer,
    System,
    peak_rss_mb,
    percentile,
    stop_worker,
    tree_cpu_s,
    wait_count,
)

SCRIPT_CMDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


class NotApplicable(Exception):
    pass


def _check_supported(system: System, workload: str) -> None:
    reason = system.info.get("unsupported", {}).get(workload)
    if reason:
        raise NotApplicable(reason)


def _warm_up(r: RedisServer, system: System, workers) -> None:
    """Wait until a freshly started worker has processed one job, then clear the probe keys."""
    system.role("prequeue", r.url, n=1, timeout=120)
    ok, _ = wait_count(r, "bench:done", 1, 120, workers)
    if not ok:
        raise BenchError("worker did not process the warm-up job within 120 s")
    r.reset_probe()


def _wait_last(r: RedisServer, timeout: float = 10.0) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        last = r.get_float("bench:last")
        if last is not None:
            return last
        time.sleep(0.005)
    raise BenchError("bench:last was never written (BENCH_EXPECT not honoured?)")


def enqueue(system: System, cfg) -> dict:
    n = cfg.n_enqueue
    with RedisServer() as r:
        single = system.role("enqueue-single", r.url, n=n)
    with RedisServer() as r:
        bulk = system.role("enqueue-bulk", r.url, n=n, chunk=1000)
    return {
        "single_jobs_per_s": n / single["seconds"],
        "bulk_jobs_per_s": n / bulk["seconds"],
        "bulk_method": bulk.get("method", ""),
    }


def process(
    system: System,
    cfg,
    n: int | None = None,
    workers: int = 1,
    client: str = "",
    processes: int = 1,
) -> dict:
    """Pre-queue n no-op jobs, start `workers` worker commands (each with `processes`
    processes, the system's own way), time first start -> last end. client "redis-py": each
    job is one INCR through redis-py (systems/_probe.py) instead of the probe's pipeline."""
    n = n or cfg.n_process
    timeout = max(120.0, n / 20)  # generous: RQ forks per job (~50-80 jobs/s here)
    with RedisServer() as r:
        system.role("prequeue", r.url, n=n, timeout=timeout)
        before = r.commandstats()
        sent0 = r.client.sent
        procs = [
            system.start_worker(r.url, cfg.concurrency, expect=n, client=client,
                                processes=processes)
            for _ in range(workers)
        ]
        try:
            # CPU is counted from the first job done (start-up and imports left out) to
            # the last one: the workers' process trees and the redis-server
            wait_count(r, "bench:done", 1, timeout, procs, poll=0.001)
            cpu0 = [sum(tree_cpu_s(p.pid) for p in procs), r.cpu_s(), r.get_int("bench:done")]
            ok, done = wait_count(r, "bench:done", n, timeout, procs)
            if not ok:
                raise BenchError(f"only {done}/{n} jobs done after {timeout:.0f} s")
            last = _wait_last(r)
            cpu1 = [sum(tree_cpu_s(p.pid) for p in procs), r.cpu_s(), r.get_int("bench:done")]
            time.sleep(1.0)  # let acks/result writes of the last in-flight jobs land
            after = r.commandstats()
            harness = r.client.sent - sent0 - 1  # our own polling GETs (INFO is excluded below)
            rss = [peak_rss_mb(p.pid) for p in procs]
        finally:
            for p in procs:
                stop_worker(p)
        first = r.get_float("bench:first")
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if not k.startswith("info")}
    delta["get"] = delta.get("get", 0) - harness
    if client == "redis-py":  # redis-py's incr() sends INCRBY 1 (one per job);
        delta["incrby"] = delta.get("incrby", 0) - n  # SET bench:first, bench:last once
        delta["set"] = delta.get("set", 0) - 2
    else:  # the probe: SET bench:first NX + INCR bench:done per job, SET bench:last once
        delta["set"] = delta.get("set", 0) - n - 1
        delta["incr"] = delta.get("incr", 0) - n
    delta = {k: v for k, v in delta.items() if v > 0}
    top = sorted(delta.items(), key=lambda kv: -kv[1])[:6]
    return {
        "jobs_per_s": n / (last - first),
        "seconds": last - first,
        "cmds_per_job": sum(delta.values()) / n,
        "scripts_per_job": sum(delta.get(k, 0) for k in SCRIPT_CMDS) / n,
        "top_cmds_per_job": {k: round(v / n, 2) for k, v in top},
        "peak_rss_mb": max(x for x in rss if x is not None) if any(rss) else None,
        **_cpu_per_job(cpu0, cpu1),
    }


def _cpu_per_job(before: list[float], after: list[float]) -> dict:
    """Worker and Redis CPU per job (µs) between two samples of [worker CPU s, Redis CPU
    s, jobs done]. The two together bound what one machine can process: cores / their sum."""
    jobs = after[2] - before[2]
    if jobs <= 0:
        return {}
    worker, redis = (after[0] - before[0]) / jobs * 1e6, (after[1] - before[1]) / jobs * 1e6
    return {"worker_cpu_us_per_job": worker, "redis_cpu_us_per_job": redis,
            "cpu_us_per_job": worker + redis}


def process_incr(system: System, cfg) -> dict:
    """process_noop, each job one INCR through redis-py (as users' jobs talk to Redis)."""
    return process(system, cfg, client="redis-py")


def cores(system: System, cfg) -> dict:
    """process_noop on every core: the system's own multi-process mode when it has one
    (asyncjobs --processes, Dramatiq --processes, Celery's prefork pool), else as many worker
    processes as cores started side by side; with the probe and with redis-py jobs.

    n_cores jobs (100,000), not n_process: the processes start one after another, and the
    window opens at the first job, so with 20,000 jobs (about a second for asyncjobs on
    two cores) the later processes' start-up took a fifth of it (measured 2026-12-05:
    17,900 jobs/s at 20,000 jobs, 21,100 at 100,000, the same code). The same n for
    every system."""
    k = os.cpu_count() or 1
    n = getattr(cfg, "n_cores", cfg.n_process)
    if system.info.get("processes"):
        shape = {"workers": 1, "processes": k}
    else:
        shape = {"workers": k, "processes": 1}
    probe = process(system, cfg, n=n, **shape)
    incr = process(system, cfg, n=n, client="redis-py", **shape)
    return {
        "jobs_per_s": probe["jobs_per_s"],
        "incr_jobs_per_s": incr["jobs_per_s"],
        "per_process_jobs_per_s": probe["jobs_per_s"] / k,
        "cpu_us_per_job": probe.get("cpu_us_per_job"),
        "incr_cpu_us_per_job": incr.get("cpu_us_per_job"),
        "processes": k,
        "how": system.info.get("processes") or f"{k} worker processes side by side",
    }


def sleep(system: System, cfg) -> dict:
    _check_supported(system, "sleep")
    n, secs = cfg.n_sleep, 0.05
    with RedisServer() as r:
        system.role("prequeue", r.url, n=n, job="sleep", seconds=secs)
        w = system.start_worker(r.url, cfg.concurrency, expect=n)
        try:
            ok, done = wait_count(r, "bench:done", n, 300, [w])
            if not ok:
                raise BenchError(f"only {done}/{n} sleep jobs done after 300 s")
            last = _wait_last(r)
        finally:
            stop_worker(w)
        first = r.get_float("bench:first")
    floor = n * secs / cfg.concurrency
    return {"wall_s": last - first, "ratio_to_floor": (last - first) / floor, "floor_s": floor}


def _starts(r: RedisServer) -> dict[int, float]:
    raw = r.client.call("HGETALL", "bench:starts") or []
    return {int(raw[i]): float(raw[i + 1]) for i in range(0, len(raw), 2)}


def latency(system: System, cfg) -> dict:
    n, rate = cfg.n_latency, 200.0
    with RedisServer() as r:
        w = system.start_worker(r.url, cfg.concurrency, record=True)
        try:
            _warm_up(r, system, [w])
            out = system.role("enqueue-paced", r.url, n=n, rate=rate, timeout=n / rate + 120)
            ok, done = wait_count(r, "bench:done", n + 1, 60, [w])  # +1: the role's warm-up job
            if not ok:
                raise BenchError(
                    f"only {done}/{n + 1} latency jobs done 60 s after the last enqueue"
                )
        finally:
            stop_worker(w)
        starts = _starts(r)
    enq = out["enqueue_times"]
    lat = [(starts[i] - enq[i]) * 1000 for i in range(n)]
    return {
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat),
        "late_enqueues": out.get("late", 0),
    }


def delayed(system: System, cfg, spread: float = 0.0) -> dict:
    """n jobs due at one instant (spread 0: a burst, bounded by throughput), or spread
    evenly over `spread` seconds (the scheduler's precision)."""
    n = cfg.n_delayed
    with RedisServer() as r:
        w = system.start_worker(r.url, cfg.concurrency, record=True, scheduler=True)
        try:
            _warm_up(r, system, [w])
            out = system.role("enqueue-delayed", r.url, n=n, delay=2.0, spread=spread,
                              timeout=300)
            due = out["due"]
            timeout = max(0.0, due + spread - time.time()) + cfg.delayed_timeout
            ok, done = wait_count(r, "bench:done", n + 1, timeout, [w])
            if not ok:
                raise BenchError(
                    f"only {done}/{n + 1} delayed jobs done {cfg.delayed_timeout:.0f} s after due"
                )
        finally:
            stop_worker(w)
        starts = _starts(r)
    err = [(starts[i] - (due + spread * i / max(n, 1))) * 1000 for i in range(n)]
    return {
        "p50_ms": percentile(err, 50),
        "p99_ms": percentile(err, 99),
        "max_ms": max(err),
        "min_ms": min(err),
        "early": sum(1 for e in err if e < 0),
    }


def delayed_spread(system: System, cfg) -> dict:
    """n jobs due across one second (job i at due + i/n s)."""
    return delayed(system, cfg, spread=1.0)


def memory(system: System, cfg, rss_from_process: float | None = None) -> dict:
    n = cfg.n_memory
    with RedisServer() as r:
        before = r.used_memory()
        system.role("prequeue", r.url, n=n, timeout=900)
        after = r.used_memory()
    rss = rss_from_process
    if rss is None:
        rss = process(system, cfg)["peak_rss_mb"]
    return {"worker_peak_rss_mb": rss, "redis_bytes_per_job": (after - before) / n}


def recovery(system: System, cfg) -> dict:
    n, secs, conc = cfg.n_recovery, cfg.recovery_sleep, 10
    target = min(n, system.info.get("max_concurrency") or n)  # jobs that can run at once
    with RedisServer() as r:
        w1 = system.start_worker(r.url, conc, expect=n)
        w2 = None
        try:
            system.role("prequeue", r.url, n=n, job="sleep", seconds=secs)
            ok, started = wait_count(r, "bench:started", target, 120, [w1])
            if not ok:
                raise BenchError(f"only {started}/{target} sleepers started within 120 s")
            time.sleep(cfg.recovery_kill_after)
            t_kill = time.time()
            stop_worker(w1, hard=True)  # SIGKILL the whole process group
            w2 = system.start_worker(r.url, conc, expect=n)
            ok, done = wait_count(r, "bench:done", n, cfg.recovery_timeout, [w2], poll=0.05)
            last = _wait_last(r) if ok else None
        finally:
            stop_worker(w1, hard=True)
            if w2 is not None:
                stop_worker(w2)
    return {
        "recovered": ok,
        "recovery_s": (last - t_kill) if ok else None,
        "done": done,
        "n": n,
        "timeout_s": cfg.recovery_timeout,
        "setting": system.info.get("recovery", ""),
    }


def scaling(system: System, cfg) -> dict:
    out = {}
    for k in (1, 2, 4):
        out[f"w{k}_jobs_per_s"] = process(system, cfg, n=cfg.n_scaling, workers=k)["jobs_per_s"]
    return out
