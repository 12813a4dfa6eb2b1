"""An idle fleet costs next to nothing: counted, not timed.

Regression: with 2+ workers on a queue, every worker that was not the scheduler leader
looped on the leader lease without sleeping (the wake event it waited on was set by another
loop and cleared only by the leader): 3 idle workers made ~16,500 Redis commands/s, two of
them at 67 % and 80 % CPU; with Redis down the same spin ran at ~100 % CPU.

Three real worker processes (one queue, one cron job, defaults) sit idle for 30 s: their
Redis commands are counted with INFO commandstats and their CPU read from /proc. A spin
shows as thousands of commands and most of a core, far from the bounds.

An idle worker's commands come in periodic bursts (a reclaim scan and a take every 3.75 s,
~20 commands counting Lua's inner ones; a heartbeat every 5 s; lease renewals), so the rate
of a short window depends on how many bursts fall in it: over 10 s windows three workers
measured 22 to 31 commands/s around a mean of ~24. Thirty seconds hold eight scans of each
worker, give or take one: the count's jitter is a third of a 10 s window's.
"""

from __future__ import annotations

import os
import secrets
import time

import pytest
import redis

from asyncjobs._redis.embedded import RedisServer

from .procs import workers

pytestmark = [pytest.mark.slow, pytest.mark.real_redis]

WINDOW_S = 30.0
DOWN_WINDOW_S = 10.0
TICKS = os.sysconf("SC_CLK_TCK")


def commands(client: redis.Redis) -> int:
    """Commands served so far, not counting INFO (our own probe)."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.startswith("cmdstat_info"))


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_share(pids: list[int], seconds: float) -> list[float]:
    """Each process's CPU use over ``seconds``, as a fraction of one core."""
    before = [cpu_ticks(p) for p in pids]
    time.sleep(seconds)
    return [(cpu_ticks(p) - b) / TICKS / seconds for p, b in zip(pids, before, strict=True)]


@pytest.mark.long
def test_three_idle_workers_barely_touch_redis_or_the_cpu(fresh_redis: RedisServer) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    client = redis.Redis.from_url(fresh_redis.url)
    with workers("tests.apps.idle:worker", fresh_redis.url, prefix, 3) as procs:
        pids = [p.proc.pid for p in procs]
        time.sleep(3)  # start-up, leader election, the first cron tick
        before = commands(client)
        shares = cpu_share(pids, WINDOW_S)
        rate = (commands(client) - before) / WINDOW_S
        print(f"idle fleet: {rate:.1f} Redis commands/s in total; CPU per worker "
              f"{', '.join(f'{s:.2%}' for s in shares)}")
        assert rate <= 30, f"{rate:.0f} commands/s: something spins"
        assert all(s < 0.01 for s in shares), shares

        fresh_redis.stop()
        time.sleep(2)  # the outage is noticed, backoffs grow
        down = cpu_share(pids, DOWN_WINDOW_S)
        print(f"Redis down: CPU per worker {', '.join(f'{s:.2%}' for s in down)}")
        assert all(s < 0.02 for s in down), down
        assert all(p.proc.poll() is None for p in procs)  # they wait for Redis, not exit

        fresh_redis.start()
        for proc in procs:
            proc.wait_for("redis reachable again", timeout_s=30)
