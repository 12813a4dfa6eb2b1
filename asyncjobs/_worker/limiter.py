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

    def _call(self, store: QueueStore, checks: Sequence[T]) -> _scripts.Call:
        raise NotImplementedError

    def _reply(self, store: QueueStore, reply: Any) -> list[tuple[str, int]]:
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
            replies = await _scripts.run_pipelined(rt.client, calls)
        except BaseException as exc:  # every job waiting here hears of it
            for ask in batch:
                if not ask.answer.done():
                    if isinstance(exc, Exception):
                        ask.answer.set_exception(exc)
                    else:
                        ask.answer.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for asks, reply in zip(by_queue.values(), replies, strict=True):
            for ask, verdict in zip(asks, self._reply(rt.stores[asks[0].queue], reply),
                                    strict=True):
                if not ask.answer.done():
                    ask.answer.set_result(verdict)


class RateChecks(_Batched[RateCheck]):
    """Rate-limit checks (rate.lua), batched."""

    async def check(self, queue: str, delivery: Delivery, limit_key: str,
                    interval_us: int) -> tuple[str, int]:
        """rate.lua's verdict on one started job and the slot (ms) it got; raises what the
        round trip raised."""
        return await self._ask(queue, RateCheck(delivery, limit_key, interval_us))

    def _call(self, store: QueueStore, checks: Sequence[RateCheck]) -> _scripts.Call:
        return store.rate_call(self.rt.consumer, checks)

    def _reply(self, store: QueueStore, reply: Any) -> list[tuple[str, int]]:
        return store.rate_reply(reply)


class LeaseChecks(_Batched[LeaseAsk]):
    """Concurrency-limit lease acquisitions (concurrency.lua), batched.

    Leases expire on the Redis server's clock: a step of it forward would make the leases
    of running jobs look expired, and let more jobs run than the limit. Each call tells
    the server the latest time its clock may read, forecast from the previous call's
    reading of the same queue's server (``ServerClock``) plus a margin of half what
    separates a live lease from expiring (the lease period less the keep-alive interval):
    a step that could end a live lease is past it, a smaller one ends none. A server past
    it expires no lease in that call, and none expires in this worker's calls until live
    workers have renewed their leases on the new time (``reclaim_hold_s``). A worker's
    first call to a queue's server has nothing to forecast from and checks nothing."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._clocks: dict[str, ServerClock] = {}
        self._sent: dict[str, tuple[float, bool]] = {}
        self._hold_until: dict[str, float] = {}

    async def acquire(self, queue: str, delivery: Delivery, name: str,
                      limit: int) -> tuple[str, int]:
        """concurrency.lua's verdict on one started job ('run', 'waiting', 'lost',
        'aborted') and its due time (ms); raises what the round trip raised."""
        return await self._ask(queue, LeaseAsk(delivery, name, limit))

    @property
    def margin_ms(self) -> int:
        """How far past its forecast the server's clock may read before it counts as
        stepped."""
        return max(1, (self.rt.lease_ms - round(self.rt.keepalive_every_s * 1000)) // 2)

    def _call(self, store: QueueStore, checks: Sequence[LeaseAsk]) -> _scripts.Call:
        queue = store.keys.queue
        clock = self._clocks.setdefault(queue, ServerClock())
        sent = time.monotonic()
        if clock.server_ms is None:
            latest: int | None = None  # nothing to forecast from yet
        elif sent < self._hold_until.get(queue, 0.0):
            latest = 0  # after a step: no lease expires until live ones were renewed
        else:
            latest = clock.latest_ms(sent, self.margin_ms)
        self._sent[queue] = (sent, bool(latest))
        return store.lease_call(self.rt.consumer, checks, self.rt.lease_ms, latest)

    def _reply(self, store: QueueStore, reply: Any) -> list[tuple[str, int]]:
        queue = store.keys.queue
        now_ms, stepped = store.lease_clock(reply)
        sent, forecast = self._sent.get(queue, (time.monotonic(), False))
        ahead_ms = self._clocks.setdefault(queue, ServerClock()).read(now_ms, sent)
        if stepped and forecast:
            hold = self.rt.config.reclaim_hold_s
            self._hold_until[queue] = time.monotonic() + hold
            log.warning("the Redis clock of queue %s stepped forward by about %.1f s: no "
                        "concurrency lease expires for %.1f s, until live workers have "
                        "renewed theirs", queue, (ahead_ms or 0) / 1000, hold)
        return store.lease_reply(reply)
