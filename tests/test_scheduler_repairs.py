"""The scheduler under operator faults, piece by piece (the end-to-end cases are in
``test_operator_faults.py``): its lease given up while Redis refuses commands for now, a
stray lease key removed, the jobs a delayed set lost put back."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import time
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

import asyncjobs
from asyncjobs._redis.keys import Keys, glob_escape, job_pattern
from asyncjobs._redis.store import QueueStore
from asyncjobs._redis.values import Orphan
from asyncjobs._scheduling import repair
from asyncjobs._scheduling.leader import Lease
from asyncjobs._scheduling.repair import Repair, lost
from asyncjobs._scheduling.scheduler import Scheduler

from .conftest import Backend, running
from .passes import count_passes, frequent_passes


def scheduler(client: Any = None) -> Scheduler:
    """A scheduler of queue ``default`` on ``client`` (never used by the tests that pass
    none), leading."""
    store = QueueStore(client, Keys("t", "default"))
    rt: Any = SimpleNamespace(stores={"default": store}, client=client, consumer="me",
                              config=SimpleNamespace(lease_ttl_s=5.0, burst=False))
    found = Scheduler(rt, "default", ["default"], [], asyncio.Event())
    found.lease._granted(time.monotonic())
    assert found.lease.held
    return found


@pytest.mark.parametrize("error", [
    ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or "
                  "SHUTDOWN NOSAVE."),
    ReadOnlyError("You can't write against a read only replica."),
    ResponseError("LOADING Redis is loading the dataset in memory"),
    RedisConnectionError("Connection reset by peer"),
], ids=["BUSY", "READONLY", "LOADING", "outage"])
@pytest.mark.asyncio
async def test_release_at_shutdown_survives_redis_refusing_commands_for_now(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """SIGTERM while another client's script keeps Redis busy: the BUSY reply to the lease's
    release escaped Scheduler.release (it caught outages only) and crashed the worker's
    shutdown. The lease is dropped (it expires on its own) and the shutdown goes on."""
    async def refused(self: Lease) -> None:
        raise error

    monkeypatch.setattr(Lease, "release", refused)
    found = scheduler()
    await found.release()
    assert not found.lease.held


@pytest.mark.asyncio
async def test_release_at_shutdown_still_raises_what_is_not_for_now(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything else (a bug, a refusal no retry helps) is not hidden."""
    async def refused(self: Lease) -> None:
        raise ResponseError("NOPERM this user has no permissions to run the 'evalsha' command")

    monkeypatch.setattr(Lease, "release", refused)
    found = scheduler()
    with pytest.raises(ResponseError, match="NOPERM"):
        await found.release()
    assert not found.lease.held


@pytest.mark.parametrize("ttl_s", [0, -1, 3600.001, 7200])
def test_no_lease_is_longer_than_an_hour(ttl_s: float) -> None:
    """lease_clear.lua removes a lease expiring more than an hour ahead: no holder may set
    one."""
    with pytest.raises(ValueError, match="lease TTL"):
        Lease(None, "k", ttl_s)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_stray_lease_is_removed_by_whoever_fails_to_take_it_and_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A value no holder writes, with an expiry: the process that fails to take the lease
    removes it (one line in the log) and takes it next; a holder's lease is left alone,
    whoever holds it, and its time left is returned."""
    client = backend.factory(max_connections=2, socket_timeout=None)
    key = f"{backend.prefix}:lease"
    try:
        mine, theirs = Lease(client, key, 5.0, "me"), Lease(client, key, 5.0, "them")
        assert await theirs.acquire()
        assert not await mine.acquire()
        assert 4.0 < await mine.remaining_s() <= 5.0
        assert await client.get(key) == theirs.token.encode()
        await client.set(key, "stray-script-value", ex=3600)
        assert not await mine.acquire()
        with caplog.at_level(logging.WARNING, "asyncjobs.scheduler"):
            assert await mine.remaining_s() == 0.0
        assert [r.getMessage() for r in caplog.records] == [
            f"removed the lease {key}, which no holder wrote: not a holder's value"]
        assert await mine.acquire()
        assert not await theirs.renew(), "the old holder finds it lost"
        assert await mine.renew()
    finally:
        await client.delete(key)
        await client.aclose()


# -- the delayed sets' repair: its decisions (repair.py) ---------------------------------------


@pytest.mark.parametrize(("watched", "head", "now", "handled", "want"), [
    (100, 100, 50, 0, False),   # still at the head
    (100, 80, 50, 0, False),    # an earlier job came in ahead of it: maybe still there
    (100, None, 50, 0, True),   # the set emptied before it was due
    (100, 150, 50, 0, True),    # the head moved past it before it was due
    (100, None, 100, 1, False),  # due, and promoted (with the rest)
    (100, 150, 120, 3, False),
    (100, None, 100, 0, True),  # due, but the promotion found nothing
    (100, 150, 120, 0, True),
])
def test_a_lost_member_is_one_that_left_its_set_unpromoted(
    watched: int, head: int | None, now: int, handled: int, want: bool
) -> None:
    assert lost(watched, head, now, handled) is want


def test_the_watched_member_is_kept_until_due_even_behind_an_earlier_head() -> None:
    """The operator-fault scenario: jobs due at 1500 watched; their set deleted; a job due
    at 500 enqueued (the head now) and promoted at 500: the set is empty before 1500."""
    r = Repair()
    r.lead(0.0)
    assert not r.promoted("q", 1500, 0, 0)
    assert not r.promoted("q", 500, 100, 0)   # woken by the new job: 1500 still watched
    assert r.promoted("q", None, 500, 1)      # the new one promoted; 1500 gone before due
    assert r.hinted and r.next_at() == -math.inf
    r2 = Repair()
    r2.lead(0.0)
    for head, now in [(1500, 0), (500, 100), (1500, 500)]:  # nothing lost: no hint
        assert not r2.promoted("q", head, now, 1)
    assert not r2.promoted("q", None, 1500, 4)
    assert not r2.hinted and r2.next_at() == repair.EVERY_S


def test_passes_are_periodic_and_hinted_ones_spaced_by_their_cost() -> None:
    r = Repair()
    assert r.next_at() == math.inf, "not leading yet: no pass"
    r.lead(10.0)
    r.lead(20.0)  # leading again does not push the first pass back
    assert r.next_at() == 10.0 + repair.EVERY_S
    assert r.promoted("q", 100, 0, 0) is False and r.promoted("q", None, 50, 0) is True
    assert r.next_at() == -math.inf, "the first hinted pass waits for nothing"
    assert r.begin(30.0) == "0" and not r.hinted
    assert r.next_at() == -math.inf, "a pass under way goes on"
    assert not r.stepped("17", 2, 30.5)
    assert r.begin(30.5) == "17", "a step goes on from the cursor"
    assert r.stepped("0", 1, 32.0) and r.restored == 3 and r.cursor is None
    # 2 s long: the next periodic pass 300 s (at least 100 times as long) after its end
    assert r.next_at() == 32.0 + max(repair.EVERY_S, 200.0)
    r.promoted("q", 300, 60, 0)
    assert r.promoted("q", None, 70, 0)
    assert r.next_at() == 32.0 + max(repair.HINT_GAP_S, 200.0), "hinted: spaced by its cost"


def test_an_orphan_is_confirmed_only_when_two_passes_in_a_row_found_it_unchanged() -> None:
    a, b = Orphan(0, "a", "w1", "1", "1-0"), Orphan(0, "b", "w2", "1", "2-0")
    started_again = Orphan(0, "b", "w2", "2", "2-0")
    r = Repair()
    r.begin(0.0)
    r.orphaned([a])
    r.orphaned([b])  # a pass takes several steps
    assert r.stepped("0", 0, 1.0) and r.confirmed == frozenset()
    r.begin(400.0)
    r.orphaned([a, started_again])
    assert not r.stepped("7", 0, 400.5) and r.confirmed == frozenset()  # not over yet
    assert r.stepped("0", 0, 401.0) and r.confirmed == {a}
    r.begin(800.0)
    assert r.stepped("0", 0, 801.0) and r.confirmed == frozenset()  # gone since


@pytest.mark.parametrize("levels", [["q"], ["q@high", "q", "q@low"]])
def test_the_scan_pattern_matches_every_job_key_of_the_levels_and_names_are_escaped(
    levels: list[str]
) -> None:
    odd = "a*b?c[d]e\\f"
    keys = [Keys(odd, level) for level in levels]
    pattern = job_pattern(keys)
    for k in keys:
        assert fnmatch.fnmatchcase(k.job("some:id"), _as_fnmatch(pattern))
    assert not fnmatch.fnmatchcase(Keys("aXb?c[d]e\\f", "q").job("x"), _as_fnmatch(pattern))
    assert not fnmatch.fnmatchcase(Keys(odd, "qq").job("x"), _as_fnmatch(pattern))
    assert glob_escape(odd) == "a\\*b\\?c\\[d\\]e\\\\f"


def _as_fnmatch(pattern: str) -> str:
    """A Redis glob pattern (backslash escapes) in fnmatch's terms (brackets)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\":
            out.append(f"[{pattern[i + 1]}]" if pattern[i + 1] not in "[]" else
                       ("[[]" if pattern[i + 1] == "[" else "[]]"))
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


# -- the delayed sets' repair, end to end --------------------------------------------------------


@asyncjobs.task(name="repair_echo")
async def echo(ctx: asyncjobs.Context, n: int) -> int:
    return n


@pytest.mark.on_cluster
@pytest.mark.asyncio
async def test_a_new_leader_puts_back_the_jobs_a_deleted_delayed_set_held(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The delayed set deleted while no worker ran (no leader saw its jobs go, so no hint):
    the periodic pass finds the records still scheduled and puts them back, at their due
    times, each once; a job queued or complete meanwhile is left alone."""
    frequent_passes(monkeypatch)
    async with backend.pool() as pool:
        delayed = [await pool.enqueue(echo.options(delay=0.3), n) for n in range(3)]
        high = await pool.enqueue(echo.options(delay=0.3, priority="high"), 9)
        queued = await pool.enqueue(echo, 5)
        k = pool.keys("default")
        assert await pool.client.delete(k.delayed, pool.keys("default@high").delayed) == 2
        with caplog.at_level(logging.WARNING, "asyncjobs.scheduler"):
            async with running(backend, backend.worker([echo], lease_ttl=1)):
                for n, job in enumerate(delayed):
                    assert await job.result(timeout=10) == n
                assert await high.result(timeout=10) == 9
                assert await queued.result(timeout=10) == 5
                # The line comes at the end of the pass, which on a real server shared with
                # other tests' keys takes more SCAN steps than running the jobs takes.
                deadline = asyncio.get_running_loop().time() + 20
                while not any("put back" in r.getMessage() for r in caplog.records):
                    assert asyncio.get_running_loop().time() < deadline, "no pass ended"
                    await asyncio.sleep(0.05)
        put_back = [r.getMessage() for r in caplog.records if "put back" in r.getMessage()]
        assert put_back == ["put back 4 scheduled job(s) missing from the delayed sets of "
                            "queue default"]
        for job in [*delayed, high, queued]:
            assert (await job.info()).attempts == 1


async def _group_at(client: Any, stream: str, at: str) -> None:
    """The queue's consumer group at ``at``, made if the pool has not made it yet."""
    if any(g["name"] == b"asyncjobs" for g in await client.xinfo_groups(stream)):
        await client.xgroup_setid(stream, "asyncjobs", at)
    else:
        await client.xgroup_create(stream, "asyncjobs", id=at)


async def _lose_entries(pool: asyncjobs.Pool, how: str) -> None:
    """Make the queued jobs of queue ``default`` unreachable as an operator might: their
    stream deleted or trimmed, their entries delivered and acknowledged by a consumer that
    ran nothing, the group moved past them, or their records' entry ids overwritten."""
    client, stream = pool.client, pool.keys("default").stream
    if how == "DEL":
        assert await client.delete(stream) == 1
    elif how == "XTRIM MAXLEN 0":
        assert await client.xtrim(stream, maxlen=0, approximate=False) > 0
    elif how == "XACK":
        await _group_at(client, stream, "0")
        taken = await client.xreadgroup("asyncjobs", "ghost", {stream: ">"})
        entries = [entry for _, got in taken for entry, _ in got]
        assert entries and await client.xack(stream, "asyncjobs", *entries) == len(entries)
    elif how == "XGROUP SETID $":
        await _group_at(client, stream, "$")
    else:  # "HSET e": each record names an entry that is not in the stream
        for key in [k async for k in client.scan_iter(pool.keys("default").job("*"))]:
            if await client.hget(key, "s") == b"queued":
                await client.hset(key, "e", "1-1" if hash(key) % 2 else "not an entry id")


@pytest.mark.on_cluster
@pytest.mark.parametrize("how", ["DEL", "XTRIM MAXLEN 0", "XACK", "XGROUP SETID $", "HSET e"])
@pytest.mark.asyncio
async def test_the_periodic_pass_puts_back_queued_jobs_no_stream_would_hand_out(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    how: str
) -> None:
    """Queued jobs whose entries no worker will be handed (see ``_lose_entries``), done while
    no worker ran: the periodic pass finds their records still queued and adds them to the
    stream again, each once, keeping their enqueue time; they run once, and the jobs
    enqueued afterwards (reachable) are not added twice."""
    frequent_passes(monkeypatch)
    async with backend.pool() as pool:
        lost_jobs = [await pool.enqueue(echo, n) for n in range(4)]
        enqueued = [(await job.info()).enqueued_at for job in lost_jobs]
        await _lose_entries(pool, how)
        later = [await pool.enqueue(echo, 10 + n) for n in range(2)]
        with caplog.at_level(logging.WARNING, "asyncjobs.scheduler"):
            async with running(backend, backend.worker([echo], lease_ttl=1)):
                for n, job in enumerate(lost_jobs):
                    assert await job.result(timeout=20) == n
                for n, job in enumerate(later):
                    assert await job.result(timeout=10) == 10 + n
                deadline = asyncio.get_running_loop().time() + 20
                while not any("put back" in r.getMessage() for r in caplog.records):
                    assert asyncio.get_running_loop().time() < deadline, "no pass ended"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.5)  # passes after the first: nothing more to put back
        put_back = [r.getMessage() for r in caplog.records if "put back" in r.getMessage()]
        assert put_back == ["put back 4 queued job(s) that the streams of queue default would "
                            "not hand to a worker (their entries deleted, trimmed or "
                            "acknowledged)"]
        for job, at in zip(lost_jobs, enqueued, strict=True):
            info = await job.info()
            assert info.attempts == 1
            # kept, but where the record's entry id, which was it, was overwritten by hand
            assert info.enqueued_at == at or how == "HSET e"
        for job in later:
            assert (await job.info()).attempts == 1


async def _run_on(pool: asyncjobs.Pool, job: asyncjobs.Job[Any], worker: str) -> bytes:
    """Make ``job`` look taken and started by ``worker``: its entry pending for that
    consumer, its record running there (attempt 1); the entry id."""
    client, stream = pool.client, pool.keys("default").stream
    if not await client.xinfo_groups(stream):
        await client.xgroup_create(stream, "asyncjobs", id="0")
    taken = await client.xreadgroup("asyncjobs", worker, {stream: ">"}, count=1)
    entry: bytes = taken[0][1][0][0]
    assert await client.hget(pool.keys("default").job(job.id), "e") == entry
    await client.hset(pool.keys("default").job(job.id),
                      mapping={"s": "running", "w": worker, "a": 1, "st": 1})
    return entry


@pytest.mark.on_cluster
@pytest.mark.parametrize("how", ["XGROUP DELCONSUMER", "XACK", "DEL"])
@pytest.mark.asyncio
async def test_a_running_job_of_a_gone_worker_whose_entry_was_dropped_runs_again(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    how: str
) -> None:
    """A worker died mid-job and its pending entry was then dropped by hand (its consumer
    deleted, the entry acknowledged, the stream deleted): no reclaim would ever take the job
    over, and it stayed running for ever. Two passes that find it so, its record untouched
    for the claim timeout, put it back: it runs again (its second attempt). A job in the
    same state whose record a live worker keeps stamping (touch.lua's `kt`) is left alone:
    that worker runs and settles it."""
    frequent_passes(monkeypatch)
    async with backend.pool() as pool:
        client, stream = pool.client, pool.keys("default").stream
        dead = await pool.enqueue(echo, 1)
        dead_entry = await _run_on(pool, dead, "gone-worker")
        live = await pool.enqueue(echo, 2)
        live_entry = await _run_on(pool, live, "live-worker")
        if how == "XGROUP DELCONSUMER":
            for worker in ("gone-worker", "live-worker"):
                await client.xgroup_delconsumer(stream, "asyncjobs", worker)
        elif how == "XACK":
            assert await client.xack(stream, "asyncjobs", dead_entry, live_entry) == 2
        else:
            assert await client.delete(stream) == 1

        async def keep() -> None:  # what the live worker's keep-alive does
            while True:
                sec, usec = await client.time()
                await client.hset(pool.keys("default").job(live.id), "kt",
                                  sec * 1000 + usec // 1000)
                await asyncio.sleep(0.2)

        passes = count_passes(monkeypatch)
        keeper = asyncio.create_task(keep())
        try:
            with caplog.at_level(logging.WARNING, "asyncjobs.scheduler"):
                async with running(backend, backend.worker([echo], lease_ttl=1,
                                                           claim_timeout=2)):
                    assert await dead.result(timeout=20) == 1
                    # two passes more, each finding the kept job as it was: left alone
                    seen, deadline = len(passes), time.monotonic() + 30
                    while len(passes) < seen + 2:
                        assert time.monotonic() < deadline, "no more passes"
                        await asyncio.sleep(0.05)
        finally:
            keeper.cancel()
        put_back = [r.getMessage() for r in caplog.records
                    if "running job(s)" in r.getMessage()]
        assert put_back == ["put back 1 running job(s) of queue default that no worker keeps "
                            "and whose stream entry no other worker would take over "
                            "(dropped by hand); each runs again"]
        assert (await dead.info()).attempts == 2
        found = await client.hmget(pool.keys("default").job(live.id), ["s", "w", "a", "e"])
        assert found == [b"running", b"live-worker", b"1", live_entry]
