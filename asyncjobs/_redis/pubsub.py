"""Which pub/sub a client uses, decided once per client, the same way by every process.

asyncjobs publishes notices (a job's end, an abort, a scheduler wake-up, a leader lease
given up) on channels under its queue's hash tag (``keys.Keys``), so each channel is in its
queue's slot. On a Redis Cluster whose masters all run Redis 7.0 or later, it uses sharded
pub/sub: scripts publish with ``SPUBLISH`` (``scripts.py`` loads a variant of each script
for that), which reaches only the nodes of the channel's shard, and subscribers use
``SSUBSCRIBE`` on the master of each channel's slot (``sharded.ShardedPubSub``).
Everywhere else it uses classic ``PUBLISH``/``SUBSCRIBE``: one server, Sentinel, the fake
Redis, and a cluster with any master older than 7.0 or whose version it cannot read (a
mixed-version cluster, ``INFO`` refused): there ``PUBLISH`` reaches every node over the
cluster bus.

Producers and workers apply the same rule (``sharded_rule``) to the same facts (every
master's ``redis_version``), so both sides agree. It is read when a client first needs it
(the start-up checks, or the first script call) and kept for the client's life: a cluster
upgraded under running processes is used sharded by the processes started after, and the
others go on publishing and listening classically, which still works. A cluster must not go
back below 7.0 under processes that use it sharded. A notice missed while the two sides
disagree (or while a subscription is moved) is never a lost job ending: waiters re-check
the job's state now and then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .cluster import is_cluster

__all__ = ["RESUBSCRIBED", "Subscriber", "publish", "pubsub_for", "sharded_pubsub",
           "sharded_rule"]

RESUBSCRIBED = "resubscribed"
"""The ``type`` of the message a ``ShardedPubSub`` returns when it made lost subscriptions
again: a notice may have been missed meanwhile."""

Failed = Callable[[BaseException], float]
"""Told of a failed attempt to subscribe; returns the seconds to wait before the next."""

SHARDED_SINCE = (7, 0)
"""The first Redis version with sharded pub/sub (``SPUBLISH``, ``SSUBSCRIBE``)."""

_ATTRIBUTE = "_asyncjobs_sharded_pubsub"
"""Where the decision is kept on a client."""


class Subscriber(Protocol):
    """The part of redis-py's ``PubSub`` that asyncjobs uses. ``get_message`` returns
    ``{"type": "message", "channel": ..., "data": ...}`` for a notice (bytes), ``None``
    after ``timeout`` seconds without one, and, from a ``ShardedPubSub`` only,
    ``{"type": RESUBSCRIBED, ...}`` after it moved subscriptions (see ``sharded``)."""

    @property
    def connection(self) -> Any:
        """The connection of a classic PubSub (None before its first subscribe, and
        always for a ``ShardedPubSub``, which has one per node)."""

    async def subscribe(self, *channels: Any) -> Any:
        """Subscribe to ``channels``."""

    async def unsubscribe(self, *channels: Any) -> Any:
        """Unsubscribe from ``channels``."""

    async def get_message(self, ignore_subscribe_messages: bool = ...,
                          timeout: float | None = ...) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds."""

    async def aclose(self) -> None:
        """Close the connections."""


def parse_version(text: object) -> tuple[int, int] | None:
    """(major, minor) of a ``redis_version`` as INFO gives it; None for anything else."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if not isinstance(text, str):
        return None
    parts = text.strip().split(".")
    if len(parts) < 2 or not all(p.isascii() and p.isdigit() and len(p) < 10
                                 for p in parts[:2]):
        return None
    return int(parts[0]), int(parts[1])


def sharded_rule(cluster: bool, versions: Iterable[object]) -> bool:
    """Whether to use sharded pub/sub: on a cluster whose masters (``versions``: each one's
    ``redis_version``, None when it would not say) all run Redis 7.0 or later."""
    if not cluster:
        return False
    parsed = [parse_version(v) for v in versions]
    return bool(parsed) and all(v is not None and v >= SHARDED_SINCE for v in parsed)


async def sharded_pubsub(client: Redis) -> bool:
    """The rule for ``client``, read from the server the first time (``INFO server`` on
    every master of a cluster; nothing for one server) and kept on the client. A master out
    of reach raises the connection error, and nothing is kept: the next call asks again."""
    known = getattr(client, _ATTRIBUTE, None)
    if known is not None:
        return bool(known)
    if not is_cluster(client):
        decided = False
    else:
        cluster: Any = client
        await cluster.initialize()
        versions = [await _version(cluster, node) for node in cluster.get_primaries()]
        decided = sharded_rule(True, versions)
    setattr(client, _ATTRIBUTE, decided)
    return decided


async def _version(cluster: Any, node: Any) -> object:
    try:
        info = await cluster.info("server", target_nodes=node)
    except ResponseError:  # INFO refused (an ACL): unknown, so the fallback
        return None
    return info.get("redis_version") if isinstance(info, dict) else None


async def publish(client: Redis, channel: str, message: str | bytes | int) -> None:
    """Publish ``message`` on ``channel`` as the scripts of ``client`` do (``SPUBLISH`` when
    it uses sharded pub/sub)."""
    if await sharded_pubsub(client):
        await client.spublish(channel, message)
    else:
        await client.publish(channel, message)


async def pubsub_for(client: Redis, on_failure: Failed | None = None,
                     on_recovery: Callable[[], None] | None = None) -> Subscriber:
    """A subscriber for ``client``'s notices: a ``ShardedPubSub`` when it uses sharded
    pub/sub (``on_failure``, ``on_recovery``: see there), else redis-py's ``PubSub``
    (subscription replies left out). Raises a connection error when the rule cannot be
    read (``sharded_pubsub``)."""
    if await sharded_pubsub(client):
        from .sharded import ShardedPubSub  # only a cluster's processes need it

        return ShardedPubSub(client, on_failure, on_recovery)
    return cast(Subscriber, client.pubsub(ignore_subscribe_messages=True))
