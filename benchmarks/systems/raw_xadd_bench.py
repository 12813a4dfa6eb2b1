"""Baseline: raw XADD from redis-py in the harness's own environment (the enqueue ceiling).

enqueue-single: one XADD per roundtrip (sync redis-py client).
enqueue-bulk:   pipelines of 1000 XADDs, transaction=False.
Payload: one field `job` holding a ~70-byte JSON message (function name, [i], a 32-hex id),
the size of a small job message.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import time
import uuid

import _common as c


def _payload(i: int) -> dict:
    return {"job": json.dumps({"function": "noop", "args": [i], "id": uuid.uuid4().hex})}


def info(args):
    try:
        version = md.version("redis")
    except md.PackageNotFoundError:
        version = None
    unsupported = dict.fromkeys(
        ("process_noop", "sleep", "latency", "delayed", "memory", "recovery", "scaling"),
        "baseline: enqueue only",
    )
    if version is None:
        unsupported["enqueue"] = "redis-py not installed in the harness env"
    return {
        "system": "raw_xadd",
        "version": f"redis-py {version}",
        "versions": {"redis": version},
        "bulk": "pipeline(transaction=False) of 1000 XADD",
        "settings": "sync redis-py; XADD bench * job <~70 B JSON>; single = one roundtrip each",
        "unsupported": unsupported,
    }


def _client(args):
    import redis

    r = redis.Redis.from_url(args.redis_url)
    r.ping()
    return r


def enqueue_single(args):
    r = _client(args)
    return c.time_single_sync(args.n, lambda i: r.xadd("bench", _payload(i)))


def enqueue_bulk(args):
    r = _client(args)
    r.xadd("bench", _payload(-1))
    t0 = time.perf_counter()
    for lo in range(0, args.n, args.chunk):
        pipe = r.pipeline(transaction=False)
        for i in range(lo, min(lo + args.chunk, args.n)):
            pipe.xadd("bench", _payload(i))
        pipe.execute()
    return {
        "n": args.n,
        "seconds": time.perf_counter() - t0,
        "method": f"pipeline(transaction=False) of {args.chunk} XADD",
    }


if __name__ == "__main__":
    c.main(globals())
