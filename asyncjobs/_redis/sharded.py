"""Sharded pub/sub on a Redis Cluster: ``SSUBSCRIBE`` on the master of each channel's slot,
every node read at once.

redis-py's cluster client reads sharded messages one node after another, waiting the whole
timeout on each, which is no use for waking a waiter at once. ``ShardedPubSub`` offers the
part of redis-py's ``PubSub`` that asyncjobs uses (``pubsub.Subscriber``) instead:

- channels are grouped by slot (``SSUBSCRIBE`` takes channels of one slot), and each slot's
  channels are subscribed on the master that holds the slot now, by the cluster client's
  slot map; one pub/sub connection per node (``client_of``; kept when its last channel is
  unsubscribed, for the next one; closed when it fails, or when a resubscription leaves it
  without channels), each read by a task of its own that puts every message into one
  queue: ``get_message`` returns a message from any node as soon as it arrives, as
  ``{"type": "message", "channel": ..., "data": ...}`` like a classic one;
- a subscription is lost when Redis unsubscribes it (a server-side ``sunsubscribe``: its
  slot moved to another master), when its node's connection fails (a node killed, a
  failover), or when subscribing failed (a node out of reach, a ``MOVED`` reply). Lost
  channels are subscribed again in the background, after the slot map is read afresh, on
  whichever master holds their slot then, backing off between failed attempts; after each
  attempt that subscribed some, ``get_message`` returns ``{"type": RESUBSCRIBED}`` once:
  a notice may have been missed meanwhile, so the caller re-checks whatever it waits for.
  ``subscribe`` and ``get_message`` therefore never raise for an outage; ``on_failure`` is
  told of each failed attempt (and says how long to wait before the next), ``on_recovery``
  of the attempt that subscribed everything again.

The node connections never reconnect in place (no retries): a failed one is closed and its
channels go through the path above, so every loss is seen and signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from .cluster import client_of
from .pubsub import RESUBSCRIBED, Failed

log = logging.getLogger("asyncjobs.pool")

_RETRY_S = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits before each attempt to subscribe lost channels again (the last one repeats); the
first is short: a slot that moved is served by its new master already."""

_READ_S = 5.0
"""How long a node's reader waits for a message in one call."""

def by_slot(channels: Iterable[bytes]) -> dict[int, list[bytes]]:
    """``channels`` grouped by cluster slot, each group in the order given."""
    groups: dict[int, list[bytes]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel), []).append(channel)
    return groups


def by_node(channels: Iterable[bytes], owner: Callable[[int], str]
            ) -> dict[str, dict[int, list[bytes]]]:
    """``channels`` grouped by the node that ``owner`` says holds each slot, then by slot
    (one ``SSUBSCRIBE`` each). ``owner`` may raise (a slot no master holds)."""
    nodes: dict[str, dict[int, list[bytes]]] = {}
    for slot, group in by_slot(channels).items():
        nodes.setdefault(owner(slot), {})[slot] = group
    return nodes


def _bytes(channel: str | bytes) -> bytes:
    return channel.encode() if isinstance(channel, str) else channel


@dataclass(eq=False)
class _Shard:
    """One node's pub/sub connection, the channels subscribed on it, and its reader (which
    closes the connection when it ends, however it ends: cancelling it closes the shard)."""

    name: str
    client: Redis
    pubsub: PubSub
    channels: set[bytes] = field(default_factory=set)
    leaving: Counter[bytes] = field(default_factory=Counter)
    """Our SUNSUBSCRIBEs not yet answered, by channel: their replies are no slot move."""
    started: asyncio.Event = field(default_factory=asyncio.Event)
    """Set after each SSUBSCRIBE is sent: the reader reads while anything is subscribed,
    and waits for this event while nothing is."""
    reader: asyncio.Task[None] | None = None


class ShardedPubSub:
    """Sharded pub/sub over every master of ``cluster`` (a cluster client); see the module
    docstring."""

    connection: Any = None
    """No connection of its own (``pubsub.Subscriber``): one per node."""

    def __init__(self, cluster: Redis, on_failure: Failed | None = None,
                 on_recovery: Callable[[], None] | None = None) -> None:
        self._cluster: Any = cluster
        self._on_failure = on_failure
        self._on_recovery = on_recovery
        self._wanted: set[bytes] = set()
        self._shards: dict[str, _Shard] = {}
        self._lost: set[bytes] = set()
        self._error: BaseException | None = None  # the latest failure to subscribe
        self._failures = 0
        self._delay = _RETRY_S[0]  # the wait before the next attempt to subscribe again
        self._pending: set[bytes] = set()  # subscribed again, not yet confirmed by Redis
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._repair: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def channels(self) -> dict[bytes, str]:
        """Each channel subscribed now -> the node it is subscribed on ("host:port");
        channels being subscribed again are left out."""
        return {c: s.name for s in self._shards.values() for c in s.channels}

    async def subscribe(self, *channels: str | bytes) -> None:
        """Subscribe to ``channels`` on the masters of their slots (those that cannot be now
        are subscribed in the background: see the module docstring)."""
        wanted = [_bytes(c) for c in channels]
        fresh = set(wanted) - self._wanted
        self._wanted.update(wanted)
        try:
            async with self._lock:
                await self._place(wanted)
        except BaseException:  # cancelled: those not wanted before are not wanted now
            self._wanted -= fresh
            self._lost -= fresh
            raise
        self._kick()

    async def unsubscribe(self, *channels: str | bytes) -> None:
        """Unsubscribe from ``channels`` (a node's connection stays open for the next
        ones)."""
        gone = {_bytes(c) for c in channels}
        self._wanted -= gone
        self._lost -= gone
        self._pending -= gone
        async with self._lock:
            for shard in list(self._shards.values()):
                mine = shard.channels & gone
                if not mine:
                    continue
                shard.channels -= mine
                for group in by_slot(mine).values():
                    shard.leaving.update(group)
                    try:
                        await shard.pubsub.sunsubscribe(*group)
                    except Exception as exc:  # the reader sees the connection fail too
                        log.debug("sunsubscribe on %s failed: %s", shard.name, exc)

    async def get_message(self, ignore_subscribe_messages: bool = True,
                          timeout: float | None = 0.0) -> dict[str, Any] | None:
        """The next message from any node (or ``RESUBSCRIBED``), or None after ``timeout``
        seconds (None: wait as long as it takes). Subscription replies are never
        returned."""
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait() if not self._queue.empty() else None
        try:  # not wait_for: on 3.11 it swallows a cancel that meets a message
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        """Stop subscribing again and close every node's connection. Every task is
        cancelled before the first wait, so a close cancelled itself still closes all."""
        self._closed = True
        self._wanted.clear()
        self._lost.clear()
        self._pending.clear()
        tasks = [s.reader for s in self._shards.values() if s.reader is not None]
        if self._repair is not None:
            tasks.append(self._repair)
        self._shards.clear()
        for task in tasks:
            task.cancel()
        if tasks:  # wait() raises nothing of theirs, and a cancel of this close passes
            await asyncio.wait(tasks)

    async def _place(self, channels: Iterable[bytes]) -> None:
        """Subscribe ``channels`` where their slots are now; those that failed are lost.
        Called under the lock."""
        try:
            nodes = by_node(channels, self._owner)
        except Exception as exc:  # a slot no master holds: the slot map is read again
            self._lose(channels, exc)
            return
        for name, slots in nodes.items():
            for group in slots.values():
                if self._closed:  # closed meanwhile: nothing opened that none would close
                    return
                shard = self._shards.get(name) or self._open(name)
                if shard is None:
                    self._lose(group, ConnectionError(f"no node {name} in the slot map"))
                    continue
                shard.channels.update(group)  # before: a failure meanwhile loses them
                try:
                    await shard.pubsub.ssubscribe(*group)
                except Exception as exc:  # the connection is of no use: the shard goes
                    self._drop(shard, exc)
                else:
                    if self._shards.get(name) is not shard:  # its connection failed meanwhile
                        self._lose(group, ConnectionError(f"{name} went away"))
                    shard.started.set()

    def _owner(self, slot: int) -> str:
        node = self._cluster.nodes_manager.get_node_from_slot(slot)
        return str(node.name)

    def _open(self, name: str) -> _Shard | None:
        """A shard for node ``name`` (not connected yet), or None if the slot map has no
        such node."""
        node = self._cluster.get_node(node_name=name)
        if node is None:
            return None
        client = client_of(node, retry=Retry(NoBackoff(), 0))
        shard = _Shard(name, client, client.pubsub())
        self._shards[name] = shard
        shard.reader = asyncio.create_task(self._read(shard), name="asyncjobs-sharded")
        return shard

    async def _read(self, shard: _Shard) -> None:
        try:
            while True:
                if not shard.pubsub.subscribed:  # nothing yet, or nothing any more
                    shard.started.clear()
                    await shard.started.wait()
                    continue
                message = await shard.pubsub.get_message(timeout=_READ_S)
                if message is None:
                    self._check_owners(shard)
                    continue
                kind = message.get("type")
                if kind == "smessage":
                    self._queue.put_nowait({"type": "message", "pattern": None,
                                            "channel": message["channel"],
                                            "data": message["data"]})
                elif kind == "ssubscribe" and message["channel"] in self._pending:
                    self._pending.discard(message["channel"])
                    if not self._pending and not self._lost:
                        self._recovered()
                elif kind == "sunsubscribe" and shard.leaving[message["channel"]] > 0:
                    shard.leaving[message["channel"]] -= 1  # the reply to our own
                    if not shard.leaving[message["channel"]]:
                        del shard.leaving[message["channel"]]
                elif kind == "sunsubscribe" and message["channel"] in shard.channels:
                    self._moved(shard, message["channel"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("sharded pub/sub connection to %s failed: %s", shard.name, exc)
            if shard.channels & self._pending:  # refused (NOPERM) or cut before confirmed:
                self._pending -= shard.channels  # a failed attempt, the next one waits more
                self._failed(exc)
            self._drop(shard, exc)
        finally:
            await _dispose(shard)

    def _drop(self, shard: _Shard, exc: BaseException) -> None:
        """``shard``'s connection failed: its channels are lost, and it goes (its reader
        closes the connection)."""
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        channels, shard.channels = set(shard.channels), set()
        self._lose(channels, exc)
        self._kick()
        if shard.reader is not None and shard.reader is not asyncio.current_task():
            shard.reader.cancel()

    def _check_owners(self, shard: _Shard) -> None:
        """Channels whose slot the slot map now gives another master are moved there: a
        failover this connection never saw (its node hung: no reply, no error, no
        SUNSUBSCRIBE; the cluster client learns the new master from its own commands)."""
        for slot, group in by_slot(sorted(shard.channels)).items():
            try:
                owner = self._owner(slot)
            except Exception:  # a slot no master holds now: the next look decides
                continue
            if owner != shard.name:
                for channel in group:
                    self._moved(shard, channel)

    def _moved(self, shard: _Shard, channel: bytes) -> None:
        """Redis unsubscribed ``channel`` (its slot moved away from this node)."""
        log.debug("%r unsubscribed by %s: its slot moved", channel, shard.name)
        shard.channels.discard(channel)
        shard.pubsub.shard_channels.pop(channel, None)
        self._lose([channel], ConnectionError(f"slot of {channel!r} left {shard.name}"))
        self._kick()

    def _lose(self, channels: Iterable[bytes], exc: BaseException) -> None:
        channels = set(channels)
        self._lost.update(c for c in channels if c in self._wanted)
        self._pending -= channels
        self._error = exc

    def _kick(self) -> None:
        """Start subscribing lost channels again, unless that is under way."""
        if self._lost and not self._closed and (self._repair is None or self._repair.done()):
            self._repair = asyncio.create_task(self._repairing(), name="asyncjobs-resubscribe")

    async def _repairing(self) -> None:
        delay = self._delay
        while self._lost and not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._cluster.nodes_manager.initialize()  # read the slot map again
            except Exception as exc:
                delay = self._failed(exc)
                continue
            async with self._lock:
                lost, self._lost = self._lost & self._wanted, set()
                if not lost:
                    break
                await self._place(lost)
                for shard in [s for s in self._shards.values() if not s.channels]:
                    await self._close_shard(shard)  # a node that lost every channel (its
                    # slots moved away, or it left the cluster)
            if lost - self._lost:  # some subscribed again (others may be lost meanwhile)
                self._queue.put_nowait({"type": RESUBSCRIBED, "pattern": None,
                                        "channel": None, "data": None})
            # recovered once Redis confirms them (a refused SSUBSCRIBE fails the reader)
            self._pending |= lost - self._lost
            if self._lost:
                delay = self._failed(self._error or ConnectionError("subscribe failed"))
            elif not self._pending:
                self._recovered()

    def _recovered(self) -> None:
        self._failures, self._delay = 0, _RETRY_S[0]
        if self._on_recovery is not None:
            self._on_recovery()

    def _failed(self, exc: BaseException) -> float:
        self._failures += 1
        self._delay = _RETRY_S[min(self._failures, len(_RETRY_S) - 1)]
        if self._on_failure is not None:  # its wait, never shorter than our own: a worker's
            # outage tracker is reset by its other loops' successes meanwhile
            self._delay = max(self._delay, self._on_failure(exc))
        else:
            log.debug("sharded pub/sub: subscribing again failed: %s", exc)
        return self._delay

    async def _close_shard(self, shard: _Shard) -> None:
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        if shard.reader is not None:
            shard.reader.cancel()
            await asyncio.wait([shard.reader])


async def _dispose(shard: _Shard) -> None:
    with contextlib.suppress(Exception):
        await shard.pubsub.aclose()
    with contextlib.suppress(Exception):
        await shard.client.aclose()
