"""Is this Redis fit to hold jobs? Its eviction policy, persistence and memory, read once
and judged by a pure function.

- An eviction policy other than ``noeviction`` lets Redis delete job records and stream
  entries to make room: jobs are lost without a trace. That is an error unless the user
  opts in (``allow_eviction``), e.g. for a cache-only Redis they accept losing jobs on.
- No persistence at all (neither AOF nor RDB snapshots) means a Redis restart loses every
  queued job: a warning.
- ``used_memory`` near ``maxmemory`` (90 % by default): a warning; at the limit enqueues
  fail with ``RedisFull`` until workers drain the queues.

Settings are read from ``INFO`` (allowed on most managed Redis offerings) and, for RDB
snapshots, ``CONFIG GET save``; what a server hides is reported once as unknown, never
treated as a fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from .cluster import is_cluster

NEAR_FULL = 0.9
"""The share of maxmemory from which memory use is reported."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """What matters for jobs about a Redis server (None: the server did not say)."""

    policy: str | None = None
    maxmemory: int | None = None
    used_memory: int | None = None
    aof: bool | None = None
    rdb: bool | None = None
    hidden: tuple[str, ...] = ()
    """What could not be read (a command the server or the user's ACL forbids)."""

    @property
    def memory_used(self) -> float | None:
        """used_memory / maxmemory; None without a maxmemory."""
        if not self.maxmemory or self.used_memory is None:
            return None
        return self.used_memory / self.maxmemory


@dataclass(frozen=True, slots=True)
class Verdict:
    """Errors (the worker refuses to start) and warnings, each one line for people."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


async def read_settings(client: Any) -> RedisSettings:
    """Read the settings; never raises for a command the server refuses. On a Redis
    Cluster, every master is read and the worst of them is told (one master that evicts
    loses the jobs of the queues in its slots)."""
    if is_cluster(client):
        return _worst([await _read_settings(client, {"target_nodes": node})
                       for node in client.get_primaries()])
    return await _read_settings(client, {})


async def _read_settings(client: Any, target: dict[str, Any]) -> RedisSettings:
    hidden: list[str] = []
    memory: dict[str, Any] = {}
    persistence: dict[str, Any] = {}
    try:
        memory = await client.info("memory", **target)
        persistence = await client.info("persistence", **target)
    except ResponseError:
        hidden.append("INFO")
    save: str | None = None
    try:
        reply = await client.config_get("save", **target)
        save = _text(reply.get("save", reply.get(b"save"))) if reply else None
    except ResponseError:
        hidden.append("CONFIG GET")
    return RedisSettings(
        policy=_text(memory.get("maxmemory_policy")) or None,
        maxmemory=_int(memory.get("maxmemory")),
        used_memory=_int(memory.get("used_memory")),
        aof=None if "aof_enabled" not in persistence else _int(persistence["aof_enabled"]) == 1,
        rdb=None if save is None else bool(save.strip()),
        hidden=tuple(hidden),
    )


async def memory_used(client: Any) -> float | None:
    """used_memory / maxmemory now (None without a maxmemory, or if INFO is refused); on a
    Redis Cluster, that of the fullest master (its queues' enqueues fail first)."""
    targets: list[dict[str, Any]] = (
        [{"target_nodes": node} for node in client.get_primaries()] if is_cluster(client)
        else [{}])
    shares: list[float] = []
    for target in targets:
        try:
            memory = await client.info("memory", **target)
        except ResponseError:
            continue
        share = RedisSettings(maxmemory=_int(memory.get("maxmemory")),
                              used_memory=_int(memory.get("used_memory"))).memory_used
        if share is not None:
            shares.append(share)
    return max(shares, default=None)


def _worst(each: list[RedisSettings]) -> RedisSettings:
    """One set of settings for many servers (a cluster's masters): an evicting policy if
    any evicts, the fullest one's memory, the persistence of one that persists nothing if
    any does, everything any hides."""
    if not each:
        return RedisSettings()
    policy = next((e.policy for e in each if e.policy not in (None, "noeviction")),
                  next((e.policy for e in each if e.policy is not None), None))
    fullest = max(each, key=lambda e: e.memory_used or 0.0)
    bare = next((e for e in each if e.aof is False and e.rdb is False), each[0])
    hidden = tuple(dict.fromkeys(h for e in each for h in e.hidden))
    return RedisSettings(policy=policy, maxmemory=fullest.maxmemory,
                         used_memory=fullest.used_memory, aof=bare.aof, rdb=bare.rdb,
                         hidden=hidden)


def judge(settings: RedisSettings, *, allow_eviction: bool = False,
          near_full: float = NEAR_FULL) -> Verdict:
    """What is wrong with these settings for holding jobs (see the module docstring)."""
    verdict = Verdict()
    policy = settings.policy
    if policy is not None and policy != "noeviction":
        text = (f"Redis evicts keys when full (maxmemory-policy {policy}): it may delete job "
                "records and queued entries, losing jobs without a trace; set "
                "maxmemory-policy noeviction")
        if allow_eviction:
            verdict.warnings.append(f"{text} (allowed by allow_eviction)")
        else:
            verdict.errors.append(f"{text}, or opt in with allow_eviction / --allow-eviction")
    if settings.aof is False and settings.rdb is False:
        verdict.warnings.append("Redis persists nothing (no AOF, no RDB snapshots): a Redis "
                                "restart loses every queued job; use appendonly yes")
    used = settings.memory_used
    if used is not None and used >= near_full:
        verdict.warnings.append(f"Redis memory is {used:.0%} of maxmemory: at 100 % enqueues "
                                "fail (RedisFull) until workers drain the queues")
    hidden = hidden_warning(settings)
    if hidden:
        verdict.warnings.append(hidden)
    return verdict


def hidden_warning(settings: RedisSettings) -> str | None:
    """The warning for a Redis that hides the settings ``judge`` reads (``INFO`` or
    ``CONFIG`` denied, as managed services do), or None when it shows them."""
    if not settings.hidden:
        return None
    return (f"cannot check Redis's configuration ({', '.join(settings.hidden)} not allowed): "
            "eviction policy and persistence unknown")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
