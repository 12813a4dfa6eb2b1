"""The worker's background duties besides fetching: keep held entries fresh, react to abort
requests and scheduler wake-ups (pub/sub: sharded on a Redis Cluster that has it, see
``_redis.pubsub``), and heartbeat into the worker registry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from .._redis import scripts as _scripts
from .._redis.cluster import is_cluster
from .._redis.keys import VACATED, GlobalKeys
from .._redis.pubsub import RESUBSCRIBED, Subscriber, pubsub_for
from .._redis.refusals import corrupt_key
from .._redis.store import QueueStore
from .._redis.store import touched as touched_reply
from .._redis.values import Delivery
from .._text import clean, first_line, safe_str
from .._version import __version__
from .executor import Executor
from .runtime import OUTAGE_ERRORS, Runtime, refused, transient

log = logging.getLogger("asyncjobs.worker")

_REGISTRY_PRUNE_MS = 24 * 3600 * 1000  # registry entries of workers gone this long go
_TOUCHES_AT_ONCE = 4
"""On a Redis Cluster, the keep-alive's touches of different queues in flight at once
(connections it takes); on one server they go in one round trip."""


TOUCHES_IN_FLIGHT = 4
"""Keep-alive touches sent and not yet answered, at most. A touch is sent every refresh
interval R whether the one before was answered or not: one that Redis ran just before a
stall is answered only after it, and the next, sent meanwhile, waits in Redis behind the
stall and runs before its answers go out, as reclaimer.py's look relies on. Answers held
up while the touches themselves get through (a slow way back) keep the entries fresh for
this many intervals; in an outage that hangs, each holds a connection until it times out."""


async def keepalive_loop(rt: Runtime, ex: Executor) -> None:
    """Reset the idle time of every held entry well inside the claim timeout; cancel jobs
    whose entry was taken by another worker, and jobs whose abort was requested. Runs until
    the worker has drained (a draining worker still holds its jobs). A touch goes every
    refresh interval (sooner after one failed in an outage, or when ``touch_now`` is set),
    without waiting for the one before to be answered (``TOUCHES_IN_FLIGHT``)."""
    rounds: set[asyncio.Task[bool]] = set()
    refusing: set[str] = set()
    next_at = time.monotonic() + rt.keepalive_every_s
    try:
        while True:
            await _turn(rt.touch_now, rounds, next_at)
            now = time.monotonic()
            for done in [t for t in rounds if t.done()]:
                rounds.discard(done)
                if not done.result():  # (raises a round's failure) an outage: try again
                    # soon, not after a long backoff: the first touch after Redis comes
                    # back must come before other workers' reclaim scans resume
                    next_at = min(next_at, now + min(0.5, rt.keepalive_every_s))
            if rt.touch_now.is_set() or now >= next_at:
                rt.touch_now.clear()
                next_at = now + rt.keepalive_every_s
                if len(rounds) < TOUCHES_IN_FLIGHT:
                    rounds.add(asyncio.ensure_future(_touch_round(rt, ex, refusing)))
    finally:
        for task in rounds:
            task.cancel()
        await asyncio.gather(*rounds, return_exceptions=True)


async def _turn(now_wanted: asyncio.Event, rounds: set[asyncio.Task[bool]],
                until: float) -> None:
    """Wait until ``until`` (monotonic), ``now_wanted`` is set, or a round ends."""
    if now_wanted.is_set():
        return
    waiter = asyncio.ensure_future(now_wanted.wait())
    try:
        await asyncio.wait({waiter, *rounds}, timeout=max(0.0, until - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _touch_round(rt: Runtime, ex: Executor, refusing: set[str]) -> bool:
    """One touch of every queue this worker holds entries on, and what its answers say
    done; False if a queue's touch failed for an outage. A queue whose keys Redis refuses
    (its stream overwritten by a string, say) is logged in one line while it does (its
    name kept in ``refusing``), and the others' touches stand: raising would pause every
    queue's keep-alive, and other workers would take over their jobs, running them twice.
    Raises any other failure."""
    touched = [(queue, store, held) for queue, store in rt.stores.items()
               if (held := ex.to_touch(queue))]
    if not touched:
        return True
    if len(touched) > 1 and not is_cluster(rt.client):
        results = await _touch_together(rt, touched)
    else:
        # On a Redis Cluster, every queue's touch at once, each on its own: a master
        # that is down (or refuses writes) must not keep the entries of queues on the
        # other masters from being refreshed, where workers that see no outage would
        # take them over.
        room = asyncio.Semaphore(_TOUCHES_AT_ONCE)
        results = await asyncio.gather(*(_touch(rt, room, store, held)
                                         for _, store, held in touched),
                                       return_exceptions=True)
    failure: BaseException | None = None
    ok = True
    for (queue, _, _), result in zip(touched, results, strict=True):
        if isinstance(result, BaseException):
            if refused(result):
                if queue not in refusing:
                    refusing.add(queue)
                    log.error("queue %s: the jobs this worker runs from it cannot be kept "
                              "alive (%s); its other queues go on", queue,
                              corrupt_key(result) or first_line(result))
                continue
            if not isinstance(result, Exception) or not transient(result):
                failure = failure or result
                continue
            rt.outage.failed(result, "keep-alive")
            ok = False
            continue
        if queue in refusing:
            refusing.discard(queue)
            log.warning("queue %s: its jobs are kept alive again", queue)
        lost, aborted = result
        for entry in lost:
            _lost(ex, queue, entry)
        for job_id in aborted:
            running = ex.find_job(queue, job_id)
            if running is not None:
                ex.cancel(running, "abort")
    if failure is not None:
        raise failure
    return ok


async def _touch_together(rt: Runtime, touched: list[tuple[str, QueueStore, list[Delivery]]]
                          ) -> list[tuple[list[str], list[str]] | BaseException]:
    """Every queue's touch in one round trip (one server): sent together, they wait
    together behind a stalled Redis and run before the answers of the stall's backlog go
    out, so a reclaim scan sent after such an answer (reclaimer.py) comes after all of
    them. A queue's error reply stands for that queue; a round trip that fails, for all."""
    calls = [store.touch_call(rt.consumer, held, rt.lease_ms) for _, store, held in touched]
    try:
        replies = await _scripts.run_each_pipelined(rt.client, calls)
    except Exception as exc:
        return [exc] * len(touched)
    return [r if isinstance(r, Exception) else touched_reply(r) for r in replies]


async def _touch(rt: Runtime, room: asyncio.Semaphore, store: QueueStore,
                 held: list[Delivery]) -> tuple[list[str], list[str]]:
    async with room:
        return await store.touch(rt.consumer, held, rt.lease_ms)


def _lost(ex: Executor, queue: str, entry: str) -> None:
    """A touch found ``entry`` no longer this worker's: cancel its attempt, unless a limit
    check is deciding it now. The touch's list was made before that check began (attempts
    being checked are left out of it: ``Executor.to_touch``), but its script may have run
    in Redis after the check's (a touch still on its way, or repeated after NOSCRIPT): the
    entry it missed is then the one the check's script released as it deferred the job,
    and the check's reply says so. An entry taken by another worker meanwhile, the
    script finds itself ('lost'); one taken after it, the next touch does."""
    running = ex.running.get((queue, entry))
    if running is not None and running.checking:
        return
    ex.cancel_entry(queue, entry, "lost")


async def events_loop(rt: Runtime, ex: Executor, wake: dict[str, asyncio.Event],
                      vacated: dict[str, asyncio.Event] | None = None) -> None:
    """Listen for abort requests, scheduler wake-ups (``wake``, by queue) and leader
    leases given up (``vacated``, by queue); resubscribe after outages (every event is set
    then: a wake-up or a lease given up may have been missed meanwhile). Runs until the
    worker has drained (an abort may arrive during the grace period)."""
    vacated = vacated or {}
    handlers: dict[bytes, Callable[[bytes], None]] = {}
    for queue, store in rt.stores.items():
        handlers[store.keys.abort_channel.encode()] = _on_abort(ex, queue)
        if queue in wake:
            handlers[store.keys.wake_channel.encode()] = _on_wake(wake[queue],
                                                                  vacated.get(queue))
    # rt.touch_now: the keep-alive's touch finds aborts requested meanwhile
    events = (*wake.values(), *vacated.values(), rt.touch_now)

    def missed() -> None:
        """A wake-up, a lease given up or an abort may have been missed while away, or
        before the first subscribe (jobs may already be running)."""
        for event in events:
            event.set()

    while True:
        pubsub: Subscriber | None = None
        try:
            pubsub = await pubsub_for(rt.client,
                                      on_failure=lambda exc: rt.outage.failed(exc, "pub/sub"),
                                      on_recovery=rt.outage.ok)
            await pubsub.subscribe(*handlers)
            missed()
            await _listen(pubsub, handlers, missed)
        except OUTAGE_ERRORS as exc:
            await asyncio.sleep(rt.outage.failed(exc, "pub/sub"))
        finally:
            if pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()


async def _listen(pubsub: Subscriber, handlers: dict[bytes, Callable[[bytes], None]],
                  missed: Callable[[], None]) -> None:
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
        if message and message.get("type") == RESUBSCRIBED:
            missed()
        elif message and message.get("type") == "message":
            handler = handlers.get(message["channel"])
            if handler is not None:
                try:
                    handler(message["data"])
                except Exception:  # anyone can publish anything: one message never stops us
                    log.exception("could not handle a message on %s",
                                  clean(safe_str(message["channel"])))


def _on_abort(ex: Executor, queue: str) -> Callable[[bytes], None]:
    def handle(data: bytes) -> None:
        job_id = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        running = ex.find_job(queue, job_id)
        if running is not None:
            ex.cancel(running, "abort")

    return handle


def _on_wake(event: asyncio.Event, vacated: asyncio.Event | None
             ) -> Callable[[bytes], None]:
    def handle(data: bytes) -> None:
        if data == VACATED:
            if vacated is not None:
                vacated.set()
        else:
            event.set()

    return handle


async def heartbeat_loop(rt: Runtime, ex: Executor) -> None:
    """Publish this worker's liveness, only while its fetch loops are actually working."""
    cfg = rt.config
    keys = GlobalKeys(cfg.prefix)
    stale_after = cfg.block_ms / 1000 + cfg.heartbeat_every_s * 3
    while True:
        # A stopping worker no longer fetches but is alive, finishing its jobs.
        if rt.stopping.is_set() or rt.fetching(stale_after):
            try:
                await _beat(rt, ex, keys)
                rt.outage.ok()
            except Exception as exc:
                if not transient(exc):
                    raise
                rt.outage.failed(exc, "heartbeat")
        else:
            log.error("fetch loop stalled for over %.0f s; heartbeat withheld", stale_after)
        await asyncio.sleep(cfg.heartbeat_every_s)


async def _beat(rt: Runtime, ex: Executor, keys: GlobalKeys) -> None:
    """Publish this worker's record and stamp it alive with the Redis clock (the sorted
    set's score is what ``Admin.workers`` trusts; ``beat`` in the JSON is this host's)."""
    cfg = rt.config
    info = {
        "name": rt.consumer,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "queues": list(cfg.served),  # every level: what `asyncjobs check` looks for
        "concurrency": cfg.concurrency,
        "running": ex.active,
        "stopping": rt.stopping.is_set(),
        "started": int(rt.started_at * 1000),
        "beat": int(time.time() * 1000),
        "version": __version__,
        "tasks": sorted(rt.tasks),
        "crons": rt.crons,
    }
    ttl = max(1, int(cfg.heartbeat_every_s * 3))
    _, most_ms, least_ms = await _scripts.load(_scripts.BEAT)(
        rt.client, [keys.workers, keys.worker(rt.consumer), keys.claim_timeouts],
        [rt.consumer, _REGISTRY_PRUNE_MS, json.dumps(info), ttl,
         round(cfg.claim_timeout_s * 1000)])
    rt.fleet_claim_timeout_s = max(cfg.claim_timeout_s, int(most_ms) / 1000)
    before = rt.keepalive_every_s
    rt.fleet_least_claim_s = min(cfg.claim_timeout_s, int(least_ms) / 1000)
    if rt.keepalive_every_s < before:  # a worker with a shorter claim timeout is here:
        rt.touch_now.set()  # refresh now, then at its pace


async def unregister(rt: Runtime) -> None:
    """Remove this worker from the registry at shutdown (a registry key of another type,
    written meanwhile, holds no entry of this worker: nothing to remove)."""
    keys = GlobalKeys(rt.config.prefix)
    pipe = rt.client.pipeline(transaction=False)
    pipe.delete(keys.worker(rt.consumer))
    pipe.zrem(keys.workers, rt.consumer)
    await pipe.execute(raise_on_error=False)
