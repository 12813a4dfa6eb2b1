"""Celery adapter (runs inside benchmarks/.venvs/celery). See benchmarks/README.md for the contract.

Celery tasks are synchronous. The worker uses the `threads` pool (one process, C OS threads):
for no-op tasks it measured faster here than `gevent` (about 740 vs 420 jobs/s at N=3000);
set POOL = "gevent" below to try the green pool (monkey-patched before any import)."""

import sys

POOL = "threads"
if __name__ == "__main__" and sys.argv[1:2] == ["worker"] and POOL == "gevent":
    from gevent import monkey  # must patch before anything imports socket/threading

    monkey.patch_all()

import importlib.metadata as md  # noqa: E402
import time  # noqa: E402

import _common as c  # noqa: E402
import _probe  # noqa: E402
from celery import Celery, group  # noqa: E402


def noop(i):
    _probe.noop(i)


def sleeper(i, seconds):
    _probe.sleeper(i, seconds)


def make(args):
    app = Celery("bench", broker=args.redis_url, set_as_current=True)
    app.conf.broker_connection_retry_on_startup = True
    return app, app.task(name="noop")(noop), app.task(name="sleeper")(sleeper)


def info(args):
    return {
        "system": "celery",
        "version": md.version("celery"),
        "versions": {p: md.version(p) for p in ("celery", "kombu", "redis", "gevent")},
        "bulk": "no pipelined bulk API: group(...).apply_async() in chunks of 1000 "
        "(one LPUSH round-trip per task)",
        "settings": f"Redis broker, no result backend (Celery default), worker -P {POOL} -c C "
        "--without-gossip --without-mingle --without-heartbeat, default prefetch "
        "multiplier 4, acks_late=False (default); delayed via apply_async(eta=...)",
        "default_concurrency": None,
        "recovery": "acks_late=False by default: a task is acked when received, so a killed "
        "worker's tasks are lost (visibility_timeout 1 h only applies to unacked)",
        "processes": "the prefork pool, -c = CPU count (Celery's default pool and size)",
        "unsupported": {},
        "notes": f"sync tasks; the sleep workload uses time.sleep in the {POOL} pool with "
        "concurrency 100 (the closest equivalent of asyncio.sleep)",
    }


def enqueue_single(args):
    _, t_noop, _ = make(args)
    return c.time_single_sync(args.n, lambda i: t_noop.delay(i))


def _bulk(sigs, chunk):
    for lo in range(0, len(sigs), chunk):
        group(sigs[lo : lo + chunk]).apply_async()


def enqueue_bulk(args):
    _, t_noop, _ = make(args)
    t_noop.delay(-1)
    t0 = time.perf_counter()
    _bulk([t_noop.s(i) for i in range(args.n)], args.chunk)
    return {
        "n": args.n,
        "seconds": time.perf_counter() - t0,
        "method": f"no pipelined bulk API: group().apply_async(), chunks of {args.chunk}",
    }


def prequeue(args):
    _, t_noop, t_sleeper = make(args)
    t0 = time.perf_counter()
    if args.job == "sleep":
        sigs = [t_sleeper.s(i, args.seconds) for i in range(args.n)]
    else:
        sigs = [t_noop.s(i) for i in range(args.n)]
    _bulk(sigs, args.chunk)
    return {"n": args.n, "seconds": time.perf_counter() - t0}


def enqueue_paced(args):
    _, t_noop, _ = make(args)
    return c.paced_sync(args.n, args.rate, lambda i: t_noop.delay(i))


def enqueue_delayed(args):
    _, t_noop, _ = make(args)
    t_noop.delay(-1)
    due = c.due_time(args.delay)
    for i in range(args.n):
        t_noop.apply_async((i,), eta=c.when_of(due, i, args.n, args.spread))
    return {"n": args.n, "due": due}


def worker(args):
    app, _, _ = make(args)
    pool, size = (POOL, args.concurrency) if args.processes == 1 else ("prefork", args.processes)
    app.worker_main(
        [
            "worker",
            "-P",
            pool,
            "-c",
            str(size),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ]
    )
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
