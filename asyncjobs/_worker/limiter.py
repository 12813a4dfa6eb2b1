"""Limit checks of started jobs, batched: the checks asked for in one turn of the event
loop (the jobs of one read start together) go to Redis in one round trip, one script call
per queue, pipelined. ``RateChecks`` asks rate.lua (see ``asyncjobs/_limits.py`` for the
rule), ``LeaseChecks`` asks concurrency.lua for concurrency-limit leases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._redis import scripts as _scripts
from .._redis.store import QueueStore
from .._redis.values import Delivery, LeaseAsk, RateCheck
from .runtime import Runtime

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
    """Concurrency-limit lease acquisitions (concurrency.lua), batched."""

    async def acquire(self, queue: str, delivery: Delivery, name: str,
                      limit: int) -> tuple[str, int]:
        """concurrency.lua's verdict on one started job ('run', 'waiting', 'lost',
        'aborted') and its due time (ms); raises what the round trip raised."""
        return await self._ask(queue, LeaseAsk(delivery, name, limit))

    def _call(self, store: QueueStore, checks: Sequence[LeaseAsk]) -> _scripts.Call:
        return store.lease_call(self.rt.consumer, checks,
                                self.rt.lease_ms)

    def _reply(self, store: QueueStore, reply: Any) -> list[tuple[str, int]]:
        return store.lease_reply(reply)
