"""Redis commands per job, phase by phase, on a fresh redis-server.

    .venv/bin/python benchmarks/commands.py [--jobs 5000] [--out results/commands.json]

Every command Redis runs is read from ``MONITOR`` while jobs are enqueued (one by one, then
with ``enqueue_many``) and then drained by one burst worker (concurrency 100), with a producer
waiting on one job's result. Each command a script runs inside Redis (``MONITOR`` marks them
``lua``) is counted with the script call that ran it, so every phase is the script or command
the client sent, with everything it cost Redis:

- enqueue: ``enqueue.lua`` (the record, the stream entry, dedup);
- read and start: ``take.lua`` (``XREADGROUP``, each record read with ``HMGET`` and marked
  running) and the worker's wait for work (blocking ``XREAD``);
- settle and notify: ``settle.lua`` (the result kept, the stream entries acknowledged and
  deleted, the batch's job keys deleted, counters, the ``PUBLISH`` to a producer that waits);
- the rest: keep-alive (``touch.lua``), the worker's heartbeat and registry, leadership,
  start-up and shut-down, each named.

Figures are per job of the drain (or of the enqueue); what runs once per worker is spread
over ``--jobs`` jobs, as in the benchmarks' ``process_noop``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs._redis import scripts  # noqa: E402
from asyncjobs._redis.embedded import RedisServer  # noqa: E402

PHASES = {
    "enqueue": "enqueue",
    "take": "read and start",
    "xread": "read and start",
    "xreadgroup": "read and start",
    "settle": "settle and notify",
    "touch": "keep-alive",
}


@asyncjobs.task
async def noop(ctx: asyncjobs.Context, i: int) -> None:
    """Returns None."""


def script_names() -> dict[str, str]:
    """SHA -> script name, for every script and its sharded variant."""
    names = {}
    for path in (ROOT / "asyncjobs" / "_redis" / "lua").glob("*.lua"):
        if not path.name.startswith("_"):
            for sharded in (False, True):
                names[scripts.load(path.stem, sharded).sha] = path.stem
    return names


class Monitor:
    """Counts every command a redis-server runs, each script's inner commands under the
    script (``script:<name>``) or top-level command that sent them."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.names = script_names()
        self.calls: Counter[str] = Counter()  # top-level sends, by phase key
        self.inner: Counter[str] = Counter()  # commands run by scripts, by phase key
        self.by_command: Counter[str] = Counter()  # every command Redis ran, by its name
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        current = "?"
        with self.client.monitor() as m:
            self._ready.set()
            for cmd in m.listen():
                if self._stop.is_set():
                    return
                words = cmd["command"].split()
                if not words:
                    continue
                name = words[0].lower()
                if cmd.get("client_type") == "lua":
                    self.inner[current] += 1
                    self.by_command[name] += 1
                    continue
                if name in ("evalsha", "eval", "evalsha_ro", "eval_ro"):
                    key = "script:" + self.names.get(words[1], "?")
                else:
                    key = name
                if key == "ping" and words[1:] == ["stop-monitor"]:
                    return
                current = key
                self.calls[key] += 1
                self.by_command[name] += 1

    def stop(self, url: str) -> None:
        """Wake the reader with a command of our own, then let it end."""
        self._stop.set()
        with redis.Redis.from_url(url) as client:
            client.execute_command("PING", "stop-monitor")
        self._thread.join(10)

    def snapshot(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        return Counter(self.calls), Counter(self.inner), Counter(self.by_command)


def phase_of(key: str) -> str:
    return PHASES.get(key.removeprefix("script:"), "other: " + key.removeprefix("script:"))


def per_job(before: tuple, after: tuple, n: int) -> dict:
    calls = after[0] - before[0]
    inner = after[1] - before[1]
    by_command = after[2] - before[2]
    for ours in ("monitor", "info"):
        calls.pop(ours, None)
        by_command.pop(ours, None)
    phases: Counter[str] = Counter()
    detail: dict[str, dict[str, float]] = {}
    for key in set(calls) | set(inner):
        total = calls[key] + inner[key]
        phases[phase_of(key)] += total
        detail[key] = {"sent": round(calls[key] / n, 3), "with_inner": round(total / n, 3)}
    return {
        "total_per_job": round(sum(by_command.values()) / n, 3),
        "sent_per_job": round(sum(calls.values()) / n, 3),
        "phases_per_job": {k: round(v / n, 3) for k, v in phases.most_common()},
        "by_sent_command": dict(sorted(detail.items(), key=lambda kv: -kv[1]["with_inner"])),
        "by_command_per_job": {k: round(v / n, 3) for k, v in by_command.most_common()},
    }


async def measure(url: str, n: int, mon: Monitor) -> dict:
    out: dict = {}
    async with asyncjobs.create_pool(url, queue="bench") as pool:
        await pool.enqueue(noop, -1)  # warm-up: scripts loaded, group made
        await asyncio.sleep(0.2)
        s0 = mon.snapshot()
        for i in range(n):
            await pool.enqueue(noop, i)
        await asyncio.sleep(0.5)
        s1 = mon.snapshot()
        await pool.enqueue_many(asyncjobs.call(noop, i) for i in range(n, 2 * n))
        await asyncio.sleep(0.5)
        s2 = mon.snapshot()
        out["enqueue_one_by_one"] = per_job(s0, s1, n)
        out["enqueue_many"] = per_job(s1, s2, n)
        waited = await pool.enqueue(noop, -2)
        worker = asyncjobs.Worker([noop], queues=["bench"], concurrency=100, burst=True)
        result = asyncio.ensure_future(waited.result(timeout=120))
        await asyncio.sleep(0.2)
        s3 = mon.snapshot()
        await worker.run(redis_url=url)
        await result
        await asyncio.sleep(0.5)
        s4 = mon.snapshot()
        out["drain"] = per_job(s3, s4, 2 * n + 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "commands.json")
    args = ap.parse_args()
    with RedisServer() as server:
        mon = Monitor(server.url)
        mon.start()
        result = asyncio.run(measure(server.url, args.jobs, mon))
        mon.stop(server.url)
        version = redis.Redis.from_url(server.url).info("server")["redis_version"]
    result = {"jobs": args.jobs, "redis": version, **result}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name in ("enqueue_one_by_one", "enqueue_many", "drain"):
        part = result[name]
        print(f"{name}: {part['total_per_job']} commands per job "
              f"({part['sent_per_job']} sent): {part['phases_per_job']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
