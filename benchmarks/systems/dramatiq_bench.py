"""Dramatiq adapter (runs inside benchmarks/.venvs/dramatiq). See benchmarks/README.md for the
contract.

Dramatiq actors are synchronous and run in worker threads; its CLI forks one worker process per
core by default, which makes it one of the two multi-process peers of the `cores` workload
(with Celery's prefork pool). The broker is bound when this module is imported, from
--redis-url on the command line or $BENCH_REDIS_URL (the worker processes the CLI forks)."""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
import time

import _common as c
import _probe
import dramatiq
from dramatiq.brokers.redis import RedisBroker

QUEUE = "bench"
THREADS = 8  # Dramatiq's default worker threads per process


def _url() -> str:
    argv = sys.argv
    if "--redis-url" in argv[:-1]:
        return argv[argv.index("--redis-url") + 1]
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


broker = RedisBroker(url=_url())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop(i):
    _probe.noop(i)


@dramatiq.actor(queue_name=QUEUE)
def sleeper(i, seconds):
    _probe.sleeper(i, seconds)


def info(args):
    return {
        "system": "dramatiq",
        "version": md.version("dramatiq"),
        "versions": {p: md.version(p) for p in ("dramatiq", "redis")},
        "bulk": "no bulk API: one send() per job",
        "settings": f"RedisBroker defaults, the `dramatiq` CLI with --threads {THREADS} (its "
        "default) and --processes 1 (the cores workload: --processes = CPU count, the CLI's "
        "default); default middleware (retries, time limit 10 min, no results kept); delayed "
        "via send_with_options(delay=ms)",
        "default_concurrency": THREADS,
        "processes": "the dramatiq CLI's --processes",
        "recovery": "RedisBroker requeues a dead worker's messages after its heartbeat "
        "timeout (60 s by default)",
        "unsupported": {},
        "notes": "sync actors in threads; the sleep workload uses time.sleep in its threads "
        f"({THREADS} per process, the default, not 100)",
    }


def enqueue_single(args):
    return c.time_single_sync(args.n, lambda i: noop.send(i))


def enqueue_bulk(args):
    out = c.time_single_sync(args.n, lambda i: noop.send(i))
    return {**out, "method": "no bulk API: one send() per job"}


def prequeue(args):
    t0 = time.perf_counter()
    if args.job == "sleep":
        for i in range(args.n):
            sleeper.send(i, args.seconds)
    else:
        for i in range(args.n):
            noop.send(i)
    return {"n": args.n, "seconds": time.perf_counter() - t0}


def enqueue_paced(args):
    return c.paced_sync(args.n, args.rate, lambda i: noop.send(i))


def enqueue_delayed(args):
    noop.send(-1)
    due = c.due_time(args.delay)
    for i in range(args.n):
        delay_ms = max(0, int((c.due_of(due, i, args.n, args.spread) - time.time()) * 1000))
        noop.send_with_options(args=(i,), delay=delay_ms)
    return {"n": args.n, "due": due}


def worker(args):
    """Run the dramatiq CLI in this process (exec): it forks its worker processes itself."""
    os.environ["BENCH_REDIS_URL"] = args.redis_url
    argv = [sys.executable, "-m", "dramatiq", "dramatiq_bench", "--queues", QUEUE,
            "--processes", str(args.processes), "--threads", str(THREADS)]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    c.main(globals())
