"""A worker run's start-up: connect to Redis, judge its settings, print the banner, build
the run's ``Runtime`` and create the consumer groups (retrying through outages)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .._producer.pool import Pool
from .._redis.connection import tls_hint
from .._redis.health import judge, read_settings
from .._redis.keys import Keys
from .._redis.pubsub import sharded_pubsub
from .._redis.refusals import not_now, reply_code
from .._redis.store import QueueStore
from .._routing import describe_order
from .._scheduling.declare import cron_record
from .._version import __version__
from ..exceptions import ConfigurationError, RedisUnavailable
from .runtime import OUTAGE_ERRORS, Runtime, transient

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("asyncjobs.worker")
banner = logging.getLogger("asyncjobs.worker.banner")
"""The start-up banner's logger (under ``--processes N`` only the first process logs it)."""


async def start_up(worker: Worker, client: Any, blocking: Any, where: str) -> Runtime:
    """A run's start-up: connect, check Redis, create the consumer groups; the runtime
    the run then serves with."""
    cfg = worker.config
    version = await _connect(client, where)
    verdict = judge(await read_settings(client), allow_eviction=cfg.allow_eviction)
    if verdict.errors:
        raise ConfigurationError(verdict.errors[0])
    await sharded_pubsub(client)  # which pub/sub, read while every master answers
    rt = _runtime(worker, client, blocking)
    _banner(worker, where, version)
    for warning in verdict.warnings:
        banner.warning("redis   %s", warning)
    for store in rt.stores.values():
        await _ensure_group(rt, store)
    return rt


def _banner(worker: Worker, where: str, redis_version: str) -> None:
    """Log what the worker runs and where (version, Redis, queues, tasks, cron jobs)."""
    cfg = worker.config
    banner.info("asyncjobs %s worker %s (pid %d)", __version__, worker.name, os.getpid())
    banner.info("redis   %s (Redis %s), prefix %s", where, redis_version, cfg.prefix)
    banner.info("queues  %s: concurrency %d, job timeout %s, claim timeout %g s, "
                "grace %g s%s", describe_order(cfg.queues, cfg.weights), cfg.concurrency,
                f"{cfg.job_timeout_s:g} s" if cfg.job_timeout_s else "none",
                cfg.claim_timeout_s, cfg.shutdown_grace_s, ", burst" if cfg.burst else "")
    banner.info("tasks   %s", ", ".join(sorted(worker.tasks)) or "(none)")
    for job in worker.crons:
        banner.info("cron    %s: %s -> %s", job.name, job.schedule.describe(),
                    job.task.name)


def _runtime(worker: Worker, client: Any, blocking: Any) -> Runtime:
    """The run's shared state: its stores, its pool, its cron records."""
    cfg = worker.config
    stores = {q: QueueStore(client, Keys(cfg.prefix, q)) for q in cfg.served}
    pool = Pool(client, prefix=cfg.prefix, queue=cfg.queues[0], owns_client=False)
    crons = [cron_record(c, worker._cron_queue(c)) for c in worker.crons]
    return Runtime(cfg, worker.tasks, client, blocking, stores, worker.name, pool, crons=crons)


async def _ensure_group(rt: Runtime, store: QueueStore) -> None:
    """Create the queue's consumer group, retrying through outages and a full Redis (it
    may be full of this very queue's jobs: the worker must start to drain it). A stream key
    holding something else is logged and left: the fetch loop leaves that queue alone and
    tries it again now and then (it makes the group once the key is repaired), and the
    worker's other queues are served."""
    while True:
        try:
            await store.ensure_group()
            rt.outage.ok()
            return
        except Exception as exc:
            if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
                log.error("queue %s cannot be read (its stream key %s holds another type); "
                          "serving the other queues", store.keys.queue, store.keys.stream)
                return
            if not transient(exc):
                raise
            await asyncio.sleep(rt.outage.failed(exc, f"create group {store.keys.queue}"))


async def _connect(client: Any, where: str) -> str:
    """Check that Redis answers; returns its version."""
    try:
        await client.ping()
    except OUTAGE_ERRORS as exc:
        raise RedisUnavailable(f"cannot reach Redis at {where}: {exc}{tls_hint(where, exc)}"
                               ) from exc
    except ResponseError as exc:
        if not not_now(exc):
            raise
        # A server that refuses even PING for now (MISCONF: its disk fails): no worker
        # starts on it, as none starts on a server it cannot reach.
        raise RedisUnavailable(
            f"Redis at {where} refuses commands for now: {reply_code(exc)[1]}") from exc
    try:
        info = await client.info("server")
    except ResponseError:  # servers that hide INFO (or in-memory fakes)
        return "unknown"
    return str(info.get("redis_version", "unknown"))
