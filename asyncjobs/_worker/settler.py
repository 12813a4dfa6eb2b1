"""Records finished attempts in batches: whatever finished while the previous batch was in
flight goes in the next round trip (one settle.lua call per queue, pipelined).

A submission is a plain list append, so cancelling a job or the worker after its attempt
ended cannot lose its settle; the settler is the last loop to stop, after a final flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .._redis import scripts as _scripts
from .._redis.values import SettleOp
from .runtime import Runtime, corrupt_key, transient

log = logging.getLogger("asyncjobs.worker")

Done = Callable[[bool], None]


class Settler:
    """Batches settle operations and retries them through Redis outages."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._pending: list[tuple[str, SettleOp, Done]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._give_up_at = float("inf")

    def submit(self, queue: str, op: SettleOp, done: Done) -> None:
        """Queue an operation; ``done(settled)`` is called once it is recorded."""
        self._pending.append((queue, op, done))
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing waiting to be recorded."""
        return not self._pending

    def close(self, give_up_after_s: float) -> None:
        """Flush what is pending, then stop; retry outages for at most ``give_up_after_s``."""
        self._closing = True
        self._give_up_at = time.monotonic() + give_up_after_s
        self._wake.set()

    async def run(self) -> None:
        """Flush batches until closed and empty."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._flush(batch)
            if self._closing:
                return

    async def _flush(self, batch: list[tuple[str, SettleOp, Done]]) -> None:
        by_queue: dict[str, list[tuple[SettleOp, Done]]] = {}
        for queue, op, done in batch:
            by_queue.setdefault(queue, []).append((op, done))
        calls = [
            self.rt.stores[q].settle_call(self.rt.consumer, [op for op, _ in items],
                                          self.rt.config.dead_letters)
            for q, items in by_queue.items()
        ]
        while True:
            try:
                replies = await _scripts.run_pipelined(self.rt.client, calls)
                self.rt.outage.ok()
                break
            except Exception as exc:
                if not transient(exc):
                    if corrupt_key(exc):
                        log.error("could not record %d finished jobs (%s); they stay pending "
                                  "and run again after the claim timeout", len(batch),
                                  corrupt_key(exc))
                    else:
                        log.exception("could not record %d finished jobs; they stay pending "
                                      "and run again after the claim timeout", len(batch))
                    return _release(by_queue)
                if time.monotonic() >= self._give_up_at:
                    log.error(
                        "could not record %d finished jobs before shutdown (%s); they stay "
                        "pending and run again after the claim timeout", len(batch), exc,
                    )
                    return _release(by_queue)
                await asyncio.sleep(self.rt.outage.failed(exc, "settle"))
        for items, reply in zip(by_queue.values(), replies, strict=True):
            for (_, done), settled in zip(items, reply, strict=True):
                done(bool(settled))
        return None


def _release(by_queue: dict[str, list[tuple[SettleOp, Done]]]) -> None:
    """Drop the bookkeeping of operations that could not be recorded (already logged)."""
    for items in by_queue.values():
        for _, done in items:
            done(True)
