"""Task code that installs its own SIGTERM handler with ``loop.add_signal_handler`` no longer
keeps the worker from stopping (it ran on until killed): the worker puts its handler back
within a second, says so, and then drains and exits on SIGTERM as usual. One installed with
``signal.signal`` (which would run beside the worker's) is put back too."""

from __future__ import annotations

import asyncio
import secrets
import signal

import pytest

import asyncjobs
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._worker import stop_signals

from .procs import WorkerProcess


@pytest.mark.parametrize(("task", "loop"), [
    ("take_with_signal", "--uvloop"),
    ("take_with_signal", "--no-uvloop"),
    ("take_with_loop", "--no-uvloop"),
    ("take_with_loop", "--uvloop"),
])
def test_a_task_taking_sigterm_does_not_keep_the_worker_running(
        redis_server: RedisServer, task: str, loop: str) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    proc = WorkerProcess("tests.apps.signals:worker", redis_server.url, prefix, loop)
    try:
        proc.wait_for("ready")

        async def enqueue() -> str | None:
            async with asyncjobs.create_pool(redis_server.url, prefix=prefix) as pool:
                job = await pool.enqueue(task)
                return await job.result(timeout=30)

        assert asyncio.run(enqueue()) == "taken"
        proc.wait_for("task code replaced the worker's SIGTERM handler", 10)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0, proc.output
        assert "stopped" in proc.output
    finally:
        proc.close()


def test_who_replaced_it_is_named() -> None:
    ours = (signal.SIG_DFL, print)
    assert stop_signals.replaced_by(ours, ours) == ""
    assert "repr" in stop_signals.replaced_by((signal.SIG_DFL, repr), ours)
    assert "SIG_IGN" in stop_signals.replaced_by((signal.SIG_IGN, print), ours)
    # the process-level handler by identity: uvloop installs a new, equal, bound method
    first, again = [].append, [].append
    assert stop_signals.replaced_by((first, None), (first, None)) == ""
    assert stop_signals.replaced_by((again, None), (first, None)) != ""


@pytest.mark.asyncio
async def test_keep_puts_back_a_replaced_handler_of_the_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    hits: list[str] = []
    previous = signal.getsignal(signal.SIGUSR1)
    loop.add_signal_handler(signal.SIGUSR1, hits.append, "ours")
    ours = stop_signals.handler_of(loop, signal.SIGUSR1)
    kept = asyncio.ensure_future(stop_signals.keep(
        loop, {signal.SIGUSR1: lambda: hits.append("ours")}, every_s=0.01))
    try:
        signal.signal(signal.SIGUSR1, lambda *a: hits.append("theirs"))
        for _ in range(200):
            if stop_signals.handler_of(loop, signal.SIGUSR1)[0] == ours[0]:
                break
            await asyncio.sleep(0.01)
        signal.raise_signal(signal.SIGUSR1)
        for _ in range(200):
            if hits:
                break
            await asyncio.sleep(0.01)
        assert hits == ["ours"]
        assert "replaced the worker's SIGUSR1 handler" in caplog.text
    finally:
        kept.cancel()
        loop.remove_signal_handler(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, previous)
