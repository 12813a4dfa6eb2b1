"""A stalled Redis (a slow command, a fork, DEBUG SLEEP) makes every pending entry idle by
the stall while its clock runs on: a live worker's refresh, sent during the stall, waits
behind it, and after the stall Redis runs what was sent meanwhile in an order of its own.
A reclaim scan sent just before the stall ends passes the clock check (it waited less
than the margin) and, run before that refresh, would take over a live worker's job: it
would run twice (CI saw 15 of 3,000 in tests/test_operator_faults.py's stall test). The
reclaimer claims only a moment after a look answered (reclaimer.py), by which time Redis
has run every refresh that was queued with it.

The stall here is a proxy's: it holds everything its clients send, then lets it through
in the worst order (the reclaiming worker's command first, the live worker's refresh
after, and no answer back before both reached Redis), as Redis does at the end of a
stall."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context
from asyncjobs._redis import scripts as s
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.keys import Keys
from asyncjobs._redis.store import QueueStore
from asyncjobs._worker import reclaimer

from .conftest import Backend, running

pytestmark = pytest.mark.asyncio

CLAIM_S = 3.0
"""The worker's claim timeout: entries idle 1.5 s are taken over; scans every 0.75 s; a
scan must follow its look within 0.25 s (room for a loaded machine)."""

STALL_S = 1.8
"""Longer than the idle threshold (1.5 s), shorter than the claim timeout."""


class StallProxy:
    """A TCP proxy to a Redis server that can stall: while ``holding``, what its clients
    send is kept; ``release`` passes it on, and answers wait for ``answers``."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.holding = False
        self.answers = asyncio.Event()
        self.answers.set()
        self.pending: list[tuple[asyncio.StreamWriter, bytearray]] = []
        self.sent_while_held = bytearray()
        self.passed = bytearray()
        """Everything passed on (held or not)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def release(self) -> None:
        """Pass on what was held, each connection's bytes in order; stop holding."""
        for upstream, held in self.pending:
            if held:
                upstream.write(bytes(held))
                self.passed.extend(held)
                held.clear()
        self.holding = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        held = bytearray()
        self.pending.append((up_writer, held))

        async def upward() -> None:
            while data := await reader.read(65536):
                if self.holding:
                    held.extend(data)
                    self.sent_while_held.extend(data)
                else:
                    up_writer.write(data)
                    self.passed.extend(data)
                    await up_writer.drain()

        async def downward() -> None:
            while data := await up_reader.read(65536):
                await self.answers.wait()
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upward()), asyncio.create_task(downward())]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                writer.close()
                up_writer.close()


@contextlib.asynccontextmanager
async def proxy(server: RedisServer) -> AsyncIterator[StallProxy]:
    p = StallProxy(server.port)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def _warmed_backend(url: str, prefix: str
                    ) -> tuple[Backend, Callable[[], Awaitable[None]]]:
    """A backend whose worker's clients come from ``url``, and a call that opens connections
    in its main client's pool ahead: a command that needs a new connection in a stall waits
    for the stalled handshake's answer before it is sent at all (the keep-alive's touches
    in flight take connections of their own), and the tests need the reclaimer's call sent
    during the stall."""
    made: list[Any] = []

    def factory(**options: Any) -> Any:
        client = url_factory(url)(**options)
        made.append(client)
        return client

    async def warm() -> None:
        await asyncio.gather(*(made[0].ping() for _ in range(8)))

    return Backend("real", None, factory, prefix), warm


class LiveConsumer:
    """A live worker ("alive") holding one job through its own client: it refreshes the
    entry every sixth of the claim timeout (its task fails if the entry was taken over)
    until it dies."""

    def __init__(self, store: QueueStore, delivery: Any) -> None:
        self.store, self.delivery = store, delivery
        self.refreshing = True
        self.task = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        while self.refreshing:
            lost, _ = await self.store.touch("alive", [self.delivery])
            assert lost == [], "the live worker's job was taken over"
            await asyncio.sleep(CLAIM_S / 6)

    async def die(self) -> None:
        """Stop refreshing, as if the worker died."""
        self.refreshing = False
        await self.task


@contextlib.asynccontextmanager
async def live_consumer(url: str, prefix: str, job_id: str) -> AsyncIterator[LiveConsumer]:
    """"alive" takes the job ``job_id`` (waiting on the default queue) through ``url``."""
    client = url_factory(url)(max_connections=4, socket_timeout=None)
    try:
        store = QueueStore(client, Keys(prefix, "default"))
        await store.ensure_group()
        [taken] = await store.take("alive", 1)
        assert taken.verdict == "run" and taken.delivery.job_id == job_id
        consumer = LiveConsumer(store, taken.delivery)
        try:
            yield consumer
        finally:
            consumer.refreshing = False
            consumer.task.cancel()
            await asyncio.gather(consumer.task, return_exceptions=True)
    finally:
        await client.aclose()


def _reclaim_calls(data: bytes, names: tuple[str, ...] = (s.IDLE, s.RECLAIM)) -> bool:
    """Whether the bytes hold a reclaimer's call: a look or a scan (of ``names``)."""
    return any(s.load(name).sha.encode() in data for name in names)


async def test_a_scan_sent_as_a_stall_ends_does_not_take_a_live_workers_job(
        fresh_redis: RedisServer) -> None:
    """The live worker ("alive", its refreshes through its own proxy) holds a job and
    refreshes it every sixth of the claim timeout. The reclaiming worker runs one job at a
    time: its fetch loop waits for that slot, not for Redis. Redis stalls 0.8 s; near the
    end the slot frees, the fetch loop's reclaim call goes out and, as the stall ends, is
    run first. Without the look, that call was the scan, and it took the job (the clock
    check passes: it waited 20 ms). Now it is the look, which finds the job idle: the scan
    that follows (checked to have been sent) comes after the refresh. After the stall
    "alive" stops refreshing, as if it died: then its job is taken over and runs once."""
    runs: Counter[str] = Counter()
    free = asyncio.Event()

    @asyncjobs.task(name="held")
    async def held(ctx: Context) -> None:
        runs[ctx.job_id] += 1

    @asyncjobs.task(name="busy")
    async def busy(ctx: Context) -> None:
        await free.wait()

    async with proxy(fresh_redis) as to_b, proxy(fresh_redis) as to_alive:
        url_b = f"redis://127.0.0.1:{to_b.port}/0"
        url_alive = f"redis://127.0.0.1:{to_alive.port}/0"
        prefix = "stall"
        b, warm = _warmed_backend(url_b, prefix)
        async with asyncjobs.create_pool(fresh_redis.url, prefix=prefix) as pool:
            await _load_scripts(pool)  # no NOSCRIPT answer held by the stall
            job = await pool.enqueue(held)
            async with live_consumer(url_alive, prefix, job.id) as alive:
                worker = b.worker([held, busy], claim_timeout=CLAIM_S, concurrency=1)
                async with running(b, worker):
                    await warm()
                    await asyncio.sleep(1.5)  # several reclaim calls: nothing to take
                    assert runs == {}
                    slot = await pool.enqueue(busy)
                    await until_running(pool, slot.id)
                    to_b.holding = to_alive.holding = True
                    began = time.monotonic()
                    await asyncio.sleep(STALL_S)
                    assert not _reclaim_calls(bytes(to_b.sent_while_held))
                    free.set()  # the slot frees: the fetch loop's reclaim call goes out
                    while not _reclaim_calls(bytes(to_b.sent_while_held)):
                        assert time.monotonic() - began < 5, "no reclaim call"
                        await asyncio.sleep(0.005)
                    await asyncio.sleep(0.02)
                    to_b.answers.clear()  # Redis runs what was sent in the stall first
                    mark = len(to_b.passed)
                    to_b.release()
                    await asyncio.sleep(0.02)
                    to_alive.release()
                    await asyncio.sleep(0.02)
                    to_b.answers.set()
                    await asyncio.sleep(1.5)  # the reclaimer goes on looking: nothing
                    assert runs == {}
                    after = bytes(to_b.passed[mark:])
                    assert _reclaim_calls(after[:200_000], (s.RECLAIM,)), (
                        "no scan followed the look")
                    assert not alive.task.done()
                    await alive.die()
                    await job.result(timeout=10)
                    assert runs == {job.id: 1}


async def until_running(pool: asyncjobs.Pool, job_id: str, queue: str | None = None) -> None:
    for _ in range(500):
        if (await pool.job(job_id, queue).info()).state == asyncjobs.JobState.RUNNING:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the job never ran")


async def test_a_reclaimer_whose_scans_are_always_late_still_takes_a_dead_workers_job(
        real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan must follow its look within half the step margin; one that cannot (a Redis
    far away, a lagging loop) is looked at again, and after ``LATE_LOOKS`` such looks the
    scan goes anyway: a dead worker's job is never left stuck."""
    runs: Counter[str] = Counter()
    calls: list[str] = []
    look, scan = reclaimer.Reclaimer._look, reclaimer.reclaim_levels

    @asyncjobs.task(name="orphaned")
    async def orphaned(ctx: Context) -> None:
        runs[ctx.job_id] += 1

    async def counted_look(self: reclaimer.Reclaimer, *args: Any) -> Any:
        got = await look(self, *args)
        calls.append("found" if self._looked_at is not None else "none")
        return got

    async def counted_scan(*args: Any, **kwargs: Any) -> Any:
        calls.append("scan")
        return await scan(*args, **kwargs)

    monkeypatch.setattr(reclaimer.Reclaimer, "window_s", property(lambda self: -1.0))
    monkeypatch.setattr(reclaimer.Reclaimer, "_look", counted_look)
    monkeypatch.setattr(reclaimer, "reclaim_levels", counted_scan)
    async with real.pool() as pool:
        job = await pool.enqueue(orphaned)
        store = pool.store("default")
        await store.ensure_group()
        [taken] = await store.take("dead", 1)
        assert taken.verdict == "run"
        async with running(real, real.worker([orphaned], claim_timeout=CLAIM_S)):
            await job.result(timeout=15)
    assert runs == {job.id: 1}
    # looks that find nothing until the job is idle; then a look that finds it, one more
    # per late scan, and the scan goes without one
    first_found = calls.index("found")
    assert set(calls[:first_found]) <= {"none"}, calls
    assert calls[first_found:first_found + reclaimer.LATE_LOOKS + 2] == (
        ["found"] * (reclaimer.LATE_LOOKS + 1) + ["scan"]), calls


LAG_S = 1.5
"""How late the lagging reclaimer's scan goes after its look: past the idle threshold."""


async def test_a_late_scan_sent_in_a_stall_does_not_take_a_live_workers_job(
        fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A look finds a dead worker's job idle; then the reclaiming worker's loop lags (its
    look returns ``LAG_S`` late) while Redis stalls, so its scan goes late and without a
    fresh look (``LATE_LOOKS`` is 0 here), near enough to the stall's end to pass the
    clock check, and Redis runs it before the refresh the live worker sent in the stall.
    The live worker's job is then idle past the threshold (1.5 s): the old late scan took
    it (CI saw 12 of 3,000 run twice in tests/test_operator_faults.py's stall test, under
    a loaded machine). A late scan takes only entries idle longer by the time since its look: the
    live worker keeps its job, the dead worker's runs once, and once the live worker
    stops refreshing, its job is taken over and runs once."""
    runs: Counter[str] = Counter()
    look = reclaimer.Reclaimer._look
    stalled = asyncio.Event()

    @asyncjobs.task(name="held")
    async def held(ctx: Context) -> None:
        runs[ctx.job_id] += 1

    async with proxy(fresh_redis) as to_b, proxy(fresh_redis) as to_alive:

        async def lagging_look(self: reclaimer.Reclaimer, *args: Any) -> Any:
            got = await look(self, *args)
            if self._looked_at is not None and not stalled.is_set():
                to_b.holding = to_alive.holding = True  # Redis stalls
                stalled.set()
                await asyncio.sleep(LAG_S)  # and this worker's loop lags
            return got

        scans: list[Any] = []
        scan = reclaimer.reclaim_levels

        async def seen_scan(*args: Any, **kwargs: Any) -> Any:
            got = await scan(*args, **kwargs)
            if stalled.is_set():
                scans.append(got)
            return got

        monkeypatch.setattr(reclaimer.Reclaimer, "_look", lagging_look)
        monkeypatch.setattr(reclaimer, "LATE_LOOKS", 0)
        monkeypatch.setattr(reclaimer, "reclaim_levels", seen_scan)
        url_b = f"redis://127.0.0.1:{to_b.port}/0"
        url_alive = f"redis://127.0.0.1:{to_alive.port}/0"
        prefix = "latestall"
        b, warm = _warmed_backend(url_b, prefix)
        async with asyncjobs.create_pool(fresh_redis.url, prefix=prefix) as pool:
            # Redis knows the scan's script: its first call is not answered NOSCRIPT (an
            # answer the stall holds) and sent again after the refresh
            await _load_scripts(pool)
            store = pool.store("default")
            await store.ensure_group()
            # the dead worker's job first: the scan starts at the entry the look found
            orphan = await pool.enqueue(held)
            [dead] = await store.take("dead", 1)
            assert dead.verdict == "run" and dead.delivery.job_id == orphan.id
            job = await pool.enqueue(held)
            async with live_consumer(url_alive, prefix, job.id) as alive, \
                    running(b, b.worker([held], claim_timeout=CLAIM_S)):
                await warm()
                await asyncio.wait_for(stalled.wait(), 10)
                began = time.monotonic()
                while not _reclaim_calls(bytes(to_b.sent_while_held), (s.RECLAIM,)):
                    assert time.monotonic() - began < LAG_S + 3, "no late scan"
                    await asyncio.sleep(0.005)
                assert time.monotonic() - began >= LAG_S - 0.1
                assert _reclaim_calls(bytes(to_alive.sent_while_held), (s.TOUCH,))
                await asyncio.sleep(0.05)
                to_b.answers.clear()  # Redis runs the late scan first
                to_b.release()
                await asyncio.sleep(0.02)
                to_alive.release()
                await asyncio.sleep(0.02)
                to_b.answers.set()
                await until(lambda: runs[orphan.id] == 1, 10)
                # the late scan ran (its clock check passed: it was not a scan that
                # claims nothing) and took nothing of the live worker's
                assert scans and not scans[0].stepped
                assert job.id not in {d.job_id for _, d in scans[0].rows}
                await asyncio.sleep(1.0)  # a refresh or two: nothing else is taken
                assert not alive.task.done()
                assert runs == {orphan.id: 1}
                await alive.die()
                await job.result(timeout=10)
                assert runs == {orphan.id: 1, job.id: 1}


HELD_ANSWERS_S = 2.5
"""Longer than the idle threshold (1.5 s), under the claim timeout."""


async def test_a_worker_whose_touch_is_answered_late_keeps_touching(
        fresh_redis: RedisServer) -> None:
    """A worker's touch that Redis ran just before a stall is answered after it: a worker
    that waited for that answer before its next touch had none waiting in the stall, and
    its jobs were taken over (the same for answers held up on their way back). Here the
    answers to worker A are held for 2.5 s while its commands get through: A goes on
    touching every 0.5 s (``TOUCHES_IN_FLIGHT``), so worker B, which takes over entries
    idle 1.5 s, takes nothing, and A's job runs once."""
    runs: Counter[str] = Counter()

    @asyncjobs.task(name="long_one", timeout=30)
    async def long_one(ctx: Context) -> str:
        runs[ctx.job_id] += 1
        await asyncio.sleep(4)
        return "done"

    async with proxy(fresh_redis) as to_a:
        prefix = "lateanswers"
        a, warm = _warmed_backend(f"redis://127.0.0.1:{to_a.port}/0", prefix)
        direct = Backend("real", fresh_redis.url, url_factory(fresh_redis.url), prefix)
        async with asyncjobs.create_pool(fresh_redis.url, prefix=prefix) as pool:
            await _load_scripts(pool)
            worker_a = a.worker([long_one], claim_timeout=CLAIM_S)
            async with running(a, worker_a):
                await warm()
                job = await pool.enqueue(long_one)
                await until(lambda: runs[job.id] == 1, 10)
                async with running(direct, direct.worker([long_one], claim_timeout=CLAIM_S)):
                    await asyncio.sleep(1.0)  # B has heard of A, and looks
                    mark = len(to_a.passed)
                    to_a.answers.clear()
                    await asyncio.sleep(HELD_ANSWERS_S)
                    touches = bytes(to_a.passed[mark:]).count(s.load(s.TOUCH).sha.encode())
                    to_a.answers.set()
                    assert await job.result(timeout=10) == "done"
                    assert (await job.info()).worker == worker_a.name
    assert runs == {job.id: 1}
    assert touches >= 3, touches  # sent while none was answered


async def _load_scripts(pool: asyncjobs.Pool) -> None:
    for name in (s.IDLE, s.RECLAIM, s.TOUCH):
        await pool.client.script_load(s.load(name).source)


async def until(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


@pytest.mark.on_cluster
async def test_the_keep_alive_touches_every_queue_in_one_round_trip(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker holding jobs on six queues refreshes them all in one pipelined round trip
    on one server: sent together, the touches wait together behind a stall and run before
    its answers go out (four at a time, the fifth queue's waited for the first four's
    answers, and could come after a reclaim scan). On a cluster each queue's goes on its
    own, so that a master that is down holds back no other queue's."""
    from asyncjobs._redis import scripts as scripts_module
    from asyncjobs._worker import upkeep

    queues = [f"k{i}" for i in range(6)]
    free = asyncio.Event()
    together: list[int] = []
    alone: list[str] = []
    entered: list[str] = []

    @asyncjobs.task(name="hold")
    async def hold(ctx: Context) -> None:
        entered.append(ctx.queue)
        await free.wait()

    pipelined = scripts_module.run_each_pipelined
    touch = QueueStore.touch

    async def counted_pipeline(client: Any, calls: Any) -> Any:
        if calls and all(script.name == s.TOUCH for script, _, _ in calls):
            together.append(len(calls))
        return await pipelined(client, calls)

    async def counted_touch(self: QueueStore, *args: Any, **kwargs: Any) -> Any:
        alone.append(self.keys.stream)
        return await touch(self, *args, **kwargs)

    monkeypatch.setattr(upkeep._scripts, "run_each_pipelined", counted_pipeline)
    monkeypatch.setattr(QueueStore, "touch", counted_touch)
    async with backend.pool() as pool:
        jobs = [await pool.enqueue(hold.options(queue=q)) for q in queues]
        worker = backend.worker([hold], queues=queues, concurrency=12, claim_timeout=1)
        async with running(backend, worker):
            # Every body running, not only each record saying so (take.lua writes that): a
            # start answered late is confirmed by a touch of its queue alone
            # (``late.confirmed``) before its body runs, and that touch is not the
            # keep-alive's. Seen under CI load: one queue's late confirmation came after
            # the records said running.
            for _ in range(1000):
                if len(entered) == len(queues):
                    break
                await asyncio.sleep(0.01)
            assert sorted(entered) == queues, entered
            together.clear()
            alone.clear()
            await asyncio.sleep(0.6)  # three keep-alive ticks or more (every 1/6 s)
            free.set()
            await asyncio.gather(*(job.result(timeout=10) for job in jobs))
    if backend.name == "cluster":
        assert together == [] and len(alone) >= 6 * 2, (together, alone)
    else:
        assert together and set(together) <= {6} and alone == [], (together, alone)
        assert len(together) >= 2
