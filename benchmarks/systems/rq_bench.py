"""RQ adapter (runs inside benchmarks/.venvs/rq). See benchmarks/README.md for the contract.

RQ is synchronous: one job at a time per worker process, each job in a forked "work horse"
(the default rq.Worker class)."""

from __future__ import annotations

import importlib.metadata as md
import time

import _common as c
import _probe
from redis import Redis
from rq import Queue, Worker

QUEUE = "bench"
NOOP, SLEEPER = "rq_bench.noop", "rq_bench.sleeper"  # imported by path in the work horse


def noop(i):
    _probe.noop(i)


def sleeper(i, seconds):
    _probe.sleeper(i, seconds)


def queue(args) -> Queue:
    return Queue(QUEUE, connection=Redis.from_url(args.redis_url))


def info(args):
    return {
        "system": "rq",
        "version": md.version("rq"),
        "versions": {p: md.version(p) for p in ("rq", "redis")},
        "bulk": "Queue.enqueue_many (one pipeline per chunk of 1000)",
        "settings": "default rq.Worker (forks a work horse per job), one job at a time per "
        "process, job module preloaded before forking (RQ performance notes); "
        "Worker.work(with_scheduler=True) for delayed jobs; default result_ttl",
        "default_concurrency": 1,
        "max_concurrency": 1,
        "recovery": "dead worker's job is moved to FailedJobRegistry as abandoned, not re-run "
        "(no Retry configured by default)",
        "unsupported": {
            "sleep": "RQ runs one job at a time per worker process (fork per job); "
            "no way to run 100 sleeps concurrently in one worker process"
        },
        "notes": "RQ executes each job in a fresh fork, so the probe opens a new Redis "
        "connection per job (RQ's own cost model); peak RSS is the main worker process.",
    }


def enqueue_single(args):
    q = queue(args)
    return c.time_single_sync(args.n, lambda i: q.enqueue(NOOP, i))


def _bulk(q, datas, chunk):
    for lo in range(0, len(datas), chunk):
        q.enqueue_many(datas[lo : lo + chunk])


def enqueue_bulk(args):
    q = queue(args)
    q.enqueue(NOOP, -1)
    t0 = time.perf_counter()
    _bulk(q, [Queue.prepare_data(NOOP, (i,)) for i in range(args.n)], args.chunk)
    return {
        "n": args.n,
        "seconds": time.perf_counter() - t0,
        "method": f"Queue.enqueue_many, chunks of {args.chunk}",
    }


def prequeue(args):
    q = queue(args)
    t0 = time.perf_counter()
    if args.job == "sleep":
        datas = [Queue.prepare_data(SLEEPER, (i, args.seconds)) for i in range(args.n)]
    else:
        datas = [Queue.prepare_data(NOOP, (i,)) for i in range(args.n)]
    _bulk(q, datas, args.chunk)
    return {"n": args.n, "seconds": time.perf_counter() - t0}


def enqueue_paced(args):
    q = queue(args)
    return c.paced_sync(args.n, args.rate, lambda i: q.enqueue(NOOP, i))


def enqueue_delayed(args):
    q = queue(args)
    q.enqueue(NOOP, -1)
    due = c.due_time(args.delay)
    for i in range(args.n):  # enqueue_many has no scheduling option
        q.enqueue_at(c.when_of(due, i, args.n, args.spread), NOOP, i)
    return {"n": args.n, "due": due}


def worker(args):
    import rq_bench  # noqa: F401  preload the job module so forked work horses inherit it

    q = queue(args)
    Worker([q], connection=q.connection).work(
        with_scheduler=args.scheduler, logging_level="WARNING"
    )
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
