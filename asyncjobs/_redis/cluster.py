"""Redis Cluster: the URL, the client, and what differs from one server.

A ``redis+cluster://`` URL (``rediss+cluster://`` for TLS) names one or more nodes of a
cluster: ``redis+cluster://[user:password@]host:port[,host2:port2...][/0][?options]``. Any
reachable node is enough; the client asks it for the slot map, sends each command to the
master of its key's slot, and follows MOVED and ASK replies and failovers itself (redis-py's
``RedisCluster``). Options are redis-py's URL options, as in a ``redis://`` URL.

What asyncjobs needs of a cluster, and how it gets it:

- every key of a queue carries the hash tag ``{<queue>}`` (``keys.Keys``), so each script
  touches one slot; queues spread over the masters by name;
- the worker registry (the ``workers`` sorted set and each worker's record) shares one slot,
  the sorted set's own name being the records' hash tag (``keys.GlobalKeys``), so the
  heartbeat is one script; the set of queue names is one key read alone;
- pipelines group their commands by slot (redis-py's cluster pipeline; scripts are sent as
  plain ``EVALSHA`` commands, which it routes by their first key);
- a blocking read waits on the node of its streams' slot, on a connection of its own
  (``watch.Reader``); streams of several slots are read one slot at a time
  (``slot_groups``);
- pub/sub is sharded when every master runs Redis 7.0 or later (``SPUBLISH`` inside the
  scripts, ``SSUBSCRIBE`` on the master of each channel's slot: ``pubsub``, ``sharded``),
  else the cluster's classic one (``PUBLISH`` reaches subscribers on every node).

One database only (0), as Redis Cluster has; ``create_pool(wait_replicas=...)`` is refused
on a cluster (``WAIT`` counts the replicas of one master only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import ConnectionPool, parse_url
from redis.crc import key_slot
from redis.exceptions import (
    ClusterError,
    MovedError,
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from .addresses import parse_address
from .url_options import check_query

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

CLUSTER_OUTAGE = (ClusterError, SlotNotCoveredError, MovedError, TryAgainError)
"""Errors of a cluster in motion (a failover, resharding, a slot with no master yet) that
redis-py's own retries did not cure: like an outage, tried again later."""
DEFAULT_PORT = 6379

UNREACHABLE = (RedisClusterUnreachableError,)
"""redis-py's error (from 8.2) for a cluster none of whose nodes could be reached, raised
by a command or pipeline as well as by the first slot map: a ``RedisClusterException``, not
a ``ConnectionError``. ``_Cluster`` raises a ``ConnectionError`` instead (an outage)."""


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.lower().startswith(CLUSTER_SCHEMES)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes and the connection options of a cluster URL. Raises ``ValueError``
    saying what is wrong (one line)."""
    if not is_cluster_url(url):
        raise ValueError(f"not a {CLUSTER_SCHEMES[0]} URL")
    scheme, _, rest = url.partition("://")
    tls = scheme.lower().startswith("rediss")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has one database, 0: not {path.strip('/')!r}")
    nodes = [parse_address(h, default_port=DEFAULT_PORT, what="cluster node",
                           example="host:7000,host2:7001") for h in hosts.split(",")]
    user = f"{userinfo}@" if userinfo else ""
    base = "rediss" if tls else "redis"
    check_query(query, "cluster-tls" if tls else "cluster")
    options: dict[str, Any] = dict(parse_url(f"{base}://{user}cluster-node:1/0?{query}"))
    if options.get("db", 0) != 0:
        raise ValueError(f"a Redis Cluster has one database, 0: not {options['db']}")
    for key in ("host", "port", "db"):
        options.pop(key, None)
    options.pop("connection_class", None)
    if tls:
        options["ssl"] = True
    return nodes, options


def make_cluster(nodes: list[tuple[str, int]], settings: Mapping[str, Any],
                 connection_class: type[Any], tls_connection_class: type[Any]) -> Redis:
    """A cluster client (typed as ``Redis``: it takes the same commands, and the few places
    that differ check ``is_cluster``). ``settings`` are connection options as a
    ``redis://`` client gets them; the connections are asyncjobs's own classes."""
    options = {k: v for k, v in settings.items()
               if k not in ("retry", "timeout", "connection_class")}
    tls = bool(options.get("ssl"))
    ours = tls_connection_class if tls else connection_class
    client = _Cluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **options)
    # redis-py fixes the connection class (Connection or SSLConnection); ours are those
    # classes with uvloop's write errors translated and hiredis packing: set it before
    # any node is made from these settings.
    manager = client.nodes_manager
    manager.connection_kwargs["connection_class"] = ours
    for node in manager.startup_nodes.values():
        node.connection_class = ours
    return cast(Redis, client)


class _Cluster(RedisCluster):
    """redis-py's cluster client, but for the errors of a cluster out of reach: redis-py
    raises a bare ``RedisClusterException`` when it cannot learn the slot map (no startup
    node reachable, slots not all covered, nodes disagreeing), and from 8.2 its subclass
    ``RedisClusterUnreachableError`` (``UNREACHABLE``) from any command or pipeline once no
    node answers. Those are an outage, for the pool, the worker and the CLI as for one
    server out of reach: raised as a ``ConnectionError``. Its other subclasses (such as
    ``SlotNotCoveredError``), and a bare one from a command (keys of several slots), are
    left alone."""

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            if type(exc) is not RedisClusterException and not isinstance(exc, UNREACHABLE):
                raise
            raise RedisConnectionError(str(exc)) from exc

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except UNREACHABLE as exc:
            raise RedisConnectionError(str(exc)) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:  # refused by redis-py's own
            return super().pipeline(transaction, shard_hint)
        return _Pipeline(self, transaction)  # type: ignore[abstract]


class _Pipeline(ClusterPipeline):
    """redis-py's cluster pipeline, whose ``RedisClusterUnreachableError`` is raised as a
    ``ConnectionError`` (see ``_Cluster``)."""

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except UNREACHABLE as exc:
            raise RedisConnectionError(str(exc)) from exc


def slot_groups(keys: Mapping[str, str]) -> list[dict[str, str]]:
    """``keys`` (key -> value) split by cluster slot, in the order each slot first
    appears: a command may only name keys of one slot."""
    groups: dict[int, dict[str, str]] = {}
    for key, value in keys.items():
        groups.setdefault(key_slot(key.encode()), {})[key] = value
    return list(groups.values())


def node_client(client: Any, key: str, **options: Any) -> Redis:
    """A client of one connection to the master that holds ``key``'s slot now (by the
    slot map of ``client``, a connected cluster client), with its connection settings but
    ``options``: for a blocking read. Closing it closes its connection."""
    return client_of(client.get_node_from_key(key), **options)


def client_of(node: ClusterNode, **options: Any) -> Redis:
    """A client of one connection to ``node`` (a ``ClusterNode`` of a connected cluster
    client's slot map), with its connection settings but ``options``. Closing it closes its
    connection."""
    pool = ConnectionPool(connection_class=node.connection_class, max_connections=1,
                          **{**node.connection_kwargs, **options})
    single = Redis(connection_pool=pool, single_connection_client=True)
    single.auto_close_connection_pool = True
    return single
