"""Records finished attempts in batches: whatever finished while the previous batch was in
flight goes in the next round trip (one settle.lua call per queue, pipelined).

A submission is a plain list append, so cancelling a job or the worker after its attempt
ended cannot lose its settle; the settler is the last loop to stop, after a final flush.

Each queue's call stands on its own: one that Redis refuses for now (a Cluster master
that is down, a slot being moved) is held and sent again after a back-off, together with
whatever finished meanwhile, while the other queues' calls of that round are delivered
(the next round, theirs included, waits for the back-off). After a round trip that failed
as a whole, each queue's call goes in a round trip of its own until a round has no
failure, so a master that does not answer holds back the other queues' settles for the
back-off only, not until it answers. A call that
is sent again after a round trip whose outcome is unknown (the connection dropped after
sending) may find its jobs settled already by the first send: that is not reported as a
job lost to another worker (see ``_deliver``). redis-py itself sends a pipeline once more
after a connection dropped (the clients' ``Retry``); a 0 from such a send, which the
settler never hears of, is still reported as a job lost.

An op Redis cannot take must not cost the other jobs of its call. A value larger than
Redis's ``proto-max-bulk-len`` (read at most once a minute, when an op carries one over the
1 MiB every Redis takes) is not sent: that job fails, dead-lettered with the reason (its
result dropped). A queue's call Redis refuses for a reason that is not an outage (a
``ResponseError`` that ``transient`` does not list: a value over a limit lowered since it
was read, a script error) is sent again op by op, each in a round trip of its own, and an
op refused on its own is replaced once by the job's failure with Redis's reason; only a
replacement refused too leaves its job pending. An op over 1 MiB whose round trip failed
as an outage goes in a round trip of its own from then on (Redis drops the connection on
a value over its limit: the ops pipelined after it would fail with it).

A bug of ours met while recording is logged and costs only the jobs it touched; the
settler goes on. A queue's call that cannot be built leaves its jobs pending: they run
again after the claim timeout, as after a crash. A reply that cannot be read (not one
answer per job) came from a call that ran: its jobs stand as it recorded them. A ``done``
callback that raises is logged; the other jobs of its round are told all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import ResponseError

from .._redis import scripts as _scripts
from .._redis.connection import pool_exhausted
from .._redis.refusals import corrupt_key, reply_code
from .._redis.values import SettleOp
from .._text import clean
from .outcomes import SMALLEST_BULK, largest_value, too_large, unrecordable
from .runtime import Runtime, transient

log = logging.getLogger("asyncjobs.worker")

Done = Callable[[int], None]
"""Told how an op was recorded: ``SETTLED``, ``NOT_OURS`` or ``ABORTED_INSTEAD``."""

NOT_OURS, SETTLED, ABORTED_INSTEAD = 0, 1, 2
"""settle.lua's answers per op: the entry is no longer this worker's; recorded; recorded,
but a retry ended aborted (its abort was requested as the attempt ended)."""


@dataclass(slots=True)
class _Item:
    queue: str
    op: SettleOp
    done: Done
    resent: bool = False
    """Sent before in a round trip whose outcome is unknown: it may be settled already."""
    alone: bool = False
    """Sent in a call and a round trip of its own (see the module docstring)."""
    dropped: int = 0
    """Round trips of its own that lost the connection while Redis answered otherwise."""
    replaced: bool = False
    """``op`` is the job's failure, standing in for an op Redis would not take."""
    finished: bool = False
    """``done`` has been called."""

    def replace(self, reason: str) -> None:
        """Record the job as failed with ``reason`` instead of ``op`` (``unrecordable``)."""
        self.op = unrecordable(self.op, self.queue, reason)
        self.replaced = True

    def finish(self, settled: int) -> None:
        """Call ``done`` once; an error it raises is logged, not passed on."""
        if self.finished:
            return
        self.finished = True
        try:
            self.done(settled)
        except Exception:
            log.exception("internal error in the bookkeeping of job id=%s queue=%s",
                          clean(self.op.job_id), self.queue)


LIMIT_READ_S = 2.0
"""The longest a read of Redis's ``proto-max-bulk-len`` may hold a round."""

DROPS = 3
"""An op over 1 MiB whose round trip of its own lost the connection this many times while
Redis answered a PING after each is taken for one Redis will not take (a value over its
``proto-max-bulk-len``, which could not be read): its job fails."""

SPLIT_AT_ONCE = 4
"""Round trips in flight at once when each queue's call goes on its own."""

Outcome = list[int] | BaseException
"""A queue's call's reply (per op, ``SETTLED``, ``NOT_OURS`` or ``ABORTED_INSTEAD``), or its
error."""


class Settler:
    """Batches settle operations and retries them through Redis outages."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._pending: list[_Item] = []
        self._held: list[_Item] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._give_up_at = float("inf")
        self._split = False

    def submit(self, queue: str, op: SettleOp, done: Done) -> None:
        """Queue an operation; ``done(answer)`` is called once it is recorded (``Done``)."""
        self._pending.append(_Item(queue, op, done))
        self._wake.set()

    @property
    def closing(self) -> bool:
        """``close`` was called: the worker is winding down (it cancels the settler's task
        only after that, when Redis does not answer in time)."""
        return self._closing

    @property
    def idle(self) -> bool:
        """Nothing waiting to be recorded."""
        return not self._pending and not self._held

    def close(self, give_up_after_s: float) -> None:
        """Flush what is pending, then stop; retry outages for at most ``give_up_after_s``."""
        self._closing = True
        self._give_up_at = time.monotonic() + give_up_after_s
        self._wake.set()

    async def run(self) -> None:
        """Flush batches until closed and empty."""
        # Read first, so that a result too large fails where it is encoded from the first
        # job on (``AttemptPath.record``), its log line and its observers' event saying so.
        await self._read_limit()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending or self._held:
                batch, self._pending, self._held = self._held + self._pending, [], []
                try:
                    await self._flush(batch)
                except asyncio.CancelledError:
                    # Kept for a run that may follow (``wrap_up`` runs the settler again
                    # when code other than the worker's cancelled it): what was sent may
                    # have been recorded.
                    self._held = [item for item in batch if not item.finished]
                    for item in self._held:  # (only ever this batch's items)
                        item.resent = True
                    raise
                except Exception:
                    self._held = []  # (only ever this batch's items)
                    lost = [item for item in batch if not item.finished]
                    if lost:
                        log.exception("internal error recording %d finished jobs; those not "
                                      "recorded stay pending and run again after the claim "
                                      "timeout", len(lost))
                    else:
                        log.exception("internal error in the settler after a round whose "
                                      "jobs were all recorded")
                    for item in lost:
                        item.finish(SETTLED)
            if self._closing:
                return

    async def _flush(self, batch: list[_Item]) -> None:
        """One round: every queue's call; what failed for now is held for the next one,
        which comes after a back-off."""
        await self._fit(batch)
        by_queue: dict[str, list[_Item]] = {}
        for item in batch:
            if not item.alone:
                by_queue.setdefault(item.queue, []).append(item)
        alone = [item for item in batch if item.alone]
        if alone:  # (rare: ops Redis would not take with others)
            together, apart = await asyncio.gather(self._send(by_queue),
                                                   self._send_alone(alone))
        else:
            together, apart = await self._send(by_queue), []
        groups: list[tuple[str, list[_Item]]] = [*by_queue.items(),
                                                 *((item.queue, [item]) for item in alone)]
        outcomes = [*together, *apart]
        failure: BaseException | None = None
        wrote = False
        dropped: list[_Item] = []
        for (queue, items), outcome in zip(groups, outcomes, strict=True):
            outcome = _checked(outcome, len(items))
            if not isinstance(outcome, BaseException):
                wrote = True
                self.rt.unrecordable.pop(queue, None)
                _deliver(queue, items, outcome)
            elif isinstance(outcome, _Unreadable):
                wrote = True
                _stand(queue, items, outcome)
            elif not transient(outcome):
                if not self._refused(queue, items, outcome):
                    _give_up(items, outcome)
                    if corrupt_key(outcome):  # (burst mode: that queue cannot be drained)
                        self.rt.unrecordable[queue] = corrupt_key(outcome)
            else:
                failure = failure or outcome
                # it may have run, unless Redis answered it or nothing was sent
                unknown = not isinstance(outcome, ResponseError) and not pool_exhausted(outcome)
                # (a value over Redis's limit drops the connection, and the round trip;
                # a pool with no connection free sent nothing)
                lost = not isinstance(outcome, ResponseError) and not pool_exhausted(outcome)
                for item in items:
                    item.resent = item.resent or unknown
                    big = _may_be_big(item.op) and largest_value(item.op) > SMALLEST_BULK
                    if big and item.alone and lost:
                        dropped.append(item)
                    item.alone = item.alone or big
                self._held += items
        if dropped and await self._answers():
            fresh = []  # replaced now: sent again at once
            for item in dropped:  # Redis answers, but drops the connection this op is on
                item.dropped += 1
                if item.dropped < DROPS:
                    continue
                if item.replaced:  # its failure too (a job id over the limit): no more tries
                    self._held.remove(item)
                    _give_up([item], failure or RuntimeError("connection dropped"))
                else:
                    item.replace(too_large(
                        largest_value(item.op), self.rt.bulk_limit(),
                        f"Redis dropped the connection each of the {DROPS} times it was "
                        "sent, as it does for such a value"))
                    item.dropped = 0
                    fresh.append(item)
            if fresh and all(item in fresh for item in self._held):
                failure = None  # (sent again at once: no outage)
        if failure is None:
            if wrote:
                self.rt.outage.ok()
            self._split = False
            return
        if time.monotonic() >= self._give_up_at:
            log.error("could not record %d finished jobs before shutdown (%s); they stay "
                      "pending and run again after the claim timeout", len(self._held), failure)
            held, self._held = self._held, []
            for item in held:
                item.finish(SETTLED)
            return
        # the round trip failed as a whole (every queue got the same error): one per queue
        sent = [o for o in outcomes if not isinstance(o, _Unsendable)]
        self._split = self._split or (len(sent) > 1 and all(o is sent[0] for o in sent))
        await asyncio.sleep(self.rt.outage.failed(failure, "settle"))

    async def _fit(self, batch: list[_Item]) -> None:
        """Replace each op carrying a value larger than Redis takes by its job's failure
        (``too_large``). Redis's limit is read (at most once a minute) only when an op
        carries a value over the 1 MiB any Redis takes; one that cannot be read now lets
        the op go as it is (a refusal is handled by ``_refused``)."""
        big = [(item, size) for item in batch
               if not item.replaced and _may_be_big(item.op)
               and (size := largest_value(item.op)) > SMALLEST_BULK]
        if not big:
            return
        most = await self._read_limit()
        if most is None:
            return
        for item, size in big:
            if size > most:
                item.replace(too_large(size, most))

    async def _answers(self) -> bool:
        """Whether Redis answers a PING now (within ``LIMIT_READ_S``)."""
        try:
            async with asyncio.timeout(LIMIT_READ_S):
                await self.rt.client.ping()
        except Exception:
            return False
        return True

    async def _read_limit(self) -> int | None:
        """Redis's ``proto-max-bulk-len`` (read at most once a minute, within
        ``LIMIT_READ_S``), or None when it could not be read yet."""
        with contextlib.suppress(Exception):  # an outage: the round's own call will tell
            async with asyncio.timeout(LIMIT_READ_S):
                await self.rt.pool._largest_value()
        return self.rt.bulk_limit()

    def _refused(self, queue: str, items: list[_Item], exc: BaseException) -> bool:
        """A queue's call that Redis refused, not for an outage: send its ops again, each
        in a round trip of its own; a single op refused is replaced, once, by its job's
        failure (sent again at once, no back-off: this is no outage). False when there is
        nothing more to try: the jobs are given up (``_give_up``)."""
        if not isinstance(exc, ResponseError) or corrupt_key(exc):
            return False  # (a queue's key of the wrong type refuses every op alike)
        # Only a value over Redis's limit is an op's own doing; any other refusal (an ACL
        # that lost a command, a proxy's error reply) would refuse every op alike, and
        # replacing ops by failures would fail jobs that succeeded: they stay pending.
        if not any(_may_be_big(item.op) and largest_value(item.op) > SMALLEST_BULK
                   for item in items):
            return False
        if len(items) > 1:
            log.warning("Redis refused the settle of %d finished jobs on queue %s (%s); "
                        "recording each on its own", len(items), queue, _reply(exc))
            for item in items:
                item.alone = True
                item.resent = True  # (a script that failed midway may have settled some)
            self._held += items
            return True
        item, = items
        if item.replaced or "protocol error" not in str(exc).lower():
            return False
        item.replace(too_large(largest_value(item.op), self.rt.bulk_limit(),
                               "Redis refused it: protocol error"))
        item.resent = True
        self._held.append(item)
        return True

    async def _send(self, by_queue: dict[str, list[_Item]]) -> list[Outcome]:
        """Each queue's outcome: its calls pipelined in one round trip, or (``_split``) in
        one round trip per queue."""
        outcomes: list[Outcome | None] = []
        calls: list[_scripts.Call] = []
        for queue, items in by_queue.items():
            call = self._call(queue, items)
            if isinstance(call, _Unsendable):
                outcomes.append(call)
            else:
                calls.append(call)
                outcomes.append(None)
        if self._split and len(calls) > 1:
            at_once = asyncio.Semaphore(SPLIT_AT_ONCE)
            sent = list(await asyncio.gather(*(self._send_one(call, at_once)
                                               for call in calls)))
        elif calls:
            try:
                sent = list(await _scripts.run_each_pipelined(self.rt.client, calls))
            except Exception as exc:
                sent = [exc] * len(calls)
        else:
            sent = []
        replies = iter(sent)
        return [next(replies) if outcome is None else outcome for outcome in outcomes]

    async def _send_alone(self, items: list[_Item]) -> list[Outcome]:
        """Each item's outcome, its op in a call and a round trip of its own."""
        at_once = asyncio.Semaphore(SPLIT_AT_ONCE)

        async def send(item: _Item) -> Outcome:
            call = self._call(item.queue, [item])
            return call if isinstance(call, _Unsendable) else await self._send_one(call,
                                                                                  at_once)

        return list(await asyncio.gather(*(send(item) for item in items)))

    def _call(self, queue: str, items: list[_Item]) -> _scripts.Call | _Unsendable:
        """The settle call of ``items`` (of ``queue``), or why it cannot be made."""
        try:
            return self.rt.stores[queue].settle_call(
                self.rt.consumer, [item.op for item in items], self.rt.config.dead_letters)
        except Exception as exc:  # a bug of ours: these jobs are given up
            error = _Unsendable(f"cannot build the settle call: {exc!r}")
            error.__cause__ = exc  # (its traceback is logged)
            return error

    async def _send_one(self, call: _scripts.Call, at_once: asyncio.Semaphore) -> Outcome:
        async with at_once:
            try:
                result: list[int] = (await _scripts.run_each_pipelined(self.rt.client,
                                                                       [call]))[0]
                return result
            except Exception as exc:
                return exc


def _may_be_big(op: SettleOp) -> bool:
    """A cheap first look (every op of every round takes it): whether ``op`` may carry a
    value over ``SMALLEST_BULK``; ``largest_value`` then measures. Its ids and lease are
    short: its payload (text: up to 4 bytes a character) and history are what grow."""
    payload = op.payload
    size = len(payload) if isinstance(payload, bytes) else len(payload) * 4
    return size > SMALLEST_BULK or len(op.history) > SMALLEST_BULK or len(op.job_id) > 1024


def _reply(exc: BaseException) -> str:
    """Redis's error reply, on one line."""
    code, text = reply_code(exc)
    return text if text.startswith(code) else f"{code} {text}"


class _Unsendable(Exception):
    """A queue's settle call could not be made (a bug of ours): nothing was sent."""


class _Unreadable(Exception):
    """A queue's settle call ran, but its reply is not one answer per op (a bug of ours)."""


def _checked(outcome: Outcome, ops: int) -> Outcome:
    """The outcome, or ``_Unreadable`` if a reply is not one answer (0, 1 or 2) per op."""
    if isinstance(outcome, BaseException):
        return outcome
    if not (isinstance(outcome, list) and len(outcome) == ops
            and all(type(one) is int and one in (NOT_OURS, SETTLED, ABORTED_INSTEAD)
                    for one in outcome)):
        return _Unreadable(f"a reply of an unexpected shape: {outcome!r:.200}")
    return outcome


def _deliver(queue: str, items: list[_Item], reply: list[int]) -> None:
    """Tell each op's owner how it went. A 0 for an op sent before in a round trip whose
    outcome is unknown most likely means that send settled it (its entry is no longer
    pending): it is not reported as lost to another worker, which it may also be."""
    for item, settled in zip(items, reply, strict=True):
        if not settled and item.resent:
            log.info("job id=%s queue=%s: recorded by a settle whose reply was lost (or "
                     "reclaimed by another worker)", item.op.job_id, queue)
            settled = SETTLED
        item.finish(settled)


def _stand(queue: str, items: list[_Item], exc: _Unreadable) -> None:
    """A queue's call ran, but its reply cannot be read: log it; its jobs stand as that
    call recorded them, and their bookkeeping is dropped."""
    log.error("the settle of %d finished jobs on queue %s ran, but its reply cannot be read "
              "(%s); their outcomes stand as that call recorded them", len(items), queue, exc)
    for item in items:
        item.finish(SETTLED)


def _give_up(items: list[_Item], exc: BaseException) -> None:
    """A queue's call failed for good: log it; its jobs stay pending (they run again after
    the claim timeout), and their bookkeeping is dropped."""
    if corrupt_key(exc):
        log.error("could not record %d finished jobs (%s); they stay pending and run again "
                  "after the claim timeout", len(items), corrupt_key(exc))
    else:
        log.error("could not record %d finished jobs; they stay pending and run again after "
                  "the claim timeout", len(items), exc_info=exc)
    for item in items:
        item.finish(SETTLED)
