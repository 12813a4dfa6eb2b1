"""Rate-limit checks of started jobs, batched: the checks asked for in one turn of the event
loop (the jobs of one read start together) go to Redis in one round trip, one rate.lua call
per queue, pipelined. See ``asyncjobs/_limits.py`` for the rule and rate.lua for the
verdicts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .._redis import scripts as _scripts
from .._redis.store import Delivery, RateCheck
from .runtime import Runtime


@dataclass(frozen=True, slots=True)
class _Ask:
    queue: str
    check: RateCheck
    answer: asyncio.Future[tuple[str, int]]


class RateChecks:
    """Collects the checks of one loop turn and sends them together."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._pending: list[_Ask] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def check(self, queue: str, delivery: Delivery, limit_key: str,
                    interval_us: int) -> tuple[str, int]:
        """rate.lua's verdict on one started job and the slot (ms) it got; raises what the
        round trip raised."""
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        answer: asyncio.Future[tuple[str, int]] = loop.create_future()
        self._pending.append(_Ask(queue, RateCheck(delivery, limit_key, interval_us), answer))
        return await answer

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Ask]) -> None:
        by_queue: dict[str, list[_Ask]] = {}
        for ask in batch:
            by_queue.setdefault(ask.queue, []).append(ask)
        rt = self.rt
        calls = [rt.stores[q].rate_call(rt.consumer, [a.check for a in asks])
                 for q, asks in by_queue.items()]
        try:
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
            for ask, verdict in zip(asks, rt.stores[asks[0].queue].rate_reply(reply),
                                    strict=True):
                if not ask.answer.done():
                    ask.answer.set_result(verdict)
