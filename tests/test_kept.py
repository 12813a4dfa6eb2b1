"""Kept results in shared hashes (``asyncjobs/_redis/kept.py``): a complete job's plain
record moves from its own key into its tag's hash, every reader finds it there, and what is
not plain, not shaped, kept briefly, or would outlive its TTL by more than the slack keeps its
own key. Then the attacks: garbage in the shared hash, a hash of the wrong type, one without
a TTL or with the wrong one, ids of every shape (the Lua rule and the Python rule agree).

Regression: a complete no-op job cost 370 bytes of Redis for its whole result TTL, 186 of them
the overhead of its own key."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

import asyncjobs
from asyncjobs import Context, CorruptJob, JobState
from asyncjobs._codec import encode_spec
from asyncjobs._durations import MAX_DURATION_S
from asyncjobs._model import JobSpec
from asyncjobs._redis import kept
from asyncjobs._redis.keys import Keys
from asyncjobs._redis.scripts import _prelude
from asyncjobs._redis.values import NewJob

from .conftest import Backend

HOUR = 3600


@asyncjobs.task
async def noop(ctx: Context) -> None:
    """Returns None: the plainest record."""


@asyncjobs.task
async def double(ctx: Context, x: int) -> int:
    return 2 * x


@asyncjobs.task(backoff=0.01)
async def flaky(ctx: Context) -> str:
    if ctx.attempt == 1:
        raise ValueError("first try fails")
    return "second"


@asyncjobs.task
async def reports(ctx: Context) -> None:
    await ctx.progress(0.5, "half")


# -- ids and the packed format, no Redis ---------------------------------------------------

def test_new_ids_are_22_base64url_characters_sharing_tags_64_at_a_time() -> None:
    ids = kept.new_job_ids(1000)
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) and not i.startswith("-") for i in ids)
    tags: dict[str, int] = {}
    for i in ids:
        tag = kept.tag_of(i)
        assert tag == i[:kept.TAG_LENGTH]
        tags[tag] = tags.get(tag, 0) + 1
    assert max(tags.values()) <= kept.PER_TAG
    assert len(tags) >= 1000 // kept.PER_TAG
    # The random part differs even within a tag.
    assert len({i[kept.TAG_LENGTH:] for i in ids}) == 1000


def test_a_tag_is_handed_out_for_at_most_its_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [kept.time.monotonic() + 1000.0]
    monkeypatch.setattr(kept.time, "monotonic", lambda: clock[0])
    first = kept.new_job_ids(1)[0]
    assert kept.new_job_ids(1)[0][:10] == first[:10]
    clock[0] += kept.TAG_SECONDS
    assert kept.new_job_ids(1)[0][:10] != first[:10]


def test_a_forked_process_takes_tags_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = kept.new_job_ids(1)[0]
    monkeypatch.setattr(kept.os, "getpid", lambda: -7)
    child = kept.new_job_ids(1)[0]
    assert child[:6] != parent[:6]


def test_the_counter_wraps_to_a_new_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    kept.new_job_ids(1)
    monkeypatch.setattr(kept._TAGS, "counter", (1 << 24) - 1)
    monkeypatch.setattr(kept._TAGS, "left", 0)
    before = kept._TAGS.prefix
    tag = kept.new_job_ids(1)[0][:10]
    assert kept._TAGS.counter == 0 and tag == kept._TAGS.prefix + "AAAA"
    assert kept._TAGS.prefix != before


def test_an_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kept.os.urandom
    monkeypatch.setattr(kept._TAGS, "pid", -1)  # a new prefix on the next call
    monkeypatch.setattr(kept._TAGS, "prefix", kept._TAGS.prefix)  # restored afterwards
    monkeypatch.setattr(kept.os, "urandom", lambda n: b"\xf8" * n if n == 6 else real(n))
    ids = kept.new_job_ids(3)
    assert all(i.startswith("xPj4-P") for i in ids)  # only the leading '-' is replaced


@pytest.mark.parametrize(("job_id", "tag"), [
    ("A" * 22, "A" * 10), ("abc-_DEF0123456789xyzZ", "abc-_DEF01"), ("a" * 21, None),
    ("a" * 23, None), ("a" * 21 + "*", None), ("a" * 21 + "é", None), ("a:" + "b" * 20, None),
    ("", None), ("order-42", None),
])
def test_which_ids_have_a_tag(job_id: str, tag: str | None) -> None:
    assert kept.tag_of(job_id) == tag
    keys = Keys("p", "q")
    assert keys.kept(job_id) == (None if tag is None else f"p:{{q}}:kept:{tag}")


_FIELDS = st.fixed_dictionaries({
    b"a": st.integers(0, 10**6), b"q": st.integers(0, 2**48), b"dst": st.integers(-10**9, 10**9),
    b"et": st.integers(0, 2**48), b"j": st.binary(max_size=300),
    b"w": st.binary(max_size=300), b"r": st.binary(max_size=300)})


@settings(deadline=None, database=None)
@given(_FIELDS)
def test_packed_records_round_trip(f: dict[bytes, Any]) -> None:
    st_ms = f[b"q"] + f[b"dst"]
    fields = {b"a": b"%d" % f[b"a"], b"q": b"%d" % f[b"q"], b"st": b"%d" % st_ms,
              b"et": b"%d" % f[b"et"], b"j": f[b"j"], b"w": f[b"w"], b"r": f[b"r"]}
    assert kept.decode(kept.encode(fields)) == {**fields, b"s": b"complete"}


@settings(deadline=None, database=None)
@given(st.binary(max_size=200))
def test_garbage_never_decodes_to_anything_but_a_value_error(data: bytes) -> None:
    try:
        fields = kept.decode(data)
    except ValueError:
        return
    assert fields[b"s"] == b"complete" and set(fields) == set(b"s j a q st et w r".split())


def test_truncated_and_absurd_values_are_value_errors() -> None:
    good = kept.encode({b"a": b"1", b"q": b"1764567890123", b"st": b"1764567890124",
                        b"et": b"1764567890125", b"j": b"spec", b"w": b"w1", b"r": b"\xc0"})
    for cut in range(1, len(good) - 1):  # every cut before the result loses a field
        with pytest.raises(ValueError):
            kept.decode(good[:cut])
    with pytest.raises(ValueError):
        kept.decode(b"\x02" + good[1:])
    with pytest.raises(ValueError):
        kept.decode(b"\x01" + b"\xff" * 20)  # a number that never ends


# -- the Lua rule is the Python rule ---------------------------------------------------------

_IDS = st.one_of(
    st.text(alphabet="ABCxyz019-_", min_size=20, max_size=24),
    st.text(min_size=0, max_size=30),
    st.text(alphabet="ab%*[]:.^$", min_size=22, max_size=22),
)


@pytest.mark.asyncio
async def test_lua_and_python_name_the_same_hash(backend: Backend,
                                                 pool: asyncjobs.Pool) -> None:
    probe = f"{_prelude()}\nreturn kept_key(KEYS[1], ARGV[1]) or false"
    keys = pool.keys("default")
    seen: list[tuple[str, Any]] = []

    @settings(deadline=None, database=None, max_examples=150,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_IDS)
    def collect(job_id: str) -> None:
        seen.append((job_id, keys.kept(job_id)))

    collect()
    for job_id, expected in seen:
        if "\x00" in job_id:
            continue
        got = await pool.client.eval(probe, 1, keys.job(job_id), job_id)  # type: ignore[misc]
        assert (got.decode() if got else None) == expected, job_id


# -- on Redis: where the record goes, and every reader ----------------------------------------

async def burst(backend: Backend, tasks: list[Any], **options: Any) -> None:
    options.setdefault("result_ttl", HOUR)
    await asyncio.wait_for(backend.run(backend.worker(tasks, burst=True, **options)), 30)


async def where(pool: asyncjobs.Pool, job: asyncjobs.Job[Any]) -> str:
    """'own' (the job's key), 'kept' (its tag's hash), 'both' or 'none'."""
    keys = pool.keys(job.queue)
    own = await pool.client.exists(keys.job(job.id)) == 1
    tag = keys.kept(job.id)
    shared = False
    if tag is not None and await pool.client.type(tag) == b"hash":
        shared = await pool.client.hexists(tag, job.id)
    return {(True, False): "own", (False, True): "kept", (True, True): "both"}.get(
        (own, bool(shared)), "none")


@pytest.mark.asyncio
@pytest.mark.on_cluster
async def test_a_complete_plain_record_moves_and_every_reader_finds_it(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    jobs = [await pool.enqueue(noop) for _ in range(3)] + [await pool.enqueue(double, 21)]
    await burst(backend, [noop, double])
    keys = pool.keys("default")
    for job in jobs:
        assert await where(pool, job) == "kept"
        assert await job.status() is JobState.COMPLETE
    assert await jobs[3].result(timeout=5) == 42
    assert await jobs[0].result(timeout=5) is None
    info = await jobs[3].info()
    assert (info.task, info.args, info.state, info.attempts, info.result) == (
        "double", [21], JobState.COMPLETE, 1, 42)
    assert info.enqueued_at and info.started_at and info.ended_at and info.worker
    assert info.enqueued_at <= info.started_at <= info.ended_at
    # One TTL for the hash: at least the result TTL, at most the slack more.
    ttl = await pool.client.pttl(keys.kept(jobs[0].id))
    assert HOUR * 1000 - 5000 <= ttl <= HOUR * 1000 + kept.SLACK_MS
    # Listings (they check the record's end time against the ended index's).
    page = await pool.admin.jobs("complete")
    rows = {r.job_id: r for r in page.items}
    assert set(rows) == {j.id for j in jobs}
    assert rows[jobs[3].id].task == "double" and rows[jobs[3].id].state == "complete"
    assert rows[jobs[3].id].ended_at == info.ended_at
    assert await pool.admin.find_job(jobs[1].id) == ["default"]
    # Abort, re-queue and enqueue again with the same id see a complete job.
    assert await jobs[0].abort() is False
    assert await pool.admin.requeue([jobs[0].id]) == {jobs[0].id: "complete"}
    again = await pool.enqueue(noop.options(job_id=jobs[0].id))
    assert again.id == jobs[0].id
    assert await pool.client.exists(keys.job(jobs[0].id)) == 0  # not written again
    assert await where(pool, jobs[0]) == "kept"


@pytest.mark.asyncio
async def test_a_waiter_hears_the_end_of_a_kept_result(backend: Backend,
                                                      pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(double, 5)
    waiting = asyncio.create_task(job.result(timeout=20))
    await asyncio.sleep(0.2)
    await burst(backend, [double])
    assert await waiting == 10
    assert await where(pool, job) == "kept"


@pytest.mark.asyncio
async def test_records_that_are_not_plain_keep_their_own_key(backend: Backend,
                                                            pool: asyncjobs.Pool) -> None:
    retried = await pool.enqueue(flaky)  # an error history
    progressed = await pool.enqueue(reports)  # a progress report
    delayed = await pool.enqueue(noop.options(delay=0.05))  # a due time
    expiring = await pool.enqueue(noop.options(expires=600))  # an expiry
    named = await pool.enqueue(noop.options(job_id="order-42"))  # an id of another shape
    brief = await pool.enqueue(noop.options(result_ttl=kept.MIN_TTL_S - 1))  # kept briefly
    for _ in range(50):  # bursts until the retry and the delayed job have run
        await asyncio.sleep(0.1)
        await burst(backend, [flaky, reports, noop])
        if {await j.status() for j in (retried, delayed)} == {JobState.COMPLETE}:
            break
    for job in (retried, progressed, delayed, expiring, named, brief):
        assert await job.status() is JobState.COMPLETE, job
        assert await where(pool, job) == "own", job
    assert await retried.result(timeout=1) == "second"
    assert 0 < await pool.client.ttl(pool.keys("default").job(brief.id)) <= kept.MIN_TTL_S - 1


@pytest.mark.asyncio
@pytest.mark.parametrize("hash_ttl_ms", ["wrong type", "none", "too long", "too short", "right"])
async def test_the_shared_hash_is_used_only_when_its_ttl_fits(
        backend: Backend, pool: asyncjobs.Pool, hash_ttl_ms: str) -> None:
    job = await pool.enqueue(noop)
    shared = pool.keys("default").kept(job.id)
    assert shared is not None
    if hash_ttl_ms == "wrong type":
        await pool.client.set(shared, "garbage")
    else:
        await pool.client.hset(shared, "other", "x")
        if hash_ttl_ms != "none":
            ms = {"too long": HOUR * 1000 + kept.SLACK_MS + 60_000,
                  "too short": HOUR * 1000 - 60_000, "right": HOUR * 1000 + 5000}[hash_ttl_ms]
            await pool.client.pexpire(shared, ms)
    await burst(backend, [noop])
    assert await job.status() is JobState.COMPLETE
    assert await job.result(timeout=1) is None
    if hash_ttl_ms == "right":
        assert await where(pool, job) == "kept"
        assert await pool.client.hget(shared, "other") == b"x"  # its other fields stay
    else:
        assert await where(pool, job) == "own"
        assert 0 < await pool.client.ttl(pool.keys("default").job(job.id)) <= HOUR
    if hash_ttl_ms == "wrong type":
        assert await pool.client.get(shared) == b"garbage"


@pytest.mark.asyncio
async def test_garbage_in_the_shared_hash_is_a_corrupt_job(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(noop)
    await burst(backend, [noop])
    shared = pool.keys("default").kept(job.id)
    assert shared is not None
    await pool.client.hset(shared, job.id, b"\x01\xff")
    for read in (job.status, job.info, lambda: job.result(timeout=1)):
        with pytest.raises(CorruptJob, match="kept result cannot be read"):
            await read()
    # Listings show what still reads as complete (a garbage record in its own key is
    # left out the same way); the listing itself does not fail.
    assert (await pool.admin.jobs("complete")).items == []
    assert await pool.admin.find_job(job.id) == ["default"]


@pytest.mark.asyncio
async def test_many_jobs_fill_small_hashes(real: Backend) -> None:
    async with real.pool() as pool:
        jobs = await pool.enqueue_many([asyncjobs.call(noop) for _ in range(300)])
        await burst(real, [noop])
        keys = pool.keys("default")
        assert await pool.client.keys(keys.job_prefix + "*") == []
        tags = {keys.kept(j.id) for j in jobs}
        sizes = [await pool.client.hlen(t) for t in tags]
        assert sum(sizes) == 300 and max(sizes) <= kept.PER_TAG
        for tag in tags:  # Redis keeps them as listpacks: a few bytes per field
            assert await pool.client.object("encoding", tag) == b"listpack"
        one = await pool.client.hget(keys.kept(jobs[0].id), jobs[0].id)
        assert len(one) < 64  # Redis' hash-max-listpack-value


@pytest.mark.asyncio
async def test_a_retry_after_a_lost_reply_finds_a_result_kept_meanwhile(
        backend: Backend, pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry of the pool's after a lost reply: the job was written, run and done (its
    result moved to its shared hash) before the reply came back; the retry finds it there
    and does not enqueue it a second time."""
    store = pool.store("default")
    real = store.enqueue
    tries: list[int] = []

    async def lossy(jobs: Any, **options: Any) -> dict[int, str]:
        tries.append(len(jobs))
        written = await real(jobs, **options)
        if len(tries) == 1:  # written, run and done before the reply came back
            await burst(backend, [noop])
            raise RedisConnectionError("the reply was lost")
        return written

    monkeypatch.setattr(store, "enqueue", lossy)
    job = await pool.enqueue(noop)
    assert tries == [1, 1]
    assert await where(pool, job) == "kept"
    keys = pool.keys("default")
    assert await pool.client.xlen(keys.stream) == 0  # not queued again
    assert (await pool.admin.queue_stats()).counters["enqueued"] == 1


@pytest.mark.asyncio
async def test_the_same_enqueue_sent_again_after_the_job_ended_writes_nothing(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """redis-py sends a command again when its reply was lost: the enqueue script then runs
    twice with the same arguments, ids just made included. When the job ran and its result
    moved to its shared hash in between, the second run finds it there."""
    store = pool.store("default")
    ids = kept.new_job_ids(3)
    jobs = [NewJob(i, encode_spec(JobSpec(noop.name))) for i in ids]
    assert await store.enqueue(jobs) == {}
    await burst(backend, [noop])
    assert await store.enqueue(jobs) == {0: "complete", 1: "complete", 2: "complete"}
    keys = pool.keys("default")
    assert await pool.client.xlen(keys.stream) == 0
    assert (await pool.admin.queue_stats()).counters["enqueued"] == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("ttl", [1e15, math.inf, math.nan, -5.0])
async def test_a_result_ttl_of_any_number_in_a_spec_ends_the_job_and_its_batch(
        backend: Backend, pool: asyncjobs.Pool, ttl: float) -> None:
    """A spec read from Redis may hold any result TTL (written by hand, by another
    producer): the job still completes, with a TTL Redis takes (at most 10 years), and so
    does every job settled with it. (A TTL of 1e15 s once failed the settle script halfway,
    leaving the whole batch running for ever.)"""
    store = pool.store("default")
    odd, plain = kept.new_job_ids(2)
    assert await store.enqueue([
        NewJob(odd, encode_spec(JobSpec(noop.name, result_ttl_s=ttl))),
        NewJob(plain, encode_spec(JobSpec(noop.name)))]) == {}
    await burst(backend, [noop])
    for job_id in (odd, plain):
        assert await pool.job(job_id).status() is JobState.COMPLETE
    keys = pool.keys("default")
    own, shared = keys.job(odd), keys.kept(odd)
    assert shared is not None
    left = max(await pool.client.pttl(own), await pool.client.pttl(shared))
    assert 0 < left <= (MAX_DURATION_S + 10) * 1000


def test_a_child_forked_while_a_thread_holds_the_lock_makes_ids() -> None:
    kept.new_job_ids(1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with kept._TAGS.lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(5)
    parent_prefix = kept._TAGS.prefix
    pid = os.fork()
    if pid == 0:  # the child: the lock was held when it was forked
        code = 3
        try:
            ids = kept.new_job_ids(3)
            code = 0 if len(ids) == 3 and ids[0][:6] != parent_prefix else 1
        finally:
            os._exit(code)
    release.set()
    thread.join()
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung making job ids")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
