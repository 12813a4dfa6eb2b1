"""What a processed job costs Redis, counted: per job, take.lua's HMGET and HSET of its
record and settle.lua's HSET of its kept result; the rest is per batch (settle.lua deletes
the job keys of a batch's kept results with one DEL, see ``keep`` in _prelude.lua).

Commands are counted with INFO commandstats on a redis-server of the test's own, Lua's inner
commands included, as the benchmarks count them (benchmarks/_workloads.py, process_noop).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._codec import encode_spec
from asyncjobs._model import JobSpec
from asyncjobs._redis.connection import url_factory
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.kept import SLACK_MS, new_job_ids, packed_head
from asyncjobs._redis.keys import Keys
from asyncjobs._redis.scripts import run_pipelined
from asyncjobs._redis.store import QueueStore
from asyncjobs._redis.values import NewJob, SettleOp, Started

from .conftest import Backend

ME = "c-me"
HEAD = packed_head(1, 1, 2, encode_spec(JobSpec("t", [])), ME.encode())
"""A kept result's head as a worker sends it (``kept.packed_head``)."""


@contextlib.asynccontextmanager
async def queue_store(backend: Backend) -> AsyncIterator[QueueStore]:
    """A store of queue "q" on the backend, its consumer group made; its client closed
    after."""
    client = backend.factory(max_connections=4, socket_timeout=None)
    try:
        store = QueueStore(client, Keys(backend.prefix, "q"))
        await store.ensure_group()
        yield store
    finally:
        await client.aclose()


async def command_calls(client: Redis) -> dict[str, int]:
    stats: dict[str, Any] = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


@pytest.mark.asyncio
async def test_a_processed_job_costs_at_most_four_redis_commands(
        fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """500 no-op jobs drained by one worker: at most 4 Redis commands per job in all (every
    command of the run, the worker's start and stop included). Per job there remain the
    start's HMGET and HSET (the record says `running`) and, as the result is kept in its
    tag's shared hash (asyncjobs/_redis/kept.py), that hash's HSET. The rest is per batch:
    the job keys of a settled batch go in one DEL; per shared hash, its PTTL and PEXPIRE.

    Not per job but per keep-alive tick: a touch reads each entry it refreshes (one HMGET
    of its record's abort and lease fields, or of its state when the entry was settled
    meanwhile). The worker touches what it holds as soon as its pub/sub subscription is up
    (an abort requested before it may have been missed); on a loaded machine that comes
    after the first batch was taken (CI saw 600 HMGETs), so the entries touched are
    counted and accounted for."""
    @asyncjobs.task
    async def noop(ctx: Context, i: int) -> None:
        return None

    touched = 0
    touch = QueueStore.touch

    async def counted(self: QueueStore, consumer: str, held: Any, lease_ms: int = 15_000
                      ) -> tuple[list[str], list[str]]:
        nonlocal touched
        touched += sum(1 for d in held if d.job_id)
        return await touch(self, consumer, held, lease_ms)

    monkeypatch.setattr(QueueStore, "touch", counted)

    n = 500
    backend = Backend("real", fresh_redis.url, url_factory(fresh_redis.url),
                      f"t{secrets.token_hex(4)}")
    async with backend.pool() as pool:
        jobs = await pool.enqueue_many([asyncjobs.call(noop, i) for i in range(n)])
        await pool.client.config_resetstat()
        await backend.run(backend.worker([noop], burst=True))
        calls = await command_calls(pool.client)
        counters = (await pool.admin.queue_stats()).counters
        info = await jobs[0].info()
        # A plain result is kept in its tag's shared hash (see asyncjobs/_redis/kept.py).
        shared = Keys(backend.prefix, "default").kept(jobs[0].id)
        assert shared is not None
        ttl_ms = await pool.client.pttl(shared)
        keys = Keys(backend.prefix, "default")
        own_keys_left = await pool.client.exists(*(keys.job(j.id) for j in jobs))
    assert counters.get("complete") == n
    assert own_keys_left == 0  # every job key went, in the batches' DELs
    assert info.state == JobState.COMPLETE and info.attempts == 1
    assert 3_500_000 < ttl_ms <= 3_600_000 + SLACK_MS  # the result TTL, from the settle
    calls.pop("info", None)  # this test's own, above
    calls.pop("config|resetstat", None)
    total = sum(calls.values())
    shown = {k: round(v / n, 3) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
    print(f"\n{total / n:.3f} Redis commands per job: {shown}")
    assert calls.get("hset", 0) == 2 * n  # running, then the result
    assert calls.get("hmget", 0) == n + touched  # the start reads the record
    scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
    assert 0 < calls.get("del", 0) <= scripts  # the job keys: at most one DEL per call
    assert calls.get("expire", 0) <= n * 0.05  # no record of its own: counters' only
    assert 0 < calls.get("pexpire", 0) <= n / 64 + 5  # once per shared hash
    assert total <= 4 * n, shown


async def enqueue(store: QueueStore, *ids: str) -> dict[str, str]:
    """Enqueue jobs; returns each one's entry id."""
    assert await store.enqueue([NewJob(i, encode_spec(JobSpec("t", [i]))) for i in ids]) == {}
    entries = {}
    for i in ids:
        raw = await store.client.hget(store.keys.job(i), "e")
        assert raw is not None
        entries[i] = raw.decode()
    return entries


def verdicts(rows: list[Started]) -> list[tuple[str, str, int]]:
    return [(r.delivery.job_id, r.verdict, r.attempts) for r in rows]


@pytest.mark.asyncio
async def test_a_batch_of_good_and_bad_records_gives_each_entry_its_verdict(
        backend: Backend) -> None:
    """A batch of good and bad records, and two entries of one job, in one take: each entry
    gets its own verdict. A job's second entry is read after its first one started (its
    attempts say so), and the start of a job whose record points at its second entry waits
    for that one. One HMGET per entry that names a job."""
    client = backend.factory(max_connections=4, socket_timeout=None)
    try:
        store = QueueStore(client, Keys(backend.prefix, "q"))
        await store.ensure_group()
        k = store.keys
        odd = "a*b->c\x00#"  # pattern characters, in a job id they are plain text
        await enqueue(store, "j0", "j1", "j2", "j3", "j4", "j5", odd)
        await client.delete(k.job("j2"))
        await client.set(k.job("j2"), "not a hash")
        await client.delete(k.job("j3"))
        await client.hdel(k.job("j4"), "s")
        await client.hset(k.job("j5"), "ab", "1")
        await client.xadd(k.stream, {"i": "j0"})  # j0 again: its record points at the first
        again = (await client.xadd(k.stream, {"i": "j1"})).decode()
        await client.hset(k.job("j1"), "e", again)  # j1's record points at its second entry
        await client.xadd(k.stream, {"junk": "1"})  # no job id at all
        before = await command_calls(client) if backend.url else {}
        rows = await store.take(ME, 100)
        after = await command_calls(client) if backend.url else {}
        assert verdicts(rows) == [
            ("j0", "run", 1), ("j1", "stale", 0), ("j2", "unreadable", 0),
            ("j3", "missing", 0), ("j4", "missing", 0), ("j5", "aborted", 0),
            (odd, "run", 1), ("j0", "stale", 1), ("j1", "run", 1), ("", "missing", 0)]
        assert [r.spec for r in (rows[0], rows[6], rows[8])] == [
            encode_spec(JobSpec("t", [i])) for i in ("j0", odd, "j1")]
        for job_id in ("j0", "j1", odd):
            record = await client.hgetall(k.job(job_id))
            assert record[b"s"] == b"running" and record[b"a"] == b"1"
            assert record[b"w"] == ME.encode()
        if backend.url:  # every entry with a job id: 9 of the 10
            assert after["hmget"] - before.get("hmget", 0) == 9
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_a_prefix_holding_a_star_reads_each_record_by_its_own_key(
        backend: Backend) -> None:
    """Under a prefix that holds a '*' (a pattern character for SORT and KEYS) the records are
    read by their own keys, never through a key a pattern would make of it."""
    client = backend.factory(max_connections=4, socket_timeout=None)
    prefix = f"{backend.prefix}*x"
    try:
        store = QueueStore(client, Keys(prefix, "q"))
        await store.ensure_group()
        entries = await enqueue(store, "j0", "j1", "j2", "j3")
        # what GET <prefix>*->s would read for j0, were the prefix's '*' the pattern's
        decoy = f"{backend.prefix}j0x:{{q}}:job:*"
        await client.hset(decoy, mapping={"s": "queued", "e": entries["j0"], "j": b"decoy"})
        rows = await store.take(ME, 100)
        assert verdicts(rows) == [(f"j{n}", "run", 1) for n in range(4)]
        assert rows[0].spec == encode_spec(JobSpec("t", ["j0"]))
        await client.delete(decoy)
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_an_acl_user_limited_to_its_prefix_takes_jobs_like_any_other(
        fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """An ACL user with access to the keys of its prefix only (what Redis Cluster allows too):
    a take starts every job, with one HMGET per job, nothing refused and nothing logged."""
    prefix = f"t{secrets.token_hex(4)}"
    admin = Redis.from_url(fresh_redis.url)
    await admin.acl_setuser("limited", enabled=True, passwords=["+pw"],
                            keys=[f"{prefix}*"], channels=["*"], commands=["+@all"])
    client = Redis.from_url(fresh_redis.url.replace("redis://", "redis://limited:pw@"))
    try:
        store = QueueStore(client, Keys(prefix, "q"))
        await store.ensure_group()
        ids = [f"j{n}" for n in range(8)]
        await enqueue(store, *ids)
        before = await command_calls(admin)
        with caplog.at_level(logging.INFO, logger="asyncjobs.worker"):
            rows = await store.take(ME, 100)
        after = await command_calls(admin)
        assert verdicts(rows) == [(i, "run", 1) for i in ids]
        assert after["hmget"] - before.get("hmget", 0) == len(ids)
        assert after.get("sort", 0) == before.get("sort", 0) == 0
        assert caplog.text == ""
        info = await admin.acl_log()
        assert info == []  # nothing was refused to the limited user
    finally:
        await client.aclose()
        await admin.aclose()


@pytest.mark.asyncio
async def test_a_job_settled_twice_in_one_batch_keeps_its_later_record(
        backend: Backend) -> None:
    """settle.lua deletes the job keys of kept results together, after the batch; a job whose
    key is written again later in the same batch (two entries of one job: the first kept, the
    second retried) has its key deleted before that write, as one DEL per job would: the
    retry's record stays, and the kept results are in their shared hash."""
    async with queue_store(backend) as store:
        client = store.client
        k = store.keys
        job, other = new_job_ids(2)
        entries = await enqueue(store, job, other)
        second = (await client.xadd(k.stream, {"i": job})).decode()
        rows = await store.take(ME, 10)
        assert [r.delivery.entry for r in rows] == [entries[job], entries[other], second]
        [settled] = await run_pipelined(client, [store.settle_call(ME, [
            SettleOp(entries[job], job, "keep", b"\xc0", 3600, HEAD),
            SettleOp(entries[other], other, "keep", b"\xc0", 3600, HEAD),
            SettleOp(second, job, "retry", number=60_000),
        ])])
        assert settled == [1, 1, 1]
        record = await client.hgetall(k.job(job))
        assert record.get(b"s") == b"scheduled"  # the retry's write, not deleted after it
        assert await client.exists(k.job(other)) == 0  # kept: its key went
        kept_job, kept_other = k.kept(job), k.kept(other)
        assert kept_job is not None and kept_other is not None
        assert await client.hexists(kept_job, job) and await client.hexists(kept_other, other)


@pytest.mark.asyncio
async def test_a_settle_that_fails_midway_leaves_no_running_record_beside_a_kept_result(
        backend: Backend) -> None:
    """A batch whose second job's dead letter cannot be written (the letters stream is at the
    last possible id, so XADD '*' fails) fails after the first job's result was kept: the
    first job's own key is gone as it was before the batch deleted its keys together (a
    record saying `running` beside the kept result would be read as running for ever)."""
    async with queue_store(backend) as store:
        client = store.client
        k = store.keys
        kept_job, failed_job = new_job_ids(2)
        entries = await enqueue(store, kept_job, failed_job)
        assert len(await store.take(ME, 10)) == 2
        await client.xadd(k.dead, {"x": "1"}, id="18446744073709551615-18446744073709551615")
        with pytest.raises(ResponseError, match="exhausted the last possible ID"):
            await run_pipelined(client, [store.settle_call(ME, [
                SettleOp(entries[kept_job], kept_job, "keep", b"\xc0", 3600, HEAD),
                SettleOp(entries[failed_job], failed_job, "failed", "boom"),
            ])])
        shared = k.kept(kept_job)
        assert shared is not None and await client.hexists(shared, kept_job)
        assert await client.exists(k.job(kept_job)) == 0


@pytest.mark.asyncio
async def test_one_settle_of_five_thousand_jobs_records_every_one(backend: Backend) -> None:
    """A worker of high concurrency can settle thousands of jobs in one call (all that ended
    while the previous settle was in flight). Every one is recorded: its result kept, the
    queue's `complete` counter, and the ended index (noted 500 jobs an entry: Lua's unpack
    takes a few thousand values at most, and one entry for the whole batch failed the call
    after its results were written)."""
    async with queue_store(backend) as store:
        client = store.client
        k = store.keys
        n = 5000
        ids = new_job_ids(n)
        assert await store.enqueue([NewJob(i, encode_spec(JobSpec("t", []))) for i in ids]) \
            == {}
        rows = await store.take(ME, n)
        assert len(rows) == n
        [settled] = await run_pipelined(client, [store.settle_call(ME, [
            SettleOp(r.delivery.entry, r.delivery.job_id, "keep", b"\xc0", 3600, HEAD)
            for r in rows])])
        assert settled == [1] * n
        assert int(await client.hget(k.stats, "complete") or 0) == n
        noted = set()
        for _, fields in await client.xrange(k.ended):
            noted.update(f.decode() for f in fields)
        assert noted == set(ids)
        assert await client.xlen(k.stream) == 0
