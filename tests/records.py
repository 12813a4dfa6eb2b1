"""Reading job records the way the tests check them: a record is in the job's own key, or,
for a complete job, packed in its tag's shared hash (``asyncjobs/_redis/kept.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncjobs
from asyncjobs._redis import kept


async def states(pool: asyncjobs.Pool, ids: Sequence[str],
                 queue: str = "default") -> dict[str, str]:
    """Each job's state ('missing' without a record), in one round trip."""
    keys = pool.keys(queue)

    async def read() -> list[object]:
        pipe = pool.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job(job_id), "s")
            shared = keys.kept(job_id)
            if shared is None:
                pipe.exists(keys.job(job_id))
            else:
                pipe.hget(shared, job_id)
        return list(await pipe.execute(raise_on_error=False))

    found = await pool.call(read)
    out = {}
    for n, job_id in enumerate(ids):
        own, packed = found[2 * n], found[2 * n + 1]
        if isinstance(own, bytes):
            out[job_id] = own.decode()
        elif isinstance(packed, bytes):
            out[job_id] = kept.decode(packed)[b"s"].decode()
        else:
            out[job_id] = "missing"
    return out


async def forget(pool: asyncjobs.Pool, job_id: str, queue: str = "default") -> None:
    """Delete a job's record wherever it is (as its TTL running out would)."""
    keys = pool.keys(queue)
    await pool.client.delete(keys.job(job_id))
    shared = keys.kept(job_id)
    if shared is not None:
        await pool.client.hdel(shared, job_id)


async def exists(handle: asyncjobs.Job[Any]) -> bool:
    """Whether the job ``handle`` names has a record (``status()`` finds it)."""
    try:
        await handle.status()
    except asyncjobs.JobNotFound:
        return False
    return True
