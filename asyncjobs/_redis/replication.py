"""Enqueue acknowledged by replicas: the opt-in ``create_pool(wait_replicas=N)``.

Redis replicates asynchronously: a job the master has written, and ``enqueue`` has returned,
may not have reached any replica yet, and a failover in that moment loses it. With
``wait_replicas`` the enqueue scripts are followed, on the same connection and in the same
round trip, by ``WAIT numreplicas timeout``: the call returns only once that many replicas
have acknowledged every write made so far, or raises ``NotReplicated`` (the jobs *are* on
the master; whether to go on, enqueue again with the same job ids, or give up is the
caller's choice).

WAIT counts what the connection itself wrote. A job found already in Redis (the same job
id) is not written again, so a ``PUBLISH`` on a channel nobody listens to comes first: it
is replicated like a write, and WAIT then covers everything the master had written up to
that moment, that job included. WAIT makes a write more durable; it does not make a
failover safe for writes that fail: a job not acknowledged may or may not survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from .._options import check_whole
from ..exceptions import ConfigurationError, NotReplicated
from . import scripts as s

MAX_REPLICAS = 10_000
"""The most replicas an enqueue may wait for (far more than any deployment has)."""

@dataclass(frozen=True, slots=True)
class Replication:
    """Wait for ``replicas`` replicas, at most ``timeout_ms``, after each enqueue."""

    replicas: int
    timeout_ms: int
    channel: str
    """Where the marker write is published (nobody listens: it only moves the offset)."""

    @classmethod
    def of(cls, replicas: int, timeout_s: float, socket_timeout_s: float | None,
           prefix: str) -> Replication | None:
        """The setting for ``create_pool(wait_replicas=, wait_timeout=)``; None for 0."""
        # (one past what WAIT takes failed every enqueue after writing the job)
        check_whole("wait_replicas", replicas, 0, MAX_REPLICAS)
        if not replicas:
            return None
        if not (isinstance(timeout_s, int | float) and 0 < timeout_s < float("inf")):
            raise ConfigurationError(f"wait_timeout must be a number of seconds above 0, "
                                     f"not {timeout_s!r}")
        if socket_timeout_s is not None and timeout_s >= socket_timeout_s:
            raise ConfigurationError(
                f"wait_timeout ({timeout_s:g} s) must be shorter than the pool's timeout "
                f"({socket_timeout_s:g} s), or the WAIT reply would never be read")
        return cls(replicas, max(1, round(timeout_s * 1000)), f"{prefix}:replicated")

    async def run(self, client: Redis, calls: Sequence[s.Call], job_ids: Sequence[str]
                  ) -> list[Any]:
        """Run the enqueue script calls, then WAIT, in one pipeline; the scripts' replies.

        Raises ``NotReplicated`` (naming ``job_ids``) when fewer replicas acknowledged in
        time, after every call has run."""
        results, acked = await self._pipeline(client, calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # a Redis restart (or a new master) emptied the script cache
            for script in {calls[i][0] for i in missing}:
                await client.script_load(script.source)
            again, acked = await self._pipeline(client, [calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self.replicas:
            raise NotReplicated(list(job_ids), int(acked), self.replicas,
                                self.timeout_ms / 1000)
        return results

    async def _pipeline(self, client: Redis, calls: Sequence[s.Call]) -> tuple[list[Any], Any]:
        pipe = client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        pipe.publish(self.channel, b"")
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        replies = list(await pipe.execute(raise_on_error=False))
        return replies[: len(calls)], replies[-1]
