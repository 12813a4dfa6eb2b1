"""``requeue_all`` and ``purge_dead`` at scale: every letter handled in pages, none left
behind silently, counts returned; and the ``dlq requeue --all`` / ``dlq purge`` commands."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

import asyncjobs
from asyncjobs._codec import encode_spec
from asyncjobs._model import JobSpec
from asyncjobs._producer.deadletters import REPLIES

from .conftest import Backend
from .procs import run_cli

pytestmark = pytest.mark.on_cluster

SPEC = encode_spec(JobSpec(task="add", args=[1, 2]))


async def dead_letters(pool: asyncjobs.Pool, count: int, *, first: int = 0,
                       queue: str = "default") -> list[str]:
    """``count`` dead-lettered jobs written straight into Redis (letter and record), fast."""
    keys = pool.keys(queue)
    await pool.client.sadd(pool.global_keys.queues, queue)
    ids = [f"bulk-{i}" for i in range(first, first + count)]
    for start in range(0, count, 5_000):
        pipe = pool.client.pipeline(transaction=False)
        for job_id in ids[start : start + 5_000]:
            pipe.xadd(keys.dead, {"i": job_id, "r": "raised ValueError", "t": "1000"})
        entries = await pipe.execute()
        pipe = pool.client.pipeline(transaction=False)
        for job_id, entry in zip(ids[start : start + 5_000], entries, strict=True):
            pipe.hset(keys.job(job_id), mapping={"s": "failed", "j": SPEC, "a": 1,
                                                 "dl": "raised ValueError", "de": entry})
        await pipe.execute()
    return ids


async def odd_letters(pool: asyncjobs.Pool) -> None:
    """Letters that cannot be requeued: no record (3), no job id (2), a job not dead (1)."""
    dead = pool.keys("default").dead
    for i in range(3):
        await pool.client.xadd(dead, {"i": f"gone-{i}", "r": "purged meanwhile"})
    for _ in range(2):
        await pool.client.xadd(dead, {"r": "written by hand"})
    queued = await pool.enqueue("add", 1, 2)
    await pool.client.xadd(dead, {"i": queued.id, "r": "stale"})


@pytest.mark.asyncio
async def test_requeue_all_handles_every_letter_and_counts_those_left(real: Backend) -> None:
    async with real.pool() as pool:
        keys = pool.keys("default")
        await dead_letters(pool, 12_000)
        await odd_letters(pool)
        await dead_letters(pool, 13_000, first=12_000)
        seen: list[tuple[int, int]] = []
        started = time.perf_counter()
        report = await pool.admin.requeue_all(on_progress=lambda d, t: seen.append((d, t)))
        took = time.perf_counter() - started
        assert report.requeued == 25_000
        assert report.not_requeued == {"no record": 3, "no job id": 2, "job is queued": 1}
        assert report.left == 6 and len(report.examples) == 6
        assert report.examples["gone-0"] == "no record"
        assert await pool.client.xlen(keys.dead) == 6  # only those, still there
        assert await pool.client.xlen(keys.stream) == 25_001
        assert [t for _, t in seen] == [25_006] * 27 and seen[-1][0] == 25_006
        assert seen[0] == (0, 25_006)  # the total is known before the first page
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert await pool.job("bulk-24999").status() is asyncjobs.JobState.QUEUED
        print(f"requeue_all: 25,006 letters in {took:.2f} s")


@pytest.mark.asyncio
async def test_purge_dead_deletes_every_letter_and_record(real: Backend) -> None:
    async with real.pool() as pool:
        keys = pool.keys("default")
        ids = await dead_letters(pool, 25_000)
        await odd_letters(pool)
        handled: list[int] = []
        assert await pool.admin.purge_dead(on_progress=lambda d, t: handled.append(d)) == 25_006
        assert handled[0] == 0 and handled[-1] == 25_006 and len(handled) == 27
        assert await pool.client.xlen(keys.dead) == 0
        assert await pool.client.exists(*(keys.job(i) for i in ids[::1000])) == 0
        with pytest.raises(asyncjobs.JobNotFound):
            await pool.job(ids[-1]).status()


@pytest.mark.asyncio
async def test_letters_dead_lettered_during_the_walk_wait_for_the_next_run(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    await dead_letters(pool, 2_500)
    later: list[asyncio.Task[list[str]]] = []

    def on_progress(done: int, total: int) -> None:
        if done and not later:  # a job dead-lettered again while the walk goes on
            later.append(asyncio.get_running_loop().create_task(
                dead_letters(pool, 1, first=9_999)))

    report = await pool.admin.requeue_all(on_progress=on_progress)
    await later[0]
    assert (report.requeued, report.left) == (2_500, 0)
    letters = await pool.admin.dead_letters()
    assert [d.job_id for d in letters] == ["bulk-9999"]


@pytest.mark.asyncio
async def test_requeue_by_id_is_pipelined_and_answers_per_id(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    ids = await dead_letters(pool, 2_100)
    outcome = await pool.admin.requeue([*ids, "nope", ids[0]])
    assert outcome == {**dict.fromkeys(ids, "queued"), "nope": "missing"}  # ids[0]: queued
    assert await pool.client.xlen(pool.keys("default").dead) == 0


@pytest.mark.asyncio
async def test_an_empty_dead_letter_stream_is_a_no_op(backend: Backend,
                                                      pool: asyncjobs.Pool) -> None:
    report = await pool.admin.requeue_all()
    assert (report.requeued, report.not_requeued, report.examples) == (0, {}, {})
    assert await pool.admin.purge_dead() == 0


def cli(backend: Backend, *args: str) -> tuple[int, str, str]:
    done = run_cli(*args, "--redis-url", backend.url or "", "--prefix", backend.prefix)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
@pytest.mark.asyncio
async def test_requeue_all_command_prints_counts_and_fails_when_letters_are_left(
    real: Backend
) -> None:
    async with real.pool() as pool:
        await dead_letters(pool, 1_500)
        await odd_letters(pool)
    code, out, err = cli(real, "dlq", "requeue", "--all")
    assert code == 1, err
    assert out.splitlines()[:2] == [
        "requeued 1500 dead letter(s)",
        "not requeued: 6 (1 job is queued, 2 no job id, 3 no record)",
    ]
    assert "  gone-0: no record" in out.splitlines()
    code, out, _ = cli(real, "dlq", "requeue", "--all", "--json")
    report = json.loads(out)
    assert code == 1 and report["requeued"] == 0 and sum(report["not_requeued"].values()) == 6
    code, out, _ = cli(real, "dlq", "purge", "--yes")
    assert (code, out.strip()) == (0, "purged 6 dead letter(s)")
    code, out, _ = cli(real, "dlq", "requeue", "--all")
    assert (code, out.strip()) == (0, "requeued 0 dead letter(s)")


@pytest.mark.asyncio
async def test_a_stale_letter_is_left_and_the_current_one_requeues_the_job(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    dead = pool.keys("default").dead
    stale = await pool.client.xadd(dead, {"i": "bulk-0", "r": "an older failure"})
    await dead_letters(pool, 1)  # the job's current letter
    report = await pool.admin.requeue_all()
    assert report.requeued == 1
    assert report.not_requeued == {"stale letter (dead-lettered again since)": 1}
    left = [d.entry.encode() for d in await pool.admin.dead_letters()]
    assert left == [stale if isinstance(stale, bytes) else stale.encode()]


@pytest.mark.asyncio
async def test_a_letter_whose_job_key_is_not_a_hash_is_left_as_an_unreadable_record(
    backend: Backend, pool: asyncjobs.Pool
) -> None:
    keys = pool.keys("default")
    await pool.client.xadd(keys.dead, {"i": "clobbered", "r": "raised ValueError"})
    await pool.client.set(keys.job("clobbered"), "not a record")
    await dead_letters(pool, 1)
    report = await pool.admin.requeue_all()
    assert report.requeued == 1
    assert report.not_requeued == {"unreadable record": 1}
    assert report.examples == {"clobbered": "unreadable record"}
    assert await pool.client.get(keys.job("clobbered")) == b"not a record"  # left alone


def test_the_readme_names_every_reason_a_letter_is_left() -> None:
    """The README's list of ``requeue_all``'s reasons is the code's: each reason a letter
    can be left for appears there, in backticks, as the report spells it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = readme.split("and counts the others by\nreason: ", 1)[1].split(".\n", 1)[0]
    assert set(re.findall(r"`([^`]+)`", listed)) == {*REPLIES.values(), "no job id",
                                                     "job is <state>"}
