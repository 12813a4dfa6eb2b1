"""taskiq + taskiq-redis adapter (runs inside benchmarks/.venvs/taskiq).

See benchmarks/README.md for the contract."""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import signal
import time

import _common as c
import _probe
from taskiq import TaskiqScheduler
from taskiq.acks import AcknowledgeType
from taskiq.api import run_receiver_task
from taskiq.cli.scheduler.run import SchedulerLoop, _startup_scheduler
from taskiq_redis import ListRedisScheduleSource, RedisAsyncResultBackend, RedisStreamBroker

QUEUE = "bench"


async def noop(i: int) -> None:
    await _probe.anoop(i)


async def sleeper(i: int, seconds: float) -> None:
    await _probe.asleeper(i, seconds)


def make(args):
    backend = RedisAsyncResultBackend(redis_url=args.redis_url, result_ex_time=3600)
    broker = RedisStreamBroker(url=args.redis_url, queue_name=QUEUE).with_result_backend(backend)
    return (
        broker,
        broker.register_task(noop, task_name="noop"),
        broker.register_task(sleeper, task_name="sleeper"),
    )


def info(args):
    return {
        "system": "taskiq",
        "version": md.version("taskiq"),
        "versions": {p: md.version(p) for p in ("taskiq", "taskiq-redis", "redis")},
        "bulk": "no bulk API: asyncio.gather of .kiq() in chunks of 1000",
        "settings": "RedisStreamBroker defaults (xread_count=100, idle_timeout=10 min) + "
        "RedisAsyncResultBackend(result_ex_time=3600); receiver via taskiq.api."
        "run_receiver_task(max_async_tasks=C, ack WHEN_SAVED = CLI defaults); delayed: "
        "TaskiqScheduler + ListRedisScheduleSource, schedule_by_time, default "
        "update_interval 60 s (scheduler loop run inside the worker process)",
        "default_concurrency": 100,
        "recovery": "RedisStreamBroker idle_timeout=600000 ms (10 min) before XAUTOCLAIM",
        "unsupported": {},
    }


async def enqueue_single(args):
    broker, t_noop, _ = make(args)
    await broker.startup()
    return await c.time_single(args.n, lambda i: t_noop.kiq(i))


async def enqueue_bulk(args):
    broker, t_noop, _ = make(args)
    await broker.startup()
    return await c.time_gather(args.n, lambda i: t_noop.kiq(i), args.chunk)


async def prequeue(args):
    broker, t_noop, t_sleeper = make(args)
    await broker.startup()
    if args.job == "sleep":
        fn = lambda i: t_sleeper.kiq(i, args.seconds)  # noqa: E731
    else:
        fn = lambda i: t_noop.kiq(i)  # noqa: E731
    t0 = time.perf_counter()
    await c.gather_chunks(args.n, fn, args.chunk)
    return {"n": args.n, "seconds": time.perf_counter() - t0}


async def enqueue_paced(args):
    broker, t_noop, _ = make(args)
    await broker.startup()
    return await c.paced(args.n, args.rate, lambda i: t_noop.kiq(i))


async def enqueue_delayed(args):
    broker, t_noop, _ = make(args)
    source = ListRedisScheduleSource(args.redis_url)
    await broker.startup()
    await source.startup()
    await t_noop.kiq(-1)
    due = c.due_time(args.delay)
    await c.gather_chunks(
        args.n,
        lambda i: t_noop.schedule_by_time(source, c.when_of(due, i, args.n, args.spread), i),
        args.chunk,
    )
    return {"n": args.n, "due": due}


async def worker(args):
    broker, _, _ = make(args)
    tasks = [
        asyncio.ensure_future(
            run_receiver_task(
                broker,
                max_async_tasks=args.concurrency,
                run_startup=True,
                ack_time=AcknowledgeType.WHEN_SAVED,
            )
        )
    ]
    if args.scheduler:
        scheduler = TaskiqScheduler(broker, sources=[ListRedisScheduleSource(args.redis_url)])
        await _startup_scheduler(scheduler)
        tasks.append(asyncio.ensure_future(SchedulerLoop(scheduler).run()))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: [t.cancel() for t in tasks])
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"stopped": True}


if __name__ == "__main__":
    c.main(globals())
