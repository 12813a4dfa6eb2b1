"""One asyncio Redis client measured (run inside that client's venv by clients.py).

Prints one JSON line: the client's version, the process RSS after importing it, and rates
for pipelined XADD (pipelines of 1,000), pipelined EVALSHA, and single GETs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from importlib import metadata

PAYLOAD = b"x" * 40
SCRIPT = "return redis.call('XADD', KEYS[1], '*', 'j', ARGV[1])"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


async def redis_py(port: int, n: int) -> dict[str, float]:
    import redis.asyncio as ra

    return await _redis_py_rates(ra.Redis(port=port), n)


async def asyncjobs_client(port: int, n: int) -> dict[str, float]:
    """redis-py as asyncjobs configures it (its connection class packs commands with hiredis)."""
    from asyncjobs._redis.connection import url_factory

    client = url_factory(f"redis://127.0.0.1:{port}/0")(max_connections=10, socket_timeout=None)
    return await _redis_py_rates(client, n)


async def _redis_py_rates(client, n: int) -> dict[str, float]:
    sha = await client.script_load(SCRIPT)

    async def xadd() -> None:
        for _ in range(0, n, 1000):
            pipe = client.pipeline(transaction=False)
            for _ in range(1000):
                pipe.xadd("s", {"j": PAYLOAD})
            await pipe.execute()

    async def evalsha() -> None:
        for _ in range(0, n, 1000):
            pipe = client.pipeline(transaction=False)
            for _ in range(1000):
                pipe.evalsha(sha, 1, "s2", PAYLOAD)
            await pipe.execute()

    async def get() -> None:
        for _ in range(n // 4):
            await client.get("k")

    out = await _time(n, xadd, evalsha, get)
    await client.aclose()
    return out


async def coredis(port: int, n: int) -> dict[str, float]:
    import coredis as cr

    client = cr.Redis(port=port)
    sha = await client.script_load(SCRIPT)

    async def xadd() -> None:
        for _ in range(0, n, 1000):
            async with await client.pipeline(transaction=False) as pipe:
                for _ in range(1000):
                    pipe.xadd("s", {"j": PAYLOAD})

    async def evalsha() -> None:
        for _ in range(0, n, 1000):
            async with await client.pipeline(transaction=False) as pipe:
                for _ in range(1000):
                    pipe.evalsha(sha, keys=["s2"], args=[PAYLOAD])

    async def get() -> None:
        for _ in range(n // 4):
            await client.get("k")

    return await _time(n, xadd, evalsha, get)


async def _time(n: int, xadd, evalsha, get) -> dict[str, float]:
    rates = {}
    for name, fn, count in (("xadd_pipelined", xadd, n), ("evalsha_pipelined", evalsha, n),
                            ("get_single", get, n // 4)):
        started = time.perf_counter()
        await fn()
        rates[name] = count / (time.perf_counter() - started)
    return rates


def main() -> None:
    kind, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    run, package, module = {
        "redis-py": (redis_py, "redis", "redis.asyncio"),
        "asyncjobs": (asyncjobs_client, "redis", "asyncjobs._redis.connection"),
        "coredis": (coredis, "coredis", "coredis"),
    }[kind]
    __import__(module)
    rss = rss_mib()
    rates = asyncio.run(run(port, n))
    print(json.dumps({"client": kind, "version": metadata.version(package),
                      "import_rss_mib": rss, **rates}))


if __name__ == "__main__":
    main()
