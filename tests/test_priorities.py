"""Routing: priority levels within a queue, and strict or weighted order across queues.

The rules are pure (``asyncjobs/_routing.py``) and tested without Redis first; then a worker
on both backends: levels strictly ordered and FIFO within a level, delayed and retried jobs
keeping their level, strict queue order under load, weighted shares within 10 % of the
weights, an idle worker waking at once for any queue and level, and bad input refused with
nothing written.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

import asyncjobs
from asyncjobs import ConfigurationError, Context, Retry
from asyncjobs._redis.keys import Keys
from asyncjobs._routing import (
    WeightedOrder,
    check_unique,
    level_queue,
    members,
    parse_queues,
    split_level,
)

from .conftest import Backend, running
from .procs import run_cli

pytestmark = pytest.mark.on_cluster

# -- the pure rules ------------------------------------------------------------------------


def test_levels_map_to_queues_of_their_own() -> None:
    assert level_queue("emails", "high") == "emails@high"
    assert level_queue("emails", "normal") == "emails"
    assert level_queue("emails", "low") == "emails@low"
    assert level_queue("emails", None) == "emails"
    assert level_queue("emails@high", "high") == "emails@high"
    assert level_queue("emails@high", None) == "emails@high"
    assert split_level("emails@high") == ("emails", "high")
    assert split_level("emails@low") == ("emails", "low")
    assert split_level("emails") == ("emails", "normal")
    # '@' followed by anything else is part of an ordinary name
    assert split_level("a@b") == ("a@b", "normal")
    assert split_level("@high") == ("@high", "normal")
    assert members("emails") == ("emails@high", "emails", "emails@low")
    assert members("emails@low") == ("emails@low",)
    assert members("a@b") == ("a@b@high", "a@b", "a@b@low")


@pytest.mark.parametrize("bad", ["urgent", "HIGH", "", 0, 5, None.__class__, True])
def test_a_priority_that_is_not_a_level_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="priority must be one of high, normal, low"):
        level_queue("emails", bad)


def test_a_priority_contradicting_the_queue_level_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="contradicts"):
        level_queue("emails@high", "low")
    with pytest.raises(ConfigurationError, match="contradicts"):
        level_queue("emails@low", "normal")


def test_level_keys_share_the_queue_hash_tag_and_differ_from_its_keys() -> None:
    normal, high = Keys("p", "emails"), Keys("p", "emails@high")
    assert normal.stream == "p:{emails}:stream"
    assert high.stream == "p:{emails}@high:stream"
    assert high.delayed == "p:{emails}@high:delayed"
    assert high.job("x") == "p:{emails}@high:job:x"
    every = [normal.stream, normal.delayed, normal.job("x"), normal.leader, normal.stats]
    assert not {high.stream, high.delayed, high.job("x"), high.leader, high.stats} & set(every)
    # an ordinary name with '@' keeps the layout it always had
    assert Keys("p", "a@b").stream == "p:{a@b}:stream"


def test_queue_lists_are_strict_and_mappings_or_weights_are_weighted() -> None:
    assert parse_queues("a") == (("a",), None)
    assert parse_queues(["a", "b", "c"]) == (("a", "b", "c"), None)
    assert parse_queues({"a": 6, "b": 3, "c": 1}) == (("a", "b", "c"), (6, 3, 1))
    assert parse_queues(["a=6", "b = 3", "c=1"]) == (("a", "b", "c"), (6, 3, 1))


@pytest.mark.parametrize(("queues", "message"), [
    ([], "at least one queue"),
    ({}, "at least one queue"),
    (["a=6", "b"], "give every queue a weight or none"),
    ({"a": 0}, "whole number from 1 to 1000"),
    ({"a": -2}, "whole number from 1 to 1000"),
    ({"a": 1001}, "whole number from 1 to 1000"),
    ({"a": True}, "whole number from 1 to 1000"),
    ({"a": 1.5}, "whole number from 1 to 1000"),
    ({"a": "6"}, "whole number from 1 to 1000"),
    (["a", "a"], "served twice"),
    (["a", "a@high"], "served twice"),
    ({"a@low": 1, "a": 2}, "served twice"),
    # in a list, '=' gives a weight: a bad one is refused, never taken for a queue's name
    *((["a=6", f"b={w}"], "name=weight takes a whole number from 1 to 1000")
      for w in ("10000", "-1", "abc", "inf", "", "1.5")),
    (["a=0"], "whole number from 1 to 1000"),
    (["a=10000"], "name=weight takes a whole number"),
    (["=3"], "name=weight takes a whole number"),
])
def test_bad_queue_tables_are_refused(queues: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_queues(queues)
    with pytest.raises(ConfigurationError, match=message):
        asyncjobs.Worker([], queues=queues)


def test_levels_named_alone_can_be_served_by_different_workers() -> None:
    check_unique(["a@high", "b"])
    assert asyncjobs.Worker([], queues=["a@high"]).config.served == ("a@high",)
    assert asyncjobs.Worker([], queues=["a", "b@low"]).config.served == (
        "a@high", "a", "a@low", "b@low")


def test_weighted_order_gives_exact_shares_spread_out() -> None:
    order = WeightedOrder((6, 3, 1))
    picks = []
    for _ in range(1000):  # batches of one slot, every queue busy
        first = order.rank(1)[0]
        order.charge(first, 1)
        picks.append(first)
    assert Counter(picks) == {0: 600, 1: 300, 2: 100}
    # every window of ten picks holds each queue's share: none waits a whole round
    for start in range(990):
        window = Counter(picks[start:start + 10])
        assert window[2] >= 1 and window[1] >= 2, (start, picks[start:start + 10])


def test_task_and_job_priorities_are_checked_at_definition() -> None:
    with pytest.raises(ConfigurationError, match="task '_f': priority must be one of"):
        asyncjobs.task(priority="urgent")(_f)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="contradicts"):
        asyncjobs.task(queue="q@high", priority="low")(_f)
    t = asyncjobs.task(priority="high")(_f)
    assert t.priority == "high"
    with pytest.raises(ConfigurationError, match="priority must be one of"):
        t.options(priority="top")  # type: ignore[arg-type]


async def _f(ctx: Context) -> None:
    return None


# -- a worker ------------------------------------------------------------------------------

ran: list[tuple[str, str]] = []


@asyncjobs.task
async def note(ctx: Context, tag: str) -> str:
    ran.append((ctx.queue, tag))
    return tag


@asyncjobs.task
async def slow_note(ctx: Context, tag: str) -> str:
    ran.append((ctx.queue, tag))
    await asyncio.sleep(0.01)
    return tag


retried: list[int] = []


@asyncjobs.task(priority="high")
async def urgent_once_retried(ctx: Context) -> None:
    ran.append((ctx.queue, f"urgent-{ctx.attempt}"))
    if ctx.attempt == 1:
        raise Retry(delay=0)


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


@pytest.mark.asyncio
async def test_levels_run_strictly_in_order_and_fifo_within_a_level(backend: Backend) -> None:
    async with backend.pool(queue="q") as pool:
        for i in range(10):
            await pool.enqueue(note.options(priority="low"), f"low{i}")
            await pool.enqueue(note, f"normal{i}")
            await pool.enqueue(note.options(priority="high"), f"high{i}")
        assert sorted(await pool.admin.queues()) == ["q", "q@high", "q@low"]
        await backend.run(backend.worker([note], queues=["q"], concurrency=1, burst=True))
    assert [tag for _, tag in ran] == ([f"high{i}" for i in range(10)]
                                       + [f"normal{i}" for i in range(10)]
                                       + [f"low{i}" for i in range(10)])
    assert {q for q, _ in ran} == {"q", "q@high", "q@low"}


@pytest.mark.asyncio
async def test_delayed_and_retried_jobs_keep_their_level(backend: Backend) -> None:
    async with backend.pool(queue="q") as pool:
        later = await pool.enqueue(note.options(priority="low", delay=60), "later")
        assert later.queue == "q@low"
        assert await pool.client.zscore(pool.keys("q@low").delayed, later.id) is not None
        assert await pool.client.zcard(pool.keys("q").delayed) == 0
        for i in range(60):
            await pool.enqueue(slow_note, f"n{i}")
        urgent = await pool.enqueue(urgent_once_retried)
        assert urgent.queue == "q@high"
        async with running(backend, backend.worker([slow_note, urgent_once_retried, note],
                                                   queues=["q"], concurrency=1)):
            await urgent.result(timeout=30)
        tags = [tag for _, tag in ran]
        assert tags[0] == "urgent-1"
        # the retry went back to the high level: it ran before the normal jobs were done
        assert "urgent-2" in tags and tags.index("urgent-2") < 60, tags
        assert ("q@high", "urgent-2") in ran


@pytest.mark.asyncio
async def test_strict_order_a_freed_slot_goes_to_the_first_queue_with_work(
        backend: Backend) -> None:
    async with backend.pool(queue="bulk") as pool:
        for i in range(40):
            await pool.enqueue(slow_note, f"bulk{i}")
            await pool.enqueue(slow_note.options(queue="default"), f"default{i}")
        worker = backend.worker([slow_note], queues=["critical", "default", "bulk"],
                                concurrency=2)
        async with running(backend, worker):
            while len(ran) < 10:
                await asyncio.sleep(0.005)
            before = len(ran)
            handles = [await pool.enqueue(slow_note.options(queue="critical"), f"c{i}")
                       for i in range(5)]
            for h in handles:
                await h.result(timeout=30)
            while len(ran) < 85:
                await asyncio.sleep(0.01)
        order = [tag for _, tag in ran]
        # while critical had work, no slot went to another queue: at most the two slots
        # already being filled when the critical jobs arrived started something else
        last = max(order.index(f"c{i}") for i in range(5))
        others = [t for t in order[before:last] if not t.startswith("c")]
        assert len(others) <= 2, order[before:last + 1]
        # and default (before bulk in the order) was emptied before bulk began
        first_bulk = next(i for i, t in enumerate(order) if t.startswith("bulk"))
        assert all(f"default{i}" in order[:first_bulk] for i in range(40)), order[:first_bulk]


@pytest.mark.asyncio
@pytest.mark.parametrize("concurrency", [1, 8])
async def test_weighted_shares_are_within_ten_percent_of_the_weights(
        backend: Backend, concurrency: int) -> None:
    weights = {"a": 6, "b": 3, "c": 1}
    async with backend.pool(queue="a") as pool:
        for name in weights:
            await pool.enqueue_many([asyncjobs.call(note.options(queue=name), name)
                                     for _ in range(700)])
        worker = backend.worker([note], queues=weights, concurrency=concurrency)
        async with running(backend, worker):
            while len(ran) < 600:
                await asyncio.sleep(0.01)
    first = Counter(tag for _, tag in ran[:500])
    for name, weight in weights.items():
        expected = 500 * weight / 10
        assert abs(first[name] - expected) <= expected * 0.10, (first, name)


@pytest.mark.asyncio
async def test_weighted_queues_do_not_wait_for_an_empty_one(backend: Backend) -> None:
    async with backend.pool(queue="b") as pool:
        await pool.enqueue_many([asyncjobs.call(note, "b") for _ in range(50)])
        await backend.run(backend.worker([note], queues={"a": 9, "b": 1}, concurrency=3,
                                         burst=True))
    assert Counter(tag for _, tag in ran) == {"b": 50}


@pytest.mark.asyncio
async def test_an_idle_worker_wakes_at_once_for_any_queue_and_level(backend: Backend) -> None:
    # Reads block for a minute and reclaim scans are an hour apart: only a wake-up on the
    # new entry can start these jobs within the test's bound.
    worker = backend.worker([note], queues=["critical", "default", "bulk"],
                            claim_timeout=3600).configure(block_ms=60_000)
    async with backend.pool(queue="bulk") as pool, running(backend, worker):
        for queue, priority in [("bulk", "low"), ("critical", "high"), ("default", "normal"),
                                ("bulk", "high")]:
            await asyncio.sleep(0.3)  # the worker is blocked in its wait again
            began = time.monotonic()
            job = await pool.enqueue(note.options(queue=queue, priority=priority), queue)
            assert await job.result(timeout=20) == queue
            assert time.monotonic() - began < 20
    assert [q for q, _ in ran] == ["bulk@low", "critical@high", "default", "bulk@high"]


@pytest.mark.asyncio
async def test_a_dead_workers_job_on_a_level_is_reclaimed(real: Backend) -> None:
    async with real.pool(queue="q") as pool:
        job = await pool.enqueue(note.options(priority="high"), "again")
        keys = pool.keys("q@high")
        await pool.client.xgroup_create(keys.stream, "asyncjobs", id="0", mkstream=True)
        got = await pool.client.xreadgroup("asyncjobs", "dead-worker", {keys.stream: ">"})
        assert got  # held by a consumer that will never come back
        worker = real.worker([note], queues=["q"], claim_timeout=1)
        async with running(real, worker):
            assert await job.result(timeout=20) == "again"
    assert ran == [("q@high", "again")]


@pytest.mark.asyncio
async def test_one_reclaim_call_scans_every_level_in_order_and_skips_a_refused_one(
        backend: Backend) -> None:
    """reclaim.lua on a queue's three levels: highest first while the count lasts (a level
    left unscanned keeps its cursor), and a level whose stream key holds a string is
    reported while the others are claimed as usual."""
    from asyncjobs._redis.store import reclaim_levels

    async with backend.pool(queue="q") as pool:
        stores = [pool.store(q) for q in ("q@high", "q", "q@low")]
        held: dict[str, list[str]] = {}
        for store, n in zip(stores, (2, 2, 1), strict=True):
            jobs = await pool.enqueue_many(
                [asyncjobs.call(note.options(queue=store.keys.queue), str(i))
                 for i in range(n)])
            await pool.client.xgroup_create(store.keys.stream, "asyncjobs", id="0",
                                            mkstream=True)
            await pool.client.xreadgroup("asyncjobs", "dead-worker",
                                         {store.keys.stream: ">"})
            held[store.keys.queue] = [j.id for j in jobs]
        got = await reclaim_levels(stores, "me", 0, 3, ["0-0", "0-0", "0-0"])
        assert [(level, d.job_id) for level, d in got.rows] == [
            (0, held["q@high"][0]), (0, held["q@high"][1]), (1, held["q"][0])]
        assert got.errors == []
        assert got.cursors[1] != "0-0"  # stopped inside the level: more to scan
        assert got.cursors[2] == "0-0"  # not scanned: the count was used up
        # The scan goes on from the cursors (the highest level, scanned whole, is left out:
        # with a minimum idle time of 0 it would claim its entries again).
        rest = await reclaim_levels(stores[1:], "me", 0, 10, got.cursors[1:])
        assert [(level, d.job_id) for level, d in rest.rows] == [
            (0, held["q"][1]), (1, held["q@low"][0])]
        # The middle level's stream turns into a string: the others are still scanned.
        await pool.client.delete(stores[1].keys.stream)
        await pool.client.set(stores[1].keys.stream, "garbage")
        for store in (stores[0], stores[2]):
            for entry in await pool.client.xrange(store.keys.stream):
                await pool.client.xclaim(store.keys.stream, "asyncjobs", "dead-worker", 0,
                                         [entry[0]])
        again = await reclaim_levels(stores, "me", 0, 10, ["0-0", "7-0", "0-0"])
        assert sorted(d.job_id for _, d in again.rows) == sorted([*held["q@high"],
                                                                  *held["q@low"]])
        assert [level for level, _ in again.errors] == [1]
        assert "WRONGTYPE" in again.errors[0][1]
        assert again.cursors[1] == "7-0"  # refused: its cursor as given
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await stores[1].reclaim("me", 0, 10)


@pytest.mark.asyncio
async def test_bad_priorities_at_enqueue_write_nothing(backend: Backend) -> None:
    async with backend.pool(queue="q") as pool:
        with pytest.raises(ConfigurationError):
            await pool.enqueue(note.options(queue="q@high", priority="low"), "x")
        with pytest.raises(ConfigurationError):
            await pool.enqueue(asyncjobs.task_ref("note", queue="q@low", priority="high"), "x")
        assert await pool.admin.queues() == []
        assert await pool.client.keys(f"{backend.prefix}:*") == []


@pytest.mark.asyncio
async def test_cron_jobs_go_to_their_tasks_level(backend: Backend) -> None:
    job = asyncjobs.cron(urgent_once_retried, every=3600, name="urgent")
    worker = backend.worker([urgent_once_retried], queues=["q"], cron=[job])
    assert worker._cron_queue(job) == "q@high"
    with pytest.raises(ConfigurationError, match="does not serve"):
        backend.worker([urgent_once_retried], queues=["q", "other@high"], cron=[
            asyncjobs.cron(urgent_once_retried, every=3600, name="u", queue="elsewhere")])
    with pytest.raises(ConfigurationError, match="contradicts"):
        backend.worker([urgent_once_retried], queues=["q@low"], cron=[job])


def test_the_cli_reads_weights_and_refuses_a_bad_table_in_one_line(
        real: Backend, tmp_path: Any) -> None:
    done = run_cli("worker", "tests.apps.basic:worker", "--redis-url", real.url or "",
                   "--prefix", real.prefix, "-q", "a=6", "-q", "b", "--burst")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "give every queue a weight or none" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    ok = run_cli("worker", "tests.apps.basic:worker", "--redis-url", real.url or "",
                 "--prefix", real.prefix, "-q", "a=6", "-q", "b=1", "--burst")
    assert ok.returncode == 0, ok.stderr
    assert "queues  a=6, b=1" in ok.stderr + ok.stdout


@pytest.mark.asyncio
async def test_a_corrupt_level_is_left_alone_and_the_rest_goes_on(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    async with backend.pool(queue="a") as pool:
        broken = pool.keys("a@low").stream
        await pool.client.set(broken, "a string where a stream belongs")
        jobs = [await pool.enqueue(note.options(queue=q, priority=p), f"{q}-{p}")
                for q, p in [("a", "high"), ("a", "normal"), ("b", "low"), ("b", "normal")]]
        worker = backend.worker([note], queues=["a", "b"])
        async with running(backend, worker):
            for job in jobs:
                await job.result(timeout=20)
            errors = [r for r in caplog.records if "a@low cannot be read" in r.getMessage()]
            assert errors and all(r.exc_info is None for r in errors)  # one line, no trace
            # repaired (the key deleted): the level is read again once its pause is over,
            # its consumer group made by the worker
            await pool.client.delete(broken)
            late = await pool.enqueue(note.options(queue="a", priority="low"), "late")
            assert await late.result(timeout=20) == "late"
    assert sorted(tag for _, tag in ran) == sorted(
        ["a-high", "a-normal", "b-low", "b-normal", "late"])
    assert not [r for r in caplog.records if r.exc_info is not None]


def test_a_rate_limit_is_one_for_every_level_of_its_queue() -> None:
    assert Keys("p", "q@high").rate("t", "k") == Keys("p", "q").rate("t", "k") \
        == Keys("p", "q@low").rate("t", "k") == "p:{q}:rate:1:t:k"


started_at: list[float] = []


@asyncjobs.task(rate_limit="10/s")
async def paced(ctx: Context, tag: str) -> None:
    started_at.append(time.time())
    ran.append((ctx.queue, tag))


@pytest.mark.asyncio
async def test_jobs_of_every_level_share_their_tasks_rate_limit(real: Backend) -> None:
    started_at.clear()
    async with real.pool(queue="q") as pool:
        for i in range(15):
            await pool.enqueue(paced.options(priority="high"), f"h{i}")
            await pool.enqueue(paced.options(priority="low"), f"l{i}")
        await real.run(real.worker([paced], queues=["q"], burst=True))
    assert sorted(tag for _, tag in ran) == sorted([f"h{i}" for i in range(15)]
                                                   + [f"l{i}" for i in range(15)])
    times = sorted(started_at)
    # 10/s across both levels: no second holds more than 10 starts (+1 for the edges)
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u - t < 1.0) <= 11, times


# -- what an adversarial review of the routing found (each failed before its fix) ----------


@pytest.mark.parametrize("bad", [[1], [None], [b"q"], [""], [" a"], ["x" * 196]])
def test_queue_names_that_cannot_be_served_are_a_configuration_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        asyncjobs.Worker([], queues=bad)
    with pytest.raises(ConfigurationError):
        level_queue(bad[0], "high")


ticked: list[str] = []


@asyncjobs.task
async def tick(ctx: Context) -> None:
    ticked.append(ctx.queue)


@pytest.mark.asyncio
async def test_a_corrupt_level_stops_neither_cron_nor_the_other_levels_delayed_jobs(
        real: Backend) -> None:
    ticked.clear()
    async with real.pool(queue="q") as pool:
        await pool.client.set(pool.keys("q@high").delayed, "a string where a set belongs")
        later = await pool.enqueue(note.options(delay=1), "later")
        worker = real.worker([note, tick], queues=["q"],
                             cron=[asyncjobs.cron(tick, every=1, name="tick")])
        async with running(real, worker):
            assert await later.result(timeout=20) == "later"
            while not ticked:
                await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_after_redis_lost_its_data_a_new_job_starts_at_once(real: Backend) -> None:
    worker = real.worker([note], queues=["q"], claim_timeout=3600)
    async with real.pool(queue="q") as pool, running(real, worker):
        first = await pool.enqueue(note, "first")
        assert await first.result(timeout=20) == "first"
        await asyncio.sleep(0.3)  # idle, waiting on the streams
        await pool.client.flushdb()
        began = time.monotonic()
        job = await pool.enqueue(note.options(priority="low"), "after-loss")
        assert await job.result(timeout=45) == "after-loss"
        # the reclaim scans are 15 minutes apart: only the wait from id 0 starts it soon
        assert time.monotonic() - began < 30


@pytest.mark.asyncio
async def test_jobs_taken_before_a_failing_call_still_run_at_once(
        real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncjobs._worker import fetcher

    real_take = fetcher.take_levels
    failed: list[str] = []

    async def flaky_take(stores: Any, consumer: str, count: int) -> Any:
        if stores[0].keys.queue.startswith("b") and not failed:
            failed.append("b")
            raise ConnectionError("injected: the connection dropped")
        return await real_take(stores, consumer, count)

    monkeypatch.setattr(fetcher, "take_levels", flaky_take)
    async with real.pool(queue="a") as pool:
        job = await pool.enqueue(note, "on-a")
        await pool.enqueue(note.options(queue="b"), "on-b")
        worker = real.worker([note], queues=["a", "b"], claim_timeout=3600)
        async with running(real, worker):
            assert await job.result(timeout=20) == "on-a"
            info = await job.info()
    assert failed == ["b"] and info.attempts == 1


@pytest.mark.asyncio
async def test_a_level_turning_corrupt_while_idle_does_not_spin(real: Backend) -> None:
    worker = real.worker([note], queues=["q"], claim_timeout=3600)
    async with real.pool(queue="q") as pool, running(real, worker):
        await asyncio.sleep(0.5)
        await pool.client.set(pool.keys("q@low").stream, "garbage")
        await asyncio.sleep(0.2)
        before = (await pool.client.info("commandstats")).get("cmdstat_xread", {})
        await asyncio.sleep(2)
        after = (await pool.client.info("commandstats")).get("cmdstat_xread", {})
        xreads = after.get("calls", 0) - before.get("calls", 0)
        assert xreads < 20, f"{xreads} XREADs in 2 s"
        job = await pool.enqueue(note.options(priority="high"), "still-served")
        assert await job.result(timeout=20) == "still-served"


@pytest.mark.asyncio
async def test_burst_mode_ends_and_shutdown_hands_back_with_a_corrupt_level(
        real: Backend) -> None:
    async with real.pool(queue="q") as pool:
        await pool.client.set(pool.keys("q@low").stream, "garbage")
        job = await pool.enqueue(note, "one")
        # it ends, the other levels drained, saying which level it could not drain
        with pytest.raises(asyncjobs.NotDrained, match=r"\{q\}@low:stream"):
            await asyncio.wait_for(real.run(real.worker([note], queues=["q"], burst=True)),
                                   30)
        assert await job.result(timeout=5) == "one"


running_now: list[int] = [0]
most_at_once: list[int] = [0]


@asyncjobs.task(concurrency_limit=1)
async def one_at_a_time(ctx: Context, tag: str) -> None:
    running_now[0] += 1
    most_at_once[0] = max(most_at_once[0], running_now[0])
    ran.append((ctx.queue, tag))
    await asyncio.sleep(0.05)
    running_now[0] -= 1


@pytest.mark.asyncio
async def test_jobs_of_every_level_share_their_tasks_concurrency_limit(
        backend: Backend) -> None:
    running_now[0], most_at_once[0] = 0, 0
    async with backend.pool(queue="q") as pool:
        jobs = []
        for i in range(4):
            jobs.append(await pool.enqueue(one_at_a_time.options(priority="low"), f"l{i}"))
            jobs.append(await pool.enqueue(one_at_a_time.options(priority="high"), f"h{i}"))
        # claim timeout 60 s: a waiter let go only by its safety net would take that long
        worker = backend.worker([one_at_a_time], queues=["q"], concurrency=10,
                                claim_timeout=60)
        began = time.monotonic()
        async with running(backend, worker):
            for job in jobs:
                await job.result(timeout=30)
        took = time.monotonic() - began
    assert most_at_once[0] == 1
    assert sorted(tag for _, tag in ran) == sorted(f"{p}{i}" for p in "lh" for i in range(4))
    assert took < 30  # each release let the next waiter go, whatever its level


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=2, max_size=6),
       st.lists(st.integers(1, 64), min_size=50, max_size=300))
def test_ranked_batches_give_every_busy_queue_its_weights_share(
        weights: list[int], batches: list[int]) -> None:
    """Every queue has work; each batch goes to the queues in ``rank`` order, the first
    taking all of it (as a worker does): jobs per queue stay within one batch of exact."""
    order = WeightedOrder(tuple(weights))
    got = [0] * len(weights)
    for n in batches:
        first = order.rank(n)[0]
        order.charge(first, n)
        got[first] += n
    total, whole = sum(batches), sum(weights)
    for g, w in zip(got, weights, strict=True):
        assert abs(g - total * w / whole) <= max(batches) * len(weights), (got, weights)


def test_a_queue_without_work_banks_no_credit() -> None:
    order = WeightedOrder((1, 1))
    for _ in range(1000):  # queue 0 has no work for a long time
        ranked = order.rank(10)
        order.charge(0, 0, dry=True)
        order.charge(1, 10)
        assert ranked in ([0, 1], [1, 0])
    # work comes back to queue 0: it does not take a thousand batches in a row
    firsts = []
    for _ in range(10):
        first = order.rank(10)[0]
        order.charge(first, 10)
        firsts.append(first)
    assert firsts.count(1) >= 4, firsts
