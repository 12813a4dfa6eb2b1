"""Limit checks of started jobs, batched: the checks asked for in one turn of the event
loop (the jobs of one read start together) go to Redis in one round trip, one script call
per queue, pipelined. ``RateChecks`` asks rate.lua (see ``asyncjobs/_limits.py`` for the
rule), ``LeaseChecks`` asks concurrency.lua for concurrency-limit leases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._redis import scripts as _scripts
from .._redis.store import QueueStore
from .._redis.values import Delivery, LeaseAsk, RateCheck
from .runtime import Runtime
from .server_clock import ServerClock

log = logging.getLogger("asyncjobs.worker")

MAX_STEP_MARGIN_MS = 5_000
"""The most a lease check's forecast allows for: a worker that has not yet heard of a
fleet member with a shorter claim timeout (heartbeats tell it) still sees every step that
could end that member's live leases, for claim timeouts of 6 s and more (a live lease has
five sixths of one left)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Ask(Generic[T]):
    queue: str
    check: T
    answer: asyncio.Future[tuple[str, int]]


class _Batched(Generic[T]):
    """Collects the checks of one loop turn and sends them together."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._pending: list[_Ask[T]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def _call(self, store: QueueStore, checks: Sequence[T]) -> tuple[_scripts.Call, Any]:
        """The script call for ``checks`` of one queue, and what ``_reply`` is to be
        given back with its reply (each call its own: batches may be in flight at once)."""
        raise NotImplementedError

    def _reply(self, store: QueueStore, reply: Any, sent: Any) -> list[tuple[str, int]]:
        raise NotImplementedError

    async def _ask(self, queue: str, check: T) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        answer: asyncio.Future[tuple[str, int]] = loop.create_future()
        self._pending.append(_Ask(queue, check, answer))
        return await answer

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Ask[T]]) -> None:
        by_queue: dict[str, list[_Ask[T]]] = {}
        for ask in batch:
            by_queue.setdefault(ask.queue, []).append(ask)
        rt = self.rt
        try:
            calls = [self._call(rt.stores[q], [a.check for a in asks])
                     for q, asks in by_queue.items()]
            replies = await _scripts.run_each_pipelined(rt.client, [call for call, _ in calls])
        except BaseException as exc:  # the round trip failed: every job waiting here hears
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for asks, reply, (_, sent) in zip(by_queue.values(), replies, calls, strict=True):
            if isinstance(reply, Exception):  # this queue's call failed: its jobs hear; the
                _fail(asks, reply)            # others' calls ran, their verdicts stand
                continue
            try:
                verdicts = _one_each(asks, self._reply(rt.stores[asks[0].queue], reply, sent))
            except Exception as exc:  # a reply it cannot read: its jobs hear, none waits on
                log.exception("internal error reading the limit checks of queue %s",
                              asks[0].queue)
                _fail(asks, exc)
                continue
            for ask, verdict in zip(asks, verdicts, strict=True):
                if not ask.answer.done():
                    ask.answer.set_result(verdict)


def _fail(asks: Sequence[_Ask[Any]], exc: BaseException) -> None:
    """Answer the asks not answered yet with ``exc`` (cancel them for a cancellation or
    other BaseException: it is not theirs to handle)."""
    for ask in asks:
        if not ask.answer.done():
            if isinstance(exc, Exception):
                ask.answer.set_exception(exc)
            else:
                ask.answer.cancel()


def _one_each(asks: Sequence[Any], verdicts: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``verdicts``, checked to hold one verdict for each of ``asks``."""
    if len(verdicts) != len(asks):
        raise ValueError(f"{len(verdicts)} verdicts for {len(asks)} checks")
    return verdicts


class RateChecks(_Batched[RateCheck]):
    """Rate-limit checks (rate.lua), batched."""

    async def check(self, queue: str, delivery: Delivery, limit_key: str,
                    interval_us: int) -> tuple[str, int]:
        """rate.lua's verdict on one started job and the slot (ms) it got; raises what the
        round trip raised."""
        return await self._ask(queue, RateCheck(delivery, limit_key, interval_us))

    def _call(self, store: QueueStore, checks: Sequence[RateCheck]
              ) -> tuple[_scripts.Call, Any]:
        return store.rate_call(self.rt.consumer, checks), None

    def _reply(self, store: QueueStore, reply: Any, sent: Any) -> list[tuple[str, int]]:
        return store.rate_reply(reply)


class LeaseChecks(_Batched[LeaseAsk]):
    """Concurrency-limit lease acquisitions (concurrency.lua), batched.

    Leases expire on the Redis server's clock: a step of it forward would make the leases
    of running jobs look expired, and let more jobs run than the limit. Each call tells
    the server the latest time its clock may read, forecast from the previous reading of
    the same queue's server (``ServerClock``; one per queue, whose priority levels share
    their lease sets and their server) plus a margin: half of what separates a live lease
    from expiring, for the shortest leases any live worker writes (the least claim timeout
    of the fleet, less its keep-alive interval), at most 5 s. A step that could end a live
    lease is past it; a smaller one ends none. A server past it expires no lease in that
    call, and none expires in this worker's calls to that queue until live workers have
    renewed their leases on the new time (``reclaim_hold_s``). A worker's first call to a
    queue has nothing to forecast from and checks nothing."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._clocks: dict[str, ServerClock] = {}
        self._hold_until: dict[str, float] = {}

    async def acquire(self, queue: str, delivery: Delivery, name: str,
                      limit: int) -> tuple[str, int]:
        """concurrency.lua's verdict on one started job ('run', 'waiting', 'lost',
        'aborted') and its due time (ms); raises what the round trip raised."""
        return await self._ask(queue, LeaseAsk(delivery, name, limit))

    @property
    def margin_ms(self) -> int:
        """How far past its forecast the server's clock may read before it counts as
        stepped: half the least claim timeout of the fleet less its keep-alive interval
        (a lease lasts one claim timeout and is renewed every keep-alive), and at most
        ``MAX_STEP_MARGIN_MS``."""
        cfg = self.rt.config
        least_s = min(self.rt.fleet_least_claim_s or cfg.claim_timeout_s, cfg.claim_timeout_s)
        gap_ms = round((least_s - self.rt.keepalive_every_s) * 1000)
        return max(1, min(gap_ms // 2, MAX_STEP_MARGIN_MS))

    def _call(self, store: QueueStore, checks: Sequence[LeaseAsk]
              ) -> tuple[_scripts.Call, Any]:
        scope = store.keys.shared
        clock = self._clocks.setdefault(scope, ServerClock())
        sent = time.monotonic()
        if clock.server_ms is None:
            latest: int | None = None  # nothing to forecast from yet
        elif sent < self._hold_until.get(scope, 0.0):
            latest = 0  # after a step: no lease expires until live ones were renewed
        else:
            latest = clock.latest_ms(sent, self.margin_ms)
        call = store.lease_call(self.rt.consumer, checks, self.rt.lease_ms, latest)
        return call, (sent, bool(latest))

    def _reply(self, store: QueueStore, reply: Any, sent: Any) -> list[tuple[str, int]]:
        scope = store.keys.shared
        sent_at, forecast = sent
        now_ms, stepped = store.lease_clock(reply)
        ahead_ms = self._clocks[scope].read(now_ms, sent_at)  # (made by ``_call``)
        if stepped and forecast:  # (a call sent during a hold says stepped: no news)
            hold = self.rt.config.reclaim_hold_s
            self._hold_until[scope] = time.monotonic() + hold
            log.warning("the Redis clock of queue %s stepped forward by about %.1f s: no "
                        "concurrency lease expires for %.1f s, until live workers have "
                        "renewed theirs", store.keys.queue, (ahead_ms or 0) / 1000, hold)
        return store.lease_reply(reply)
