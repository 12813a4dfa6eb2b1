"""Getting work: one loop for all the worker's queues. It takes the free slots, then
either reclaims entries a dead worker left idle past the claim timeout (XAUTOCLAIM, when a
scan of a queue is due), or takes new ones in the worker's queue order (take.lua: read and
start in one round trip, one call per queue covering its priority levels), or, when no
queue has work, waits in one blocking XREAD on every level stream of every queue, from the
newest entry ids take.lua returned: it wakes at once when any of them gets a job, and no
timer polls for new work. The jobs such a wait brings take their first step before the loop
asks Redis for anything else (a busy worker sends its next take first, so that Redis works
while the batch runs). A worker of one queue on one server that has just run out of work
sends that queue's take right behind the read, on the same connection: Redis runs it the
moment the read ends, so the job that wakes the worker is already started when the worker
hears of it (one round trip, not two). Once such a read times out with nothing new, the
reads go on alone until a job starts again, so an idle worker sends one command a read.

Both reclaiming and taking go through this loop because it is the one place that takes
slots: the concurrency limit holds, a slot freed while a queue earlier in the order has
work goes to that queue, and a worker with free slots always reclaims. The wait's block
time is capped by the reclaim interval, so an idle worker scans for a dead worker's jobs on
time.

While the worker is busy on a later queue, the queues before it that ran dry are not asked
again before every batch: a blocking XREAD of their streams, on a second connection in a
task of its own, watches them, and any entry it reports makes every queue asked again
(``watch.Watch``). That read is never cancelled: ``CLIENT UNBLOCK`` and a flag end it.

The wait uses XREAD, not XREADGROUP: it delivers nothing, so a wait cut short by a shutdown
leaves no entry held by a read nobody listens to. Its connection is the ``Reader``'s own,
whose server-side client id is known, so a shutdown ends it at once (``CLIENT UNBLOCK``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from redis.exceptions import ResponseError

from .._redis.store import QueueStore, take_levels
from .._redis.values import Delivery, Started
from .._routing import WeightedOrder
from .._text import clean, first_line
from . import late
from .executor import Executor
from .reader import AnyReader
from .reclaimer import Reclaimer
from .runtime import OUTAGE_ERRORS, Runtime, refused, refused_for_now, transient
from .waiting import IDLE_RETAKE_S, Idle, Quarantine, beat, idle_wait
from .watch import Watch

log = logging.getLogger("asyncjobs.worker")


@dataclass
class Group:
    """One queue as the worker was given it, and the queues of its priority levels that it
    takes from, highest first (their stores share a hash tag: one take.lua call each)."""

    name: str
    queues: tuple[str, ...]
    stores: list[QueueStore] = field(default_factory=list)


async def fetch_loop(rt: Runtime, ex: Executor, groups: Sequence[Group],
                     weights: Sequence[int] | None, reader: AnyReader) -> None:
    """Reclaim and take entries of the worker's queues until stopped (or, in burst mode,
    drained); ``weights`` None serves ``groups`` in strict order."""
    cfg = rt.config
    block_ms = 100 if cfg.burst else max(10, min(cfg.block_ms, int(cfg.reclaim_every_s * 1000)))
    reclaimers = {g.name: Reclaimer(rt, g) for g in groups}
    order = WeightedOrder(tuple(weights)) if weights else None
    idle, bad, watch = Idle(), Quarantine(), Watch(rt)
    try:
        await _loop(rt, ex, groups, order, reclaimers, reader, idle, bad, watch, block_ms)
    finally:
        # Ended by its stop flag and a CLIENT UNBLOCK, never by cancelling its read; shielded
        # from the shutdown's cancellation of this loop.
        with anyio.CancelScope(shield=True):
            await watch.close(rt.client)


async def _loop(rt: Runtime, ex: Executor, groups: Sequence[Group],
                order: WeightedOrder | None, reclaimers: dict[str, Reclaimer],
                reader: AnyReader, idle: Idle, bad: Quarantine, watch: Watch,
                block_ms: int) -> None:
    cfg = rt.config
    while not rt.stopping.is_set():
        if ex.slots.free == 0:
            beat(rt, float("inf"))  # waiting for slots is healthy
        taken = await ex.slots.take_some(cfg.read_batch)
        beat(rt, time.monotonic())
        try:
            started, claimed, found_none = await _fetch(rt, groups, order, reclaimers,
                                                        reader, idle, bad, watch, taken,
                                                        block_ms)
        except BaseException as exc:
            ex.slots.give(taken)  # whatever happened, the slots are free again
            idle.newest = None
            watch.forget()
            if transient(exc):
                await asyncio.sleep(rt.outage.failed(exc, "read"))
                continue
            if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                log.warning("a consumer group of queues %s is gone (Redis lost its data?); "
                            "recreating", ", ".join(rt.stores))
                await _recreate(rt)
                continue
            raise  # shutdown's cancellation, or a bug (the supervisor logs it)
        try:
            ran = await _start(rt, ex, started, claimed, taken)
            if started or claimed:  # writes went through (an idle wait only reads: a
                rt.outage.ok()      # server refusing writes serves it; the heartbeat, or
                                    # the next take, tells)
        except Exception as exc:
            if not transient(exc):
                raise
            # The entries stay pending for us; nobody touches them, so after the claim
            # timeout they are reclaimed (by us or another worker) and run.
            await asyncio.sleep(rt.outage.failed(exc, "start"))
            continue
        if ran and idle.woken:
            # Jobs that woke an idle worker start before it asks Redis for more (one loop
            # turn: a plain job's body runs in its first step). A busy worker asks first
            # instead, so that Redis works on its next batch while this one runs.
            idle.woken = False
            await asyncio.sleep(0)
        await watch.settle(rt.client)  # after the start: the batch is not held up
        if cfg.burst and found_none and await _burst_over(rt, ex):
            if rt.undrained:
                log.error("%s", rt.undrained)
            else:
                log.info("burst: queues %s are drained", ", ".join(g.name for g in groups))
            return


async def _fetch(rt: Runtime, groups: Sequence[Group], order: WeightedOrder | None,
                 reclaimers: dict[str, Reclaimer], reader: AnyReader, idle: Idle,
                 bad: Quarantine, watch: Watch, count: int, block_ms: int
                 ) -> tuple[list[tuple[str, Started]], dict[str, list[Delivery]], bool]:
    """Reclaimed entries when scans are due and find some; else entries already waiting,
    taken and started in queue order; else a wait for new ones. Returns (started,
    reclaimed by queue, whether it found nothing at all)."""
    claimed: dict[str, list[Delivery]] = {}
    left = count
    scanned = False
    for reclaimer in reclaimers.values():
        if left > 0 and reclaimer.is_due():
            scanned = True
            try:
                got, failure = await reclaimer.claim(bad, left)
            except Exception:
                if claimed:  # keep what was claimed: it is ours now
                    break
                raise
            claimed.update(got)
            left -= sum(len(d) for d in got.values())
            if failure is not None:
                if claimed:
                    break
                raise failure
    if claimed:
        idle.newest, idle.quiet = None, False
        return [], claimed, False
    if scanned:  # take again at each reclaim scan, whatever the waits said
        idle.newest = None
        watch.forget()
    if idle.newest is not None and not bad.until \
            and time.monotonic() - idle.since < IDLE_RETAKE_S:
        # Nothing new since the last take found nothing (the wait would have woken):
        # wait again without asking.
        return await idle_wait(rt, reader, groups, order, idle, idle.newest,
                               _due(reclaimers, bad), bad, count, block_ms)
    dry: dict[int, dict[str, str]] = {}
    started, newest = await _take(rt, groups, order, bad, watch, dry, count)
    if started:
        idle.newest, idle.quiet = None, False
        watch.add(dry)
        return started, {}, False
    # Nothing taken: the worker's own wait covers every stream, those watched included
    # (from the ids they were found dry at), so the watch is not needed until it is busy.
    newest.update(watch.covered_ids())
    watch.forget()
    if not rt.config.burst:
        idle.newest, idle.since = newest, time.monotonic()
    return await idle_wait(rt, reader, groups, order, idle, newest, _due(reclaimers, bad), bad,
                           count, block_ms)


def _due(reclaimers: dict[str, Reclaimer], bad: Quarantine) -> float:
    """When the next reclaim scan is due, or a queue left alone is tried again."""
    return min(min(r.due for r in reclaimers.values()), bad.next_end())


async def _take(rt: Runtime, groups: Sequence[Group], order: WeightedOrder | None,
                bad: Quarantine, watch: Watch, dry: dict[int, dict[str, str]], count: int
                ) -> tuple[list[tuple[str, Started]], dict[str, str]]:
    """Take up to ``count`` waiting entries, asking each group for all that is left: in the
    groups' order (strict), or in the order of their weighted credit (``WeightedOrder.rank``;
    each charged with what it gave), so that a batch usually costs one round trip either
    way. Groups the watch covers are known to have nothing and are not asked. When nothing
    was taken, also returns each level stream's newest entry id (stream key -> id) for the
    wait. Fills ``dry`` with the groups that were asked, could be read whole, and had
    nothing (group index -> their streams' newest ids), for the watch."""
    started: list[tuple[str, Started]] = []
    newest: dict[str, str] = {}
    sequence = list(order.rank(count) if order is not None else range(len(groups)))
    regrouped: set[int] = set()
    while sequence:
        i = sequence.pop(0)
        left = count - len(started)
        if left <= 0:
            return started, newest
        if watch.skips(i):
            if order is not None:
                order.charge(i, 0, dry=True)
            continue
        group = groups[i]
        levels = [k for k, q in enumerate(group.queues) if not bad.holds(q)]
        if not levels:
            continue
        try:
            sent = time.monotonic()
            taken = await take_levels([group.stores[k] for k in levels], rt.consumer, left)
        except Exception:
            if started:  # what was taken is ours (started): run it, fail next time
                return started, {}
            raise
        if order is not None:
            order.charge(i, len(taken.rows), dry=len(taken.rows) < left)
        rows = [(group.queues[levels[level]], st) for level, st in taken.rows]
        late.stamp(rows, sent, rt.keepalive_every_s)
        started.extend(rows)
        for level, last in enumerate(taken.last):
            if last:  # '' for a stream that cannot be read: not waited on
                newest[group.stores[levels[level]].keys.stream] = last
        if not taken.rows and not taken.errors and len(levels) == len(group.queues) \
                and len(taken.last) == len(levels) and all(taken.last):
            dry[i] = {group.stores[k].keys.stream: last
                      for k, last in zip(levels, taken.last, strict=True)}
        if (refusal := refused_for_now(taken.errors)) is not None:
            if started:  # what was taken is ours (started): run it, wait out the rest next
                return started, {}
            raise refusal
        if len(taken.errors) < len(levels):  # a take went through: Redis takes writes
            rt.outage.ok()
        failed = {levels[level]: why for level, why in taken.errors}
        for k in levels:
            if k not in failed:
                bad.cleared(group.queues[k])
            elif "NOGROUP" in failed[k]:
                # Made again at id 0: what the stream holds is waiting (not new to an
                # XREAD from its newest id), so the wait starts from the beginning.
                newest[group.stores[k].keys.stream] = "0-0"
                try:
                    await _regroup(group.stores[k])
                except Exception as exc:
                    if refused(exc):  # the stream was made something else meanwhile
                        bad.add(group.queues[k], str(exc))
                        continue
                    if started:
                        return started, {}
                    raise
                if i not in regrouped:
                    # Asked again at once (its jobs come before the next group's): a
                    # stream deleted while the group was watched is made again only when
                    # a job comes, and that job is then waiting.
                    regrouped.add(i)
                    sequence.insert(0, i)
            else:
                bad.add(group.queues[k], failed[k])
    return started, newest


async def _start(rt: Runtime, ex: Executor, started: list[tuple[str, Started]],
                 claimed: dict[str, list[Delivery]], taken: int) -> int:
    """Start reclaimed deliveries, dispatch what may run, and give back the slots not
    used; returns how many jobs it dispatched. Once the worker is stopping nothing new
    starts: what was read stays held and is handed back."""
    if rt.stopping.is_set():
        ex.slots.give(taken)
        return 0
    try:
        for queue, got in claimed.items():
            # A reclaim can return this worker's own entries (a reply it never got): one
            # that already runs here is not started twice.
            got = [d for d in got if (queue, d.entry) not in ex.running]
            if got:
                sent = time.monotonic()
                rows = [(queue, st) for st in await rt.stores[queue].start(rt.consumer, got)]
                late.stamp(rows, sent, rt.keepalive_every_s)
                started.extend(rows)
        # Starts held up (their answer, another queue's take in the batch, this loop)
        # are confirmed before their jobs run.
        await late.confirmed(rt, started)
    except BaseException:
        ex.slots.give(taken)
        raise
    lost = [(q, s) for q, s in started if s.verdict == "lost"]
    if lost:
        log.warning("%d job(s) were taken over by another worker before they started here; "
                    "not started: %s", len(lost),
                    ", ".join(f"{clean(s.delivery.job_id)} ({q})" for q, s in lost[:10]))
    unsure = [(q, s) for q, s in started if s.verdict == "unconfirmed"]
    if unsure:
        log.warning("%d job(s) were not started: Redis answered too late to confirm they are "
                    "still this worker's; they run after the claim timeout: %s", len(unsure),
                    ", ".join(f"{clean(s.delivery.job_id)} ({q})" for q, s in unsure[:10]))
    runnable = [(q, s) for q, s in started if s.verdict not in ("lost", "unconfirmed")]
    # An entry that already runs here, delivered again (its consumer group was made again
    # at id 0 after it was destroyed): the attempt running it records it; not started twice.
    again = [(q, s) for q, s in runnable if (q, s.delivery.entry) in ex.running]
    if again:
        log.warning("%d job(s) were delivered again while they run here (their consumer "
                    "group was made again?); not started twice: %s", len(again),
                    ", ".join(f"{clean(s.delivery.job_id)} ({q})" for q, s in again[:10]))
        runnable = [(q, s) for q, s in runnable if (q, s.delivery.entry) not in ex.running]
    ex.slots.give(taken - len(runnable))
    for queue, item in runnable:
        ex.start(queue, item)
    return len(runnable)


async def _regroup(store: QueueStore) -> None:
    """A level's consumer group is gone (Redis lost its data?): make it again."""
    log.warning("the consumer group of queue %s is gone (Redis lost its data?); recreating",
                store.keys.queue)
    await store.ensure_group()


async def _recreate(rt: Runtime) -> None:
    """Make every level's consumer group again; a stream Redis refuses (made something
    else meanwhile) is left to the next take, which leaves that queue alone."""
    for store in rt.stores.values():
        try:
            await store.ensure_group()
        except OUTAGE_ERRORS as exc:
            await asyncio.sleep(rt.outage.failed(exc, "create group"))
            return
        except ResponseError as exc:
            if not refused(exc):
                raise


async def _burst_over(rt: Runtime, ex: Executor) -> bool:
    """``_drained``, an outage meanwhile (a Redis restarting, LOADING) waited out as every
    other read's: not drained for now."""
    try:
        return await _drained(rt, ex)
    except Exception as exc:
        if not transient(exc):
            raise
        await asyncio.sleep(rt.outage.failed(exc, "burst check"))
        return False


async def _drained(rt: Runtime, ex: Executor) -> bool:
    """Burst mode: nothing running or to settle here, and nothing left in any stream
    (waiting, or held by any consumer: a stopped worker's entries are reclaimed and run
    first) or delayed set of the worker's queues."""
    if ex.running or not ex.settler.idle:
        return False
    pipe = rt.client.pipeline(transaction=False)
    for store in rt.stores.values():
        pipe.zcard(store.keys.delayed)
        pipe.xlen(store.keys.stream)
    counts = await pipe.execute(raise_on_error=False)
    keys = [(queue, k) for queue, store in rt.stores.items()
            for k in (store.keys.delayed, store.keys.stream)]
    unreadable = []
    for (queue, key), n in zip(keys, counts, strict=True):
        if isinstance(n, ResponseError) and refused(n):
            # holds nothing any worker could run, but the queue is not drained either
            unreadable.append(f"Redis refuses to read {key} "
                              f"({first_line(n, 200)})")
        elif n != 0 and queue in rt.unrecordable and key == rt.stores[queue].keys.stream:
            # its jobs ran, but Redis refuses to record them: they would run again and
            # again, never recorded
            unreadable.append(f"Redis refuses to record the jobs of queue {queue} "
                              f"({clean(rt.unrecordable[queue][:200])})")
        elif n != 0:
            return False
    if unreadable:
        rt.undrained = "burst: not drained: " + "; ".join(unreadable)
    return True
