"""What a job costs in Redis, byte by byte: waiting, completed (kept for ``result_ttl``) and
dead-lettered, on a fresh redis-server.

    .venv/bin/python benchmarks/redis_bytes.py [--jobs 20000] [--out results/redis_bytes.json]

Each figure is Redis' own ``used_memory`` before and after, divided by the number of jobs
(so allocator rounding and hash-table growth are included, as they are in production):

- ``waiting``: ``pool.enqueue_many`` of no-op jobs (no arguments), nothing else running;
- ``complete``: the same jobs after a burst worker ran them (the default one-hour
  ``result_ttl``: each record is kept with its TTL);
- ``dead``: jobs of a task that raises at once (``max_tries=1``): the record with its error
  (exception type, message, traceback) and the dead letter.

Then the parts, each measured alone on the same server with key names of the same length:
a stream entry (``XADD ... i <22-character id>``), an empty key (a hash holding one
one-byte field: its name, its entry in Redis' keyspace, its headers), a TTL (``EXPIRE`` on
an existing key), and the record's fields (the rest: listpack bytes, listed field by field
from one real record). Nothing here depends on the machine's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs._redis import kept as asyncjobs_kept  # noqa: E402
from asyncjobs._redis.embedded import RedisServer  # noqa: E402


@asyncjobs.task
async def noop(ctx: asyncjobs.Context) -> None:
    """Returns None: the smallest record a completed job leaves."""


@asyncjobs.task(max_tries=1)
async def fails(ctx: asyncjobs.Context) -> None:
    """Raises at once: a dead letter on its first try."""
    raise ValueError("no")


async def used(r: aioredis.Redis, timeout_s: float = 30) -> int:
    """Redis' ``used_memory`` without its clients' buffers (a connection that just sent a
    pipelined batch holds some: not the jobs') or its script cache, read once this
    connection is the only one (a worker's connections may still be closing, on a loaded
    machine)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < timeout_s:
        if int((await r.info("clients"))["connected_clients"]) <= 1:
            break
        await asyncio.sleep(0.1)
    memory = await r.info("memory")  # every figure from one reply
    # Nor the script cache: a script a worker loads for the first time mid-run (one its
    # warm-up did not need) is not the jobs' either.
    return (int(memory["used_memory"]) - int(memory.get("mem_clients_normal", 0))
            - int(memory.get("used_memory_scripts", 0)))


def ids(n: int, tag: str) -> list[str]:
    """n distinct 22-character ids (a job id's length)."""
    return [f"{tag}{i:0{22 - len(tag)}d}" for i in range(n)]


async def keyspace_overhead(r: aioredis.Redis) -> int:
    """The bytes of db 0's keyspace tables (their slots, not the keys)."""
    db = (await r.memory_stats()).get("db.0") or {}
    return int(db.get("overhead.hashtable.main", 0)) + int(db.get("overhead.hashtable.expires", 0))


async def settle_keyspace(r: aioredis.Redis, timeout_s: float = 30) -> float:
    """Wait until the keyspace tables have stopped shrinking: the same size for a second
    (Redis resizes them 10 times a second), or ``timeout_s``; returns the seconds waited.
    (Not until they are back to their size before the jobs: the keys left, the shared
    hashes of the kept records, need slots of their own.)"""
    loop = asyncio.get_running_loop()
    start = loop.time()
    last, since = await keyspace_overhead(r), start
    while loop.time() - since < 1 and loop.time() - start < timeout_s:
        await asyncio.sleep(0.1)
        now = await keyspace_overhead(r)
        if now != last:
            last, since = now, loop.time()
    return round(loop.time() - start, 1)


async def per_job(r: aioredis.Redis, n: int, fill: Any) -> float:
    before = await used(r)
    pipe = r.pipeline(transaction=False)
    fill(pipe)
    await pipe.execute()
    return round((await used(r) - before) / n, 1)


async def shared_keys(r: aioredis.Redis, n: int) -> dict[str, float]:
    """The keys that are not one job's record, each's MEMORY USAGE per job (1 byte or more:
    the indexes that grow with the jobs)."""
    out = {}
    async for key in r.scan_iter(count=10_000):
        if b":job:" not in key and b":kept:" not in key:
            each = ((await r.memory_usage(key, samples=0)) or 0) / n
            if each >= 1:
                out[key.decode()] = round(each, 1)
    return out


async def enqueue(url: str, n: int, task: Any) -> None:
    pool = await asyncjobs.create_pool(url)
    try:
        await pool.enqueue_many([asyncjobs.call(task) for _ in range(n)])
    finally:
        await pool.close()


async def run_worker(url: str, tasks: list[Any]) -> None:
    await asyncjobs.Worker(tasks, redis_url=url, burst=True).run()


async def measure(n: int) -> dict[str, Any]:
    server = RedisServer()
    url = server.start()
    r = aioredis.Redis.from_url(url)
    try:
        # Nor the slow log: a command slower than 10 ms (many, on a loaded machine) is kept
        # there with its arguments, up to 128 of them: a few hundred KB that are not the jobs'.
        await r.config_set("slowlog-log-slower-than", -1)
        # A warm-up first loads every script the run uses (Redis' script cache survives
        # FLUSHALL): a few hundred KB that do not grow with the jobs.
        for task in (noop, fails):
            await enqueue(url, 10, task)
            await run_worker(url, [task])
        await r.flushall()
        # Measured with only this idle connection open: a producer's or a worker's
        # connection holds buffers of its own (a pipelined batch's), which are not the jobs'.
        base = await used(r)
        await enqueue(url, n, noop)
        waiting = round((await used(r) - base) / n, 1)
        key = (await r.scan(0, match=b"*:job:*", count=10 * n))[1][0]
        queued_fields = await r.hgetall(key)
        await run_worker(url, [noop])
        # The keyspace's table grew for the waiting jobs' keys; Redis shrinks it on its own
        # after they are gone (serverCron, 10 times a second; later on a loaded machine):
        # measured once the table's overhead stops changing.
        settled = await settle_keyspace(r)
        complete = round((await used(r) - base) / n, 1)
        # Each record went into its tag's shared hash (asyncjobs/_redis/kept.py).
        job_id = key.decode().rsplit(":", 1)[-1]
        kept_keys = [k async for k in r.scan_iter(match=b"*:kept:*", count=10_000)]
        kept_hash = (await r.keys(b"*:kept:" + job_id[:10].encode()))[0]
        packed = await r.hget(kept_hash, job_id)
        done_fields = asyncjobs_kept.decode(packed)
        kept_usage = sum([(await r.memory_usage(k, samples=0)) or 0 for k in kept_keys])
        # A job reclaimed or retried on its way keeps a full record of its own (its history
        # says why), which this figure would count: none is expected.
        not_kept = len([k async for k in r.scan_iter(match=b"*:job:*", count=10_000)])
        encodings = sorted({(await r.object("encoding", k)).decode() for k in kept_keys})
        shared = await shared_keys(r, n)
        await r.flushall()

        base = await used(r)
        await enqueue(url, n, fails)
        await run_worker(url, [fails])
        dead = round((await used(r) - base) / n, 1)
        await r.flushall()

        job = "asyncjobs:{default}:job:"
        names = ids(n, "x")
        parts = {
            "stream entry": await per_job(r, n, lambda p: [
                p.xadd("asyncjobs:{default}:stream", {"i": i}) for i in names]),
            "empty key": await per_job(r, n, lambda p: [
                p.hset(job + i, "s", "") for i in names]),
            "TTL": await per_job(r, n, lambda p: [p.expire(job + i, 3600) for i in names]),
        }
        await r.flushall()
        # A job alone in its shared hash (a producer enqueueing less than one job in ten
        # seconds): the hash's key and TTL are all its own.
        kept = "asyncjobs:{default}:kept:"
        parts["alone in its hash"] = await per_job(r, n, lambda p: [
            c for i in names for c in (p.hset(kept + i[:10] + "x", i, packed),
                                       p.pexpire(kept + i[:10] + "x", 3_610_000))])
    finally:
        await r.aclose()
        server.stop()

    def fields(raw: dict[bytes, bytes]) -> dict[str, int]:
        # a listpack entry: its bytes plus about 2 bytes of header; a whole number is
        # stored as an integer (up to 9 bytes)
        return {k.decode(): len(k) + 2 + (min(len(v), 9) if v.isdigit() else len(v)) + 2
                for k, v in raw.items()}

    return {
        "jobs": n,
        "per_job_bytes": {"waiting": waiting, "complete": complete, "dead": dead},
        "parts_bytes": parts,
        "key_name_bytes": len(job) + 22,
        "record_fields_waiting": fields(queued_fields),
        "record_fields_complete": sorted(k.decode() for k in done_fields),
        "kept": {
            "packed_record_bytes": len(packed),
            "hashes": len(kept_keys),
            "jobs_per_hash": round(n / len(kept_keys), 1),
            "encodings": encodings,
            "bytes_per_job": round(kept_usage / n, 1),
        },
        "indexes_complete": shared,
        "keyspace_settled_after_s": settled,
        "records_not_kept": not_kept,
    }


def table(result: dict[str, Any]) -> str:
    per, parts = result["per_job_bytes"], result["parts_bytes"]
    waiting_fields = sum(result["record_fields_waiting"].values())
    kept = result["kept"]
    rows = [
        "| a job | bytes | made of |",
        "|---|---:|---|",
        f"| waiting | {per['waiting']:.0f} | stream entry {parts['stream entry']:.0f} + "
        f"record key {parts['empty key']:.0f} + fields ~{waiting_fields} "
        f"({', '.join(result['record_fields_waiting'])}) |",
        f"| complete (kept `result_ttl`) | {per['complete']:.0f} | its share of a shared "
        f"hash {kept['bytes_per_job']:.0f} ({kept['jobs_per_hash']:.0f} jobs a hash, "
        f"{'/'.join(kept['encodings'])}; the id, 22, and the packed record, "
        f"{kept['packed_record_bytes']})"
        + "".join(f" + {name.rsplit(':', 1)[-1]} index {size:.0f}"
                  for name, size in result["indexes_complete"].items()) + " |",
        f"| complete, alone in its hash | {parts['alone in its hash']:.0f} | the hash's "
        "key, its TTL, the one field |",
        f"| dead-lettered | {per['dead']:.0f} | record with its error and traceback, and "
        "its dead letter |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "redis_bytes.json"))
    args = parser.parse_args()
    result = asyncio.run(measure(args.jobs))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
