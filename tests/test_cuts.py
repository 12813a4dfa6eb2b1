"""``Cuts``: how a pool's close ends the steps under way (``asyncjobs/_producer/cuts.py``),
without Redis: each step waits on a future nobody sets, as a call whose connection is in a
handshake that never ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asyncjobs import PoolClosed
from asyncjobs._producer.cuts import Cuts

pytestmark = pytest.mark.asyncio


def _cuts() -> Cuts:
    return Cuts(lambda: PoolClosed("closed"))


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _stuck_in_a_step(cuts: Cuts) -> asyncio.Task[None]:
    """A task inside a step, waiting on a future nobody sets."""
    stuck: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def call() -> None:
        with cuts.step():
            await stuck

    task = asyncio.create_task(call())
    await _turns()
    return task


async def test_a_cut_step_raises_the_close_s_error_and_leaves_no_trace() -> None:
    cuts = _cuts()
    task = await _stuck_in_a_step(cuts)
    cuts.cut()
    with pytest.raises(PoolClosed):
        await task
    assert task.cancelling() == 0
    assert (cuts._in, cuts._cut) == ({}, set())


@pytest.mark.parametrize("first", ["caller", "close"])
async def test_the_caller_s_own_cancellation_stays_a_cancellation(first: str) -> None:
    """Before or after the close's, in the same turn: the task ends cancelled."""
    cuts = _cuts()
    task = await _stuck_in_a_step(cuts)
    if first == "caller":
        task.cancel()
        cuts.cut()
    else:
        cuts.cut()
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert (cuts._in, cuts._cut) == ({}, set())


async def test_a_step_that_turns_the_cancellation_into_another_error_keeps_the_count() -> None:
    """A step whose code catches the cancellation and raises something else (redis-py
    turning a cut connection into a ConnectionError): that error goes through, and the
    task's cancel count comes back to 0, so a later ``asyncio.timeout`` is not confused."""
    cuts = _cuts()
    stuck: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def call() -> str:
        try:
            with cuts.step():
                try:
                    await stuck
                except asyncio.CancelledError:
                    raise ConnectionError("cut") from None
        except ConnectionError:
            pass
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        async with asyncio.timeout(0.01):  # a timeout after it still works
            await asyncio.sleep(1)
        return "unreachable"

    task = asyncio.create_task(call())
    await _turns()
    cuts.cut()
    with pytest.raises(TimeoutError):
        await task
    assert (cuts._in, cuts._cut) == ({}, set())


async def test_nested_steps_end_once_and_a_second_cut_finds_nothing() -> None:
    cuts = _cuts()
    stuck: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def call() -> None:
        with cuts.step():
            try:
                with cuts.step():
                    await stuck
            except PoolClosed:
                seen.append("inner")
                raise

    task = asyncio.create_task(call())
    await _turns()
    cuts.cut()
    cuts.cut()  # a second close at once: one cancellation, not two
    with pytest.raises(PoolClosed):
        await task
    assert seen == ["inner"]
    assert task.cancelling() == 0
    assert (cuts._in, cuts._cut) == ({}, set())


async def test_a_cut_from_inside_a_step_spares_its_own_task() -> None:
    cuts = _cuts()
    other_done: list[Any] = []

    async def closer() -> str:
        with cuts.step():
            cuts.cut()
            await _turns()
            return "went on"

    task = await _stuck_in_a_step(cuts)
    task.add_done_callback(other_done.append)
    assert await closer() == "went on"
    with pytest.raises(PoolClosed):
        await task
    assert other_done == [task]


async def test_a_step_outside_a_task_is_left_alone() -> None:
    """No task (a callback): nothing to cancel, nothing recorded."""
    cuts = _cuts()
    ran: list[bool] = []

    def callback() -> None:
        with cuts.step():
            ran.append(cuts._in == {})

    asyncio.get_running_loop().call_soon(callback)
    await _turns()
    assert ran == [True]
