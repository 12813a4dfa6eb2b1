"""Regressions for the hardening issue: each test failed on 88efe40 and names the defect.

In-process workers on both backends; the same cases with real worker processes (and
SIGTERM) are in ``test_hostile.py``, the idle-fleet figures in ``test_idle_fleet.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import pytest

import asyncjobs
from asyncjobs import Context, JobState

from .conftest import Backend, running

pytestmark = pytest.mark.asyncio


@asyncjobs.task
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


async def burst(backend: Backend, tasks: list[Any], **options: Any) -> None:
    worker = backend.worker(tasks, burst=True, **options)
    await asyncio.wait_for(backend.run(worker), 60)


async def letters(pool: asyncjobs.Pool) -> list[tuple[str, str]]:
    found = await pool.admin.dead_letters(newest_first=False)
    return [(d.job_id, d.reason) for d in found]


# -- 2. the hard timeout holds whatever the body does ---------------------------------------


async def test_a_task_that_swallows_cancellation_times_out_and_does_not_stall_the_queue(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    stubborn_runs = 0

    @asyncjobs.task(name="stubborn", timeout=0.3, max_tries=2, backoff=0.01)
    async def stubborn(ctx: Context) -> str:
        nonlocal stubborn_runs
        stubborn_runs += 1
        for _ in range(3):  # swallows the first cancellations, then gives up
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)
        return "finished anyway"

    bad = await pool.enqueue(stubborn)
    good = await pool.enqueue(add, 1, 1)
    began = time.monotonic()
    await burst(backend, [stubborn, add], concurrency=1)
    with pytest.raises(asyncjobs.JobFailed) as caught:
        await bad.result(timeout=5)
    assert caught.value.type == "asyncjobs.exceptions.JobTimeout"
    assert [e.type for e in caught.value.errors] == ["asyncjobs.exceptions.JobTimeout"] * 2
    assert await good.result(timeout=5) == 2
    assert stubborn_runs == 2
    # Two attempts, each abandoned 1 s after its 0.3 s timeout, then cancelled again until
    # it gave up: well under the old behaviour (recorded complete, or a stalled queue).
    assert time.monotonic() - began < 10


async def test_a_task_that_swallows_its_timeout_and_returns_is_a_timeout(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    @asyncjobs.task(name="sly", timeout=0.2, max_tries=1)
    async def sly(ctx: Context) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "pretending all went well"
        return "never"

    job = await pool.enqueue(sly)
    await burst(backend, [sly])
    info = await job.info()
    assert info.state is JobState.FAILED and info.result is None
    assert info.errors[0].type == "asyncjobs.exceptions.JobTimeout"
    assert "ignored its cancellation" in info.errors[0].message


async def test_an_async_task_that_blocks_the_loop_past_its_timeout_is_a_timeout(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    @asyncjobs.task(name="blocker", timeout=0.3, max_tries=1)
    async def blocker(ctx: Context) -> str:
        time.sleep(1.5)  # noqa: ASYNC251 - the point of the test
        return "done"

    job = await pool.enqueue(blocker)
    with caplog.at_level(logging.WARNING, logger="asyncjobs.worker"):
        await burst(backend, [blocker])
    info = await job.info()
    assert info.state is JobState.FAILED
    assert "while the event loop was blocked" in info.errors[0].message
    assert "event loop blocked for" in caplog.text and f"id={job.id} task=blocker" in caplog.text
    assert "event loop ran again after being blocked" in caplog.text


async def test_a_sync_task_blocked_past_its_timeout_does_not_hold_the_worker(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    release = asyncio.Event()

    @asyncjobs.task(name="stuck_thread", timeout=0.2, max_tries=1)
    def stuck_thread(ctx: Context) -> str:
        time.sleep(2)
        return "late"

    job = await pool.enqueue(stuck_thread)
    good = await pool.enqueue(add, 2, 3)
    began = time.monotonic()
    await burst(backend, [stuck_thread, add], concurrency=1, sync_concurrency=1)
    assert time.monotonic() - began < 1.8  # did not wait for the thread
    assert (await job.info()).errors[0].type == "asyncjobs.exceptions.JobTimeout"
    assert await good.result(timeout=5) == 5
    release.set()


# -- 3. a sync task can report progress ----------------------------------------------------------


async def test_a_plain_def_task_reports_progress(backend: Backend, pool: asyncjobs.Pool) -> None:
    seen: list[Any] = []

    @asyncjobs.task(name="sync_progress")
    def sync_progress(ctx: Context) -> str:
        ctx.progress(0.5, "half way")
        seen.append("reported")
        return "ok"

    job = await pool.enqueue(sync_progress)
    await burst(backend, [sync_progress])
    assert await job.result(timeout=5) == "ok"
    progress = await job.progress()
    assert progress is not None and (progress.value, progress.message) == (0.5, "half way")
    assert seen == ["reported"]


# -- 4 and 5. BaseException and unprintable errors ---------------------------------------------


class Boom(BaseException):
    """Not an Exception: the default retry policy does not retry it."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


@pytest.mark.parametrize("error", [Boom("boom"), KeyboardInterrupt(), SystemExit(3)],
                         ids=["custom", "keyboard-interrupt", "system-exit"])
async def test_a_base_exception_from_a_task_is_a_recorded_failure(
    backend: Backend, pool: asyncjobs.Pool, error: BaseException
) -> None:
    @asyncjobs.task(name="raiser", max_tries=3)
    async def raiser(ctx: Context) -> None:
        raise error

    job = await pool.enqueue(raiser)
    good = await pool.enqueue(add, 4, 4)
    await burst(backend, [raiser, add])
    info = await job.info()
    assert info.state is JobState.FAILED and info.attempts == 1
    assert info.errors[0].type.endswith(type(error).__qualname__)
    assert await good.result(timeout=5) == 8


async def test_an_exception_whose_str_and_repr_raise_is_recorded_not_an_internal_error(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    @asyncjobs.task(name="unprintable", max_tries=2, backoff=0.01)
    async def unprintable(ctx: Context) -> None:
        raise Unprintable()

    job = await pool.enqueue(unprintable)
    with caplog.at_level(logging.ERROR, logger="asyncjobs"):
        await burst(backend, [unprintable])
    info = await job.info()
    assert info.state is JobState.FAILED and info.attempts == 2
    assert [e.type for e in info.errors] == ["tests.test_hardening.Unprintable"] * 2
    assert info.errors[0].message == "<unprintable tests.test_hardening.Unprintable>"
    assert "internal error" not in caplog.text


# -- 6. deep data --------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("item", ["add", None, ("add", 1), add])
async def test_enqueue_many_refuses_what_is_not_a_call_and_writes_nothing(
        pool: asyncjobs.Pool, item: Any) -> None:
    with pytest.raises(TypeError, match=r"enqueue_many takes asyncjobs\.call\(task, \.\.\.\)"):
        await pool.enqueue_many([asyncjobs.call(add, 1, 2), item])
    assert (await pool.admin.queue_stats()).waiting == 0


@pytest.mark.parametrize(("options", "says"), [
    ({"timeout": float("nan")}, "timeout must be a finite number"),
    ({"timeout": float("inf")}, "timeout must be a finite number"),
    ({"timeout": 0}, "timeout must be a number of seconds above 0"),
    ({"timeout": -1}, "timeout must be >= 0"),
    ({"timeout": 10**400}, "timeout must be at most 10 years"),
    ({"retry_for": float("nan")}, "retry_for must be a finite number"),
    ({"retry_for": -1}, "retry_for must be >= 0"),
    ({"retry_for": "5"}, "retry_for must be a number of seconds"),
    ({"max_connections": 0}, "max_connections must be a whole number"),
    ({"max_connections": 1}, "max_connections must be a whole number, 2 or more"),
    ({"max_connections": 2.5}, "max_connections must be a whole number"),
])
async def test_bad_pool_options_are_refused_at_once(options: dict[str, Any], says: str) -> None:
    """A NaN timeout made every call against a Redis that never answers wait for ever."""
    with pytest.raises(asyncjobs.ConfigurationError, match=says):
        asyncjobs.create_pool("redis://127.0.0.1:1/0", **options)


async def test_a_huge_int_timeout_is_a_value_error(pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(add, 1, 2)
    with pytest.raises(ValueError, match="timeout must be at most 10 years"):
        await job.result(timeout=10**400)
    with pytest.raises(ValueError, match="wait_for_room must be at most 10 years"):
        await pool.enqueue_many([asyncjobs.call(add, 1, 2)], wait_for_room=10**400)


async def test_deep_arguments_are_refused_at_enqueue(pool: asyncjobs.Pool) -> None:
    with pytest.raises(asyncjobs.SerializationError, match="nested more than 100 levels"):
        await pool.enqueue(add, nested(980), 1)  # type: ignore[arg-type]
    assert await pool.admin.queue_stats() is not None
    assert (await pool.client.xlen(pool.keys("default").stream)) == 0


async def test_a_hand_made_deep_payload_is_dead_lettered_not_retried(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    job = await pool.enqueue(add, 1, 2)
    # ["add", [[[...50,000 levels...0]], 1], {}], written byte by byte (encoding it needs
    # the stack that decoding it lacks). Deeper than any Python's recursion limit for C
    # code: 3.13 decodes 10,000 levels (3.11 stops at 1,000, 3.12 at 1,500).
    deep = b"\x93\xa3add\x92" + b"\x91" * 50_000 + b"\x00\x01\x80"
    await pool.client.hset(pool.keys("default").job(job.id), "j", deep)
    await burst(backend, [add])
    info = await job.info()  # the record stays readable: the payload shows as undecodable
    assert info.state is JobState.FAILED and info.task == "<undecodable>"
    assert [e.type for e in info.errors] == ["asyncjobs.UndecodablePayload"]  # no retries


async def test_a_deep_result_fails_the_job_visibly(backend: Backend, pool: asyncjobs.Pool) -> None:
    @asyncjobs.task(name="deep_result", max_tries=1)
    async def deep_result(ctx: Context) -> Any:
        return nested(500)

    job = await pool.enqueue(deep_result)
    await burst(backend, [deep_result])
    with pytest.raises(asyncjobs.JobFailed) as caught:
        await job.result(timeout=5)
    assert "nested more than 100 levels" in caught.value.remote_message


# -- 8. one malformed record never wedges the queue ----------------------------------------------


async def test_corrupt_records_in_a_batch_are_dead_lettered_and_the_rest_runs(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    keys = pool.keys("default")
    goods = [await pool.enqueue(add, i, i) for i in range(5)]
    bad_attempts = await pool.enqueue(add, 0, 0)
    await pool.client.hset(keys.job(bad_attempts.id), "a", "not a number")
    bad_expiry = await pool.enqueue(add, 0, 0)
    await pool.client.hset(keys.job(bad_expiry.id), "x", "soon")
    wrong_type = await pool.enqueue(add, 0, 0)
    await pool.client.delete(keys.job(wrong_type.id))
    await pool.client.set(keys.job(wrong_type.id), "a string where a hash belongs")
    goods += [await pool.enqueue(add, i, 1) for i in range(5)]
    with caplog.at_level(logging.ERROR, logger="asyncjobs"):
        await burst(backend, [add], concurrency=50)
    assert [await g.result(timeout=5) for g in goods] == [0, 2, 4, 6, 8, 1, 2, 3, 4, 5]
    reasons = dict(await letters(pool))
    assert "attempts field is not a number" in reasons[bad_attempts.id]
    assert "expiry field is not a time" in reasons[bad_expiry.id]
    assert "holds something other than a hash" in reasons[wrong_type.id]
    assert (await bad_attempts.info()).state is JobState.FAILED
    assert await pool.client.get(keys.job(wrong_type.id)) == b"a string where a hash belongs"
    assert await pool.client.xlen(keys.stream) == 0
    assert "internal error" not in caplog.text


async def test_a_corrupt_queue_level_key_fails_the_settle_before_writing(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    keys = pool.keys("default")
    job = await pool.enqueue(add, 1, 1)
    await pool.client.set(keys.dead, "not a stream")
    worker = backend.worker([add])
    async with running(backend, worker):
        deadline = time.monotonic() + 5
        while await job.status() is not JobState.RUNNING and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    # The settle was refused as a whole: nothing half-written (not complete, no letter),
    # the entry still in the stream: handed back at shutdown, it runs once the key is fixed.
    assert await job.status() is JobState.QUEUED
    assert await pool.client.xlen(keys.stream) == 1
    assert await pool.client.get(keys.dead) == b"not a stream"
    assert "ASYNCJOBS_CORRUPT" not in caplog.text or "Traceback" not in caplog.text
    assert f"key {keys.dead} holds a string, not a stream" in caplog.text
    await pool.client.delete(keys.dead)
    await burst(backend, [add])
    assert await job.result(timeout=5) == 2


# -- 9. a full connection pool waits ---------------------------------------------------------


async def test_a_burst_larger_than_the_pool_waits_for_connections(real: Backend) -> None:
    # Each call may wait up to the pool's timeout for a free connection: 1,000 calls on 10
    # connections took over the default 5 s on a loaded machine (PoolExhausted). What is
    # tested is that they wait instead of failing at once, not how fast they get through.
    async with real.pool(max_connections=10, timeout=30) as pool:
        jobs = await asyncio.gather(*(pool.enqueue(add, i, 1) for i in range(1000)))
    assert len({j.id for j in jobs}) == 1000


async def test_a_pool_that_stays_full_raises_pool_exhausted(real: Backend) -> None:
    async with real.pool(max_connections=2, timeout=0.3) as pool:
        hogs = [asyncio.create_task(pool.client.blpop(["nothing"], timeout=1))
                for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(asyncjobs.PoolExhausted):
            await pool.enqueue(add, 1, 1)
        for hog in hogs:
            with pytest.raises(Exception):  # noqa: B017 - the blocked read times out client-side
                await hog


# -- 10. arguments that cannot bind ------------------------------------------------------------


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((1,), {}, "missing a required argument: 'b'"),
    ((1, 2, 3), {}, "too many positional arguments"),
    ((1, 2), {"c": 3}, "unexpected keyword argument 'c'"),
    ((1,), {"a": 2}, "multiple values for argument 'a'"),
])
async def test_arguments_are_bound_at_enqueue(
    pool: asyncjobs.Pool, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message) as caught:
        await pool.enqueue(add, *args, **kwargs)
    assert "add(ctx, a, b" in str(caught.value)
    assert await pool.client.xlen(pool.keys("default").stream) == 0


async def test_arguments_that_cannot_bind_are_dead_lettered_at_once(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    by_name = await pool.enqueue("add", 1, 2, 3)  # the producer does not know the signature
    await burst(backend, [add])
    info = await by_name.info()
    assert info.state is JobState.FAILED
    assert [e.type for e in info.errors] == ["asyncjobs.BadArguments"]  # no retries
    assert "too many positional arguments" in info.errors[-1].message


# -- 11. one bad pub/sub message ------------------------------------------------------------------


async def test_a_non_utf8_abort_message_does_not_stop_aborts(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()

    @asyncjobs.task(name="long_one", timeout=30)
    async def long_one(ctx: Context) -> None:
        started.set()
        await asyncio.sleep(30)

    job = await pool.enqueue(long_one)
    async with running(backend, backend.worker([long_one])):
        await asyncio.wait_for(started.wait(), 5)
        await pool.client.publish(pool.keys("default").abort_channel, b"\xff\xfe\x00")
        await asyncio.sleep(0.1)
        began = time.monotonic()
        await job.abort()
        with pytest.raises(asyncjobs.JobAborted):
            await job.result(timeout=5)
        assert time.monotonic() - began < 2  # the events loop did not restart with backoff
    assert "internal error in the events loop" not in caplog.text


# -- 12. the registry runs on the Redis clock ------------------------------------------------------


async def test_heartbeats_are_stamped_with_the_redis_clock(
    backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncjobs._worker.upkeep as upkeep

    skewed = time.time() - 70  # this host's clock is 70 s behind
    monkeypatch.setattr(upkeep.time, "time", lambda: skewed)
    async with running(backend, backend.worker([add])) as worker:
        deadline = time.monotonic() + 10
        # its first heartbeat (a moment after the start: later on a loaded machine)
        while (score := await pool.client.zscore(pool.global_keys.workers,
                                                 worker.name)) is None:
            assert time.monotonic() < deadline, "no heartbeat"
            await asyncio.sleep(0.05)
        seconds, micros = await pool.client.time()
    assert abs(score - (seconds * 1000 + micros // 1000)) < 5000


# -- 14. start.lua checks ownership ---------------------------------------------------------------


async def test_start_refuses_an_entry_another_worker_took_over(pool: asyncjobs.Pool) -> None:
    store = pool.store("default")
    await store.ensure_group()
    job = await pool.enqueue(add, 1, 2)
    [delivery] = await store.read(pool.client, "worker-a", 10, None)
    await pool.client.xclaim(store.keys.stream, "asyncjobs", "worker-b", 0, [delivery.entry])
    [started] = await store.start("worker-a", [delivery])
    assert started.verdict == "lost"
    info = await job.info()
    assert (info.state, info.attempts, info.worker) == (JobState.QUEUED, 0, None)
    [started_b] = await store.start("worker-b", [delivery])
    assert started_b.verdict == "run" and (await job.info()).worker == "worker-b"


# -- item 7 of the fresh-clone issue: hostile job ids in log lines ---------------------------------


async def test_job_ids_with_control_characters_cannot_forge_log_lines(
    backend: Backend, pool: asyncjobs.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    job = await pool.enqueue(add.options(job_id="x\nINFO forged line\x1b[31m"), 1, 1)
    with caplog.at_level(logging.INFO, logger="asyncjobs.worker"):
        await burst(backend, [add])
    assert await job.result(timeout=5) == 2
    lines = [r.getMessage() for r in caplog.records if "job complete" in r.getMessage()]
    assert lines and all("\n" not in line and "\x1b" not in line for line in lines)
    assert "id=x\\nINFO forged line\\x1b[31m" in lines[0]


@pytest.mark.parametrize("ttl", [0.05, 3601, 7200])
async def test_a_lease_ttl_outside_what_a_lease_may_hold_is_refused_at_once(ttl: float) -> None:
    """A lease expiring more than an hour ahead is taken for a stray key and removed
    (lease_clear.lua): a worker asking for one is refused when it is made, not when it
    starts leading."""
    with pytest.raises(asyncjobs.ConfigurationError, match="lease_ttl must be between"):
        asyncjobs.Worker([add], lease_ttl=ttl)


async def test_a_registry_key_of_another_type_is_replaced_by_the_first_heartbeat(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """The worker registry (a sorted set of heartbeats) holding a string, written by hand:
    the heartbeat failed for ever ("internal error in the heartbeat loop", a traceback
    each time) and the stop raised from the deregistration. beat.lua now replaces it (it
    holds nothing but heartbeats); the worker is listed, runs jobs and stops cleanly."""
    caplog.set_level(logging.WARNING, "asyncjobs")
    async with backend.pool() as pool:
        registry = pool.global_keys.workers
        await pool.client.set(registry, "written by hand")
        worker = backend.worker([add])
        async with running(backend, worker):
            assert await (await pool.enqueue(add, 2, 3)).result(timeout=10) == 5
            for _ in range(100):
                if [w.name for w in await pool.admin.workers()] == [worker.name]:
                    break
                await asyncio.sleep(0.05)
            assert [w.name for w in await pool.admin.workers()] == [worker.name]
        assert await pool.client.type(registry) in (b"none", "none", b"zset", "zset")
        assert await pool.client.zscore(registry, worker.name) is None  # deregistered
    assert not any(r.exc_info or "internal error" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]


KEEPALIVE_RUNS: list[str] = []


@asyncjobs.task(queue="a", timeout=60)
async def long_on_a(ctx: Context) -> str:
    KEEPALIVE_RUNS.append("a")
    await asyncio.sleep(5)
    return "a"


@asyncjobs.task(queue="b", timeout=60)
async def long_on_b(ctx: Context) -> str:
    KEEPALIVE_RUNS.append("b")
    await asyncio.sleep(5)
    return "b"


async def test_a_queue_whose_touch_fails_does_not_stop_the_others_being_kept_alive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a Redis Cluster, queue ``a``'s master goes down (simulated: its touches raise a
    connection error) while worker 1 runs a job of ``a`` and one of ``b``, whose master is
    fine. The keep-alive stopped at the first failed touch, so ``b``'s entry went stale and
    worker 2 (of ``b`` only, which sees no outage) took it over and ran the job a second
    time. Every queue's touch now goes on its own: ``b``'s job runs once."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from asyncjobs._redis.fake import fake_factory
    from asyncjobs._redis.store import QueueStore

    real_touch = QueueStore.touch
    down = {"a": False}

    async def touch(self: QueueStore, *args: Any, **kwargs: Any) -> Any:
        if down["a"] and self.keys.queue.split("@")[0] == "a":
            raise RedisConnectionError("the master of queue a is down")
        return await real_touch(self, *args, **kwargs)

    monkeypatch.setattr(QueueStore, "touch", touch)
    # a cluster, as the keep-alive sees it: each queue's touch on its own (on one server
    # they go in one round trip, which fails or succeeds for all)
    from asyncjobs._worker import upkeep
    monkeypatch.setattr(upkeep, "is_cluster", lambda client: True)
    KEEPALIVE_RUNS.clear()
    backend = Backend("fake", None, fake_factory(), f"t{secrets.token_hex(4)}")
    async with backend.pool() as pool:
        first = backend.worker([long_on_a, long_on_b], queues=["a", "b"], claim_timeout=1.5)
        async with running(backend, first):
            on_a, on_b = await pool.enqueue(long_on_a), await pool.enqueue(long_on_b)
            while sorted(KEEPALIVE_RUNS) != ["a", "b"]:
                await asyncio.sleep(0.02)
            down["a"] = True
            second = backend.worker([long_on_b], queues=["b"], claim_timeout=1.5)
            async with running(backend, second):
                assert await on_b.result(timeout=15) == "b"
                await asyncio.sleep(1.0)
            down["a"] = False
            assert await on_a.result(timeout=15) == "a"
    assert KEEPALIVE_RUNS.count("b") == 1, KEEPALIVE_RUNS


# -- settles: one queue's refusal holds back no other queue's, and a settle sent twice ----
# -- because its reply was lost is not reported as a job lost to another worker ----------

SETTLE_RUNS: list[str] = []


@asyncjobs.task(queue="a")
async def quick_on_a(ctx: Context, n: int) -> str:
    SETTLE_RUNS.append(f"a{n}")
    return f"a{n}"


@asyncjobs.task(queue="b")
async def quick_on_b(ctx: Context, n: int) -> str:
    SETTLE_RUNS.append(f"b{n}")
    return f"b{n}"


class QueueFaults:
    """Stands in for the scripts' pipeline: the calls of ``script`` for queue ``a`` meet a
    fault while ``down``: ``refuse`` answers them with a TRYAGAIN error reply (a slot being
    moved); ``drop`` runs the round's other calls, then loses the whole round trip (a
    Cluster master that does not answer: redis-py raises for the round). ``lose_reply``
    runs one round trip, then loses its reply (the connection dropped after sending)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prefix: str,
                 script: str = "settle") -> None:
        from asyncjobs._redis import scripts
        from asyncjobs._redis.keys import Keys

        self.real = scripts._pipeline
        self.script = script
        self.stream_a = Keys(prefix, "a").stream
        self.down: str | None = None
        self.shared = 0  # round trips that held a call of queue a and one of another queue
        self.lose_reply = 0
        self.refused = 0
        monkeypatch.setattr(scripts, "_pipeline", self.pipeline)

    def of_a(self, call: Any) -> bool:
        script, keys, _ = call
        return bool(script.name == self.script and self.stream_a in keys)

    async def pipeline(self, client: Any, calls: Any, source: bool = False) -> list[Any]:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError

        if self.lose_reply and any(call[0].name == "settle" for call in calls):
            replies = await self.real(client, calls, source)
            if any(isinstance(r, Exception) for r in replies):  # NOSCRIPT: none of it ran
                return replies
            self.lose_reply -= 1
            raise RedisConnectionError("connection lost before the reply")
        hit = [self.of_a(call) for call in calls] if self.down else [False] * len(calls)
        if not any(hit):
            return await self.real(client, calls, source)
        self.refused += 1
        self.shared += not all(hit)
        rest = [call for call, h in zip(calls, hit, strict=True) if not h]
        done = iter(await self.real(client, rest, source) if rest else [])
        if self.down == "drop":
            raise RedisConnectionError("the master of queue a does not answer")
        return [ResponseError("TRYAGAIN Multiple keys request during rehashing of slot")
                if h else next(done) for h in hit]


def lost_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "job lost" in r.getMessage()]


@pytest.mark.parametrize("fault", ["refuse", "drop"])
async def test_a_queue_whose_settle_fails_holds_back_no_other_queues_settle(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, fault: str) -> None:
    """Queue ``a``'s settles fail for now (``refuse``: an error reply for its call alone;
    ``drop``: the whole round trip raises, as redis-py's cluster pipeline does when one
    master does not answer). The settler retried the whole batch and nothing else until
    ``a`` was back: a job of ``b`` finished meanwhile waited for ``a``'s master (its
    result too), and the calls of ``b`` that had run were sent again and reported as jobs
    lost to another worker. Now each queue's call stands on its own."""
    caplog.set_level(logging.INFO, logger="asyncjobs")
    SETTLE_RUNS.clear()
    faults = QueueFaults(monkeypatch, backend.prefix)
    worker = backend.worker([quick_on_a, quick_on_b], queues=["a", "b"])
    async with running(backend, worker):
        assert await (await pool.enqueue(quick_on_b, 0)).result(timeout=10) == "b0"
        faults.down = fault
        on_a = await pool.enqueue(quick_on_a, 1)
        while faults.refused < 2:  # a's settle has failed and been sent again
            await asyncio.sleep(0.02)
        for n in range(1, 4):  # b's jobs finish and are recorded while a's cannot be
            assert await (await pool.enqueue(quick_on_b, n)).result(timeout=10) == f"b{n}"
        assert await on_a.status() == JobState.RUNNING  # not recorded yet
        faults.down = None
        assert await on_a.result(timeout=15) == "a1"
    assert sorted(SETTLE_RUNS) == ["a1", "b0", "b1", "b2", "b3"]  # each ran once
    assert lost_warnings(caplog) == []


async def test_a_settle_sent_again_after_its_reply_was_lost_is_not_reported_lost(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The connection drops after a settle was sent and run, before its reply: the settler
    sends it again, and the script answers 0 (the entry is no longer pending for this
    worker). That was logged as "job lost: another worker reclaimed it; this result is
    dropped" although the job had been recorded. It is now logged at INFO as what it most
    likely is (and may not be)."""
    caplog.set_level(logging.INFO, logger="asyncjobs")
    SETTLE_RUNS.clear()
    faults = QueueFaults(monkeypatch, backend.prefix)
    worker = backend.worker([quick_on_a], queues=["a"])
    async with running(backend, worker):
        faults.lose_reply = 1
        job = await pool.enqueue(quick_on_a, 7)
        assert await job.result(timeout=15) == "a7"
        async with asyncio.timeout(10):  # the settle sent again has answered
            while not any("reply was lost" in r.getMessage() or "job lost" in r.getMessage()
                          for r in caplog.records):
                await asyncio.sleep(0.02)
    assert faults.lose_reply == 0
    assert SETTLE_RUNS == ["a7"]
    assert lost_warnings(caplog) == []
    assert [r.getMessage() for r in caplog.records if "reply was lost" in r.getMessage()] == [
        f"job id={job.id} queue=a: recorded by a settle whose reply was lost (or reclaimed "
        "by another worker)"]


LEASE_RUNS: list[str] = []


@asyncjobs.task(queue="a", concurrency_limit=1)
async def limited_on_a(ctx: Context) -> str:
    LEASE_RUNS.append("a")
    return "a"


@asyncjobs.task(queue="b", concurrency_limit=1)
async def limited_on_b(ctx: Context) -> str:
    LEASE_RUNS.append("b")
    return "b"


async def test_a_queue_whose_lease_check_fails_does_not_fail_the_others_in_its_round_trip(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease checks of jobs started together go in one round trip, one concurrency.lua
    call per queue. Queue ``a``'s call is refused (TRYAGAIN) while ``b``'s runs and gives
    ``b``'s job its lease: the first error was raised for every job of the round trip, so
    ``b``'s job was left pending with a lease nobody would release, and ran only after the
    claim timeout (7 s here: past the 5 s ``b`` is given). Each queue's call now stands on
    its own: ``b``'s runs at once, ``a``'s after the claim timeout once its master is
    back."""
    LEASE_RUNS.clear()
    faults = QueueFaults(monkeypatch, backend.prefix, script="concurrency")
    faults.down = "refuse"
    on_a = await pool.enqueue(limited_on_a)
    on_b = await pool.enqueue(limited_on_b)
    worker = backend.worker([limited_on_a, limited_on_b], queues=["a", "b"],
                            claim_timeout=7)
    async with running(backend, worker):
        assert await on_b.result(timeout=5) == "b"
        assert faults.shared >= 1  # b's call went in the same round trip as a's refused one
        assert await on_a.status() != JobState.COMPLETE
        faults.down = None
        assert await on_a.result(timeout=30) == "a"
    assert sorted(LEASE_RUNS) == ["a", "b"]


@asyncjobs.task(rate_limit="100/s")
async def rated(ctx: Context) -> str:
    return "rated"


async def test_a_limit_check_reply_that_cannot_be_read_leaves_no_job_waiting_for_ever(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Reading a rate check's reply raised (a reply of an unexpected shape): the error
    escaped the batch's sender, the job's check was never answered, and the job waited
    for it for ever, kept alive all the while. Its check now fails as a refused one
    does: logged, the entry left pending, the job run after the claim timeout."""
    from asyncjobs._worker.limiter import RateChecks

    real_reply = RateChecks._reply
    broken = {"left": 1}

    def reply(self: RateChecks, store: Any, answer: Any, sent: Any) -> Any:
        if broken["left"]:
            broken["left"] -= 1
            raise ValueError("a reply of an unexpected shape")
        return real_reply(self, store, answer, sent)

    monkeypatch.setattr(RateChecks, "_reply", reply)
    job = await pool.enqueue(rated)
    async with running(backend, backend.worker([rated], claim_timeout=1)):
        assert await job.result(timeout=15) == "rated"
    assert broken["left"] == 0
    assert any("internal error reading the limit checks" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("fault", ["build", "reply"])
async def test_a_settle_that_cannot_be_made_or_read_costs_only_its_own_jobs(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, fault: str) -> None:
    """A bug of ours while recording queue ``a``'s finished job (``build``: its settle
    call cannot be made; ``reply``: the reply is not one 0 or 1 per job), in the round
    that records queue ``b``'s too, escaped the settler's loop and ended it: no finished
    job was recorded again, each stayed RUNNING, kept alive by its worker for ever. Now
    ``b``'s job is recorded in that round; ``a``'s is logged and given up: left pending
    (``build``: it runs again after the claim timeout, as after a crash) or standing as
    the call that ran recorded it (``reply``)."""
    from asyncjobs._redis import scripts
    from asyncjobs._redis.keys import Keys
    from asyncjobs._redis.store import QueueStore
    from asyncjobs._worker.settler import Settler

    SETTLE_RUNS.clear()
    broken = {"left": 1}
    stream_a = Keys(backend.prefix, "a").stream
    if fault == "build":
        real_call = QueueStore.settle_call

        def settle_call(self: QueueStore, *args: Any, **kwargs: Any) -> Any:
            if broken["left"] and self.keys.stream == stream_a:
                broken["left"] -= 1
                raise TypeError("an op that cannot be encoded")
            return real_call(self, *args, **kwargs)

        monkeypatch.setattr(QueueStore, "settle_call", settle_call)
    else:
        real_run = scripts.run_each_pipelined

        async def run_each(client: Any, calls: Any) -> list[Any]:
            replies = await real_run(client, calls)
            for i, (script, keys, _) in enumerate(calls):
                if broken["left"] and script.name == "settle" and stream_a in keys:
                    broken["left"] -= 1
                    replies[i] = [7]  # ran, but read as something else than 0 or 1
            return replies

        monkeypatch.setattr(scripts, "run_each_pipelined", run_each)
    rounds: list[list[str]] = []
    real_send = Settler._send

    async def send(self: Settler, by_queue: dict[str, Any]) -> Any:
        rounds.append(sorted(by_queue))
        return await real_send(self, by_queue)

    monkeypatch.setattr(Settler, "_send", send)
    first_a = await pool.enqueue(quick_on_a, 1)
    first_b = await pool.enqueue(quick_on_b, 1)
    worker = backend.worker([quick_on_a, quick_on_b], queues=["a", "b"], claim_timeout=1)
    async with running(backend, worker):
        assert await first_b.result(timeout=10) == "b1"
        assert await first_a.result(timeout=15) == "a1"
        assert await (await pool.enqueue(quick_on_a, 2)).result(timeout=10) == "a2"
    assert broken["left"] == 0
    assert rounds[0] == ["a", "b"]  # the fault hit a round that held both queues' calls
    # build: a1 was not recorded and ran again; reply: it was recorded by the call whose
    # reply could not be read, and ran once
    again = ["a1"] if fault == "build" else []
    assert sorted(SETTLE_RUNS) == sorted(["a1", "a2", "b1", *again])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if fault == "build":
        assert errors == ["could not record 1 finished jobs; they stay pending and run again "
                          "after the claim timeout"]
    else:
        assert errors == ["the settle of 1 finished jobs on queue a ran, but its reply cannot "
                          "be read (a reply of an unexpected shape: [7]); their outcomes "
                          "stand as that call recorded them"]


async def test_a_done_callback_that_raises_does_not_stop_the_settles(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The bookkeeping after a settle raised (a bug of ours): it ended the settler's loop,
    and no later job was recorded. It is logged now, and the settles go on."""
    from asyncjobs._worker.executor import Executor

    real_forget = Executor._forget
    broken = {"left": 1}

    def forget(self: Executor, *args: Any, **kwargs: Any) -> None:
        real_forget(self, *args, **kwargs)
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("bookkeeping bug")

    monkeypatch.setattr(Executor, "_forget", forget)
    async with running(backend, backend.worker([add])):
        assert await (await pool.enqueue(add, 1, 2)).result(timeout=10) == 3
        assert await (await pool.enqueue(add, 3, 4)).result(timeout=10) == 7
    assert broken["left"] == 0
    assert any("internal error in the bookkeeping of job" in r.getMessage()
               for r in caplog.records)


async def test_an_error_escaping_a_settle_round_is_logged_and_the_settles_go_on(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Any bug of ours that escapes a round (here: telling the jobs how it went) ended the
    settler's loop. The round's jobs not yet told are given up (the call had run: the job
    is recorded), and the next round goes on."""
    from asyncjobs._worker import settler

    real_deliver = settler._deliver
    broken = {"left": 1}

    def deliver(*args: Any) -> None:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("delivery bug")
        real_deliver(*args)

    monkeypatch.setattr(settler, "_deliver", deliver)
    async with running(backend, backend.worker([add])):
        assert await (await pool.enqueue(add, 1, 2)).result(timeout=10) == 3
        assert await (await pool.enqueue(add, 3, 4)).result(timeout=10) == 7
    assert broken["left"] == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "internal error recording 1 finished jobs; those not recorded stay pending and run "
        "again after the claim timeout"]


async def test_a_cancel_during_the_final_flush_does_not_drop_what_finished(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stopping gracefully flushes its last settles; a cancel of its task then
    (a second Ctrl-C, an app's task group ending) went into the settler and dropped the
    settle in flight: the finished job stayed RUNNING and ran again after the claim
    timeout. The wind-down a cancel cuts short is now done again in a hurry, shielded (it
    is bounded), as for a cancel before the stop."""
    from asyncjobs._redis import scripts

    real_run = scripts.run_each_pipelined
    flushing = asyncio.Event()

    async def slow(client: Any, calls: Any) -> list[Any]:
        if any(call[0].name == "settle" for call in calls):
            flushing.set()
            await asyncio.sleep(0.6)
        return await real_run(client, calls)

    async def connections() -> set[str]:
        """The ids of the clients connected to the real Redis, but the asking one (none to
        tell on fakeredis)."""
        if not backend.url:
            return set()
        import redis.asyncio

        async with redis.asyncio.Redis.from_url(backend.url) as admin:
            return {c["id"] for c in await admin.client_list()} - {str(await admin.client_id())}

    SETTLE_RUNS.clear()
    monkeypatch.setattr(scripts, "run_each_pipelined", slow)
    job = await pool.enqueue(quick_on_a, 1)
    before = await connections()
    runner = running(backend, backend.worker([quick_on_a], queues=["a"], claim_timeout=1))
    worker = await runner.__aenter__()
    async with asyncio.timeout(10):
        await flushing.wait()  # the job has finished; its settle is in flight
    worker.stop()
    await asyncio.sleep(0.3)  # the worker is winding down, waiting on the flush
    assert runner._task is not None
    runner._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(runner._task, 10)
    # the worker's connections are closed (they were left open, cancelled too: on uvloop,
    # closing the event loop then hung for ever)
    assert await connections() - before == set()
    assert await job.status() == JobState.COMPLETE
    assert await job.result(timeout=1) == "a1"
    assert SETTLE_RUNS == ["a1"]


@pytest.mark.parametrize("setting", [
    {"concurrency": 2.5}, {"concurrency": float("nan")}, {"concurrency": "10"},
    {"sync_concurrency": float("nan")}, {"max_deliveries": float("nan")},
    {"max_deliveries": 0}, {"dead_letter_limit": float("nan")}, {"dead_letter_limit": True},
    {"metrics_port": -1}, {"metrics_port": 70_000}, {"metrics_port": 80.5},
], ids=repr)
async def test_a_count_setting_that_is_not_a_whole_number_is_refused_at_once(
        setting: dict[str, Any]) -> None:
    """Counting settings were checked with a bare ``< 1``, which NaN (and any float)
    passed: ``dead_letter_limit=nan`` trimmed every dead letter, and every failed job's
    record with it, as soon as it was written; ``max_deliveries=nan`` never dead-lettered a
    job that kept killing its worker; ``concurrency=2.5`` failed at start-up inside
    redis-py with a traceback. Each is now a ``ConfigurationError`` naming the setting."""
    (name, _), = setting.items()
    with pytest.raises(asyncjobs.ConfigurationError, match=rf"^{name} must be "):
        asyncjobs.Worker([add], **setting)


@pytest.mark.parametrize("tries", [float("nan"), 2.0, 0, True])
async def test_a_retry_policy_whose_max_tries_is_not_a_whole_number_is_refused(tries: Any) -> None:
    """``RetryPolicy(max_tries=nan)`` passed its ``< 1`` check: a failing job under it was
    retried for ever, and never ended visibly."""
    with pytest.raises((TypeError, ValueError), match=r"^max_tries must be"):
        asyncjobs.RetryPolicy(max_tries=tries)


@pytest.mark.parametrize("most", [0, -5, float("nan"), 2.0, True, 10_001, 10**9])
async def test_a_cron_whose_max_catch_up_is_not_a_whole_number_is_refused_where_declared(
        most: Any) -> None:
    """``cron(..., max_catch_up=0)`` was accepted, and every step of the queue's scheduler
    then raised: the cron never fired, and its queue's delayed jobs and retries were moved
    only once per restart of the scheduler's loop (1 s, 2 s ... 30 s apart). A huge one
    made a leader back from an outage list that many missed ticks in one plan."""
    with pytest.raises(ValueError, match=r"^max_catch_up must be 1 to 10,000, not "):
        asyncjobs.cron(add, every=2, args=(1, 2), max_catch_up=most)


async def test_a_retry_policy_takes_its_backoff_as_a_timedelta() -> None:
    """``RetryPolicy(backoff_s=timedelta(...))`` passed its check but was kept as it was:
    every retry then failed inside the back-off (an internal error; the job waited for
    the claim timeout, its history saying the worker was lost)."""
    import datetime as dt

    from asyncjobs._retry import backoff_delay

    policy = asyncjobs.RetryPolicy(backoff_s=dt.timedelta(seconds=2),
                                   backoff_cap_s=dt.timedelta(minutes=1))
    assert (policy.backoff_s, policy.backoff_cap_s) == (2.0, 60.0)
    assert backoff_delay(3, policy.backoff_s, policy.backoff_cap_s, 0.5) == 4.0


@pytest.mark.parametrize(("change", "says"), [
    ({"dead_letter_max_age": 0}, "dead_letter_max_age must be at least 1 s"),
    ({"dead_letter_max_age": 0.5}, "dead_letter_max_age must be at least 1 s"),
])
async def test_a_dead_letter_age_under_a_second_is_refused(change: dict[str, Any],
                                                           says: str) -> None:
    """It was raised to 1 s without a word: a letter (and its job's record) was deleted
    at the next dead-lettering, when 0 may well have meant "keep them"."""
    with pytest.raises(asyncjobs.ConfigurationError, match=says):
        asyncjobs.Worker([add], **change)


@pytest.mark.parametrize("every", [0, 0.01, 7200])
async def test_a_heartbeat_interval_out_of_bounds_is_refused(every: float) -> None:
    """``configure(heartbeat_every_s=0)`` spun: an idle worker sent ~80,000 commands a
    second."""
    with pytest.raises(asyncjobs.ConfigurationError, match="heartbeat_every must be"):
        asyncjobs.Worker([add]).configure(heartbeat_every_s=every)


@pytest.mark.parametrize("retry_for", [float("nan"), float("inf"), -1, "10"])
async def test_a_pool_refuses_a_retry_for_it_could_never_end(retry_for: Any) -> None:
    """``Pool(client, retry_for=nan)`` (or inf) retried an unreachable Redis for ever,
    although a pool's calls "never hang"; ``create_pool`` checked it, ``Pool`` did not."""
    import redis.asyncio

    client = redis.asyncio.Redis()
    try:
        with pytest.raises(asyncjobs.ConfigurationError, match="retry_for"):
            asyncjobs.Pool(client, retry_for=retry_for)
    finally:
        await client.aclose()


async def test_listing_counts_that_are_not_whole_numbers_are_refused(
        pool: asyncjobs.Pool) -> None:
    """NaN passed ``scan < 1`` and the listing returned an empty page whose missing
    cursor says "the end"; the dead letters' ``scan`` was not checked at all (0 listed
    none of five letters); a float or huge ``limit`` reached Redis as a COUNT it
    refused, with a traceback at the CLI."""
    admin = pool.admin
    for bad in (float("nan"), 0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"^scan must be a whole number"):
            await admin.jobs("queued", scan=bad)
        with pytest.raises(ValueError, match=r"^scan must be a whole number"):
            await admin.dead_letter_page(scan=bad)
        with pytest.raises(ValueError, match=r"^limit must be a whole number"):
            await admin.dead_letters(limit=bad)
        with pytest.raises(ValueError, match=r"^minutes must be a whole number"):
            await admin.throughput(minutes=bad)
    with pytest.raises(ValueError, match=r"^limit must be a whole number"):
        await admin.dead_letters(limit=10**20)
    assert await admin.dead_letters(limit=1_000_000) == []


async def test_waiting_for_more_replicas_than_wait_takes_is_refused() -> None:
    """``wait_replicas=2**63`` was accepted: every enqueue then wrote its job and raised
    Redis's refusal of the WAIT, so a caller that retried made duplicates."""
    with pytest.raises(asyncjobs.ConfigurationError, match="wait_replicas must be"):
        await asyncjobs.create_pool("redis://127.0.0.1:1", wait_replicas=2**63)


async def test_an_expiry_shorter_than_a_millisecond_expires(backend: Backend,
                                                            pool: asyncjobs.Pool) -> None:
    """``expires=0.0004`` rounded to 0 ms, which the script reads as "never expires": the
    job ran however late, while ``expires=0.001`` expired."""
    job = await pool.enqueue(add.options(expires=0.0004), 1, 2)
    await asyncio.sleep(0.01)
    await burst(backend, [add])
    assert await job.status() is JobState.EXPIRED
