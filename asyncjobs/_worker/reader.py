"""The fetch loop's blocking connection: the ``Reader`` (a connection of its own whose
server-side client id is known, so a blocked read can be ended by ``CLIENT UNBLOCK``
instead of a cancel), and on a Redis Cluster the ``ClusterReader``: a ``Reader`` per slot
read, on the node that holds the slot.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import AskError, MovedError, RedisError, ResponseError

from .._redis.cluster import is_cluster, node_client, slot_groups
from .._redis.pubsub import sharded_pubsub
from .._redis.scripts import Call

log = logging.getLogger("asyncjobs.worker")

_ASKED_PAUSE_S = 0.05
"""The pause before a read answered ASK (its slot half moved) says "woken"."""

_CLOSE_WAIT_S = 5.0
"""How long ``ClusterReader.close`` waits for its cancelled reads to end."""

_UNBLOCK_AGAIN_S = 0.5
"""How long a ClusterReader waits for its other reads to end after a CLIENT UNBLOCK
before sending another."""


class Reader:
    """The worker's blocking connection, and its client id on the server. ``single`` is a
    client of one connection, of its own (``reader_for`` makes the right one)."""

    def __init__(self, single: Redis) -> None:
        self.client = single
        self.client_id: int | None = None
        self._hooked = False

    async def _on_connect(self, connection: Any) -> None:
        try:
            await connection.send_command("CLIENT", "ID")
            self.client_id = int(await connection.read_response())
        except (ResponseError, ValueError, TypeError):  # CLIENT denied (ACL, proxy)
            self.client_id = None

    async def ready(self) -> None:
        """Take the connection from the pool, connected, and learn its client id (again
        after a reconnect): done before a read, so that no blocking read ever waits on a
        connection still being set up."""
        if not self._hooked:
            await self.client.initialize()
            connection: Any = self.client.connection
            await self._on_connect(connection)
            connection.register_connect_callback(self._on_connect)  # a new id per reconnect
            self._hooked = True
        elif not self.client.connection.is_connected:  # type: ignore[union-attr]
            await self.client.connection.connect()  # type: ignore[union-attr]

    async def wait(self, newest: dict[str, str], block_ms: int) -> bool:
        """Block up to ``block_ms`` until a stream of ``newest`` (key -> newest entry id
        seen) gets an entry after that id; True when one did. Nothing is delivered."""
        if not self._hooked:
            await self.ready()
        streams: Any = newest
        reply: Any = await self.client.xread(streams, count=1, block=block_ms)
        return bool(reply)

    async def wait_then_run(self, newest: dict[str, str], block_ms: int,
                            call: Call) -> tuple[bool | ResponseError, Any]:
        """As ``wait``, with a script call sent right behind the read on the same
        connection: Redis runs it the moment the read ends (woken, timed out or unblocked),
        without a round trip back to the worker first. Returns the read's answer (or the
        error Redis gave it) and the script's reply (or its error, ``NoScriptError``
        included: it was not loaded). Redis still runs the script when this wait is cut
        short by ``unblock``; a wait cancelled in the middle closes the connection (as
        redis-py does), and the script then runs or not: whatever it started stays this
        consumer's, handed back at shutdown or reclaimed."""
        if not self._hooked:
            await self.ready()
        script, keys, args = call
        script = script.variant(await sharded_pubsub(self.client))
        read: list[Any] = ["XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *newest,
                           *newest.values()]
        run: list[Any] = ["EVALSHA", script.sha, len(keys), *keys, *args]
        connection: Any = self.client.connection
        # The reader's connection serves only the fetch loop: nothing else writes to it
        # between this write and the two reads.
        await connection.send_packed_command(connection.pack_commands([read, run]))
        replies: list[Any] = []
        for _ in range(2):
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:  # the connection is still in step: read on
                replies.append(exc)
        woke, ran = replies
        return (woke if isinstance(woke, ResponseError) else bool(woke)), ran

    async def unblock(self, client: Redis) -> bool:
        """End a read of this connection still blocked in Redis (best effort); True when
        one was."""
        if self.client_id is not None:
            try:
                if is_cluster(client):  # to the node this connection is on
                    connection: Any = self.client.connection
                    cluster: Any = client
                    node = cluster.get_node(host=connection.host, port=connection.port)
                    return node is not None and bool(await cluster.execute_command(
                        "CLIENT UNBLOCK", self.client_id, target_nodes=node))
                return bool(await client.client_unblock(self.client_id))
            except (RedisError, OSError) as exc:
                log.debug("could not unblock reader %s: %s", self.client_id, exc)
        return False

    async def close(self) -> None:
        """Give the connection back."""
        await self.client.aclose()


class ClusterReader:
    """The blocking reads of a worker on a Redis Cluster. A read may only name keys of one
    slot, so streams of several slots (queues) are read by one ``Reader`` each, at once, on
    a connection to the master of that slot; the first that wakes ends the others (CLIENT
    UNBLOCK, sent to their node). A read answered MOVED or ASK (its slot moved: resharding,
    a failover) drops its ``Reader`` and says "woken": the caller takes again through the
    cluster client, which follows the move, and the next read goes to the new node (the
    client's slot map is told of the move). A read answered ASK (its stream already moved,
    the slot not yet) says "woken" after a short pause."""

    def __init__(self, cluster: Redis, socket_timeout: float) -> None:
        self.cluster = cluster
        self.socket_timeout = socket_timeout
        self.readers: dict[str, Reader] = {}
        """One per slot read, by its first stream key."""
        self._ending = False  # a read of this wait woke: the others are not sent
        self._live: set[asyncio.Future[bool]] = set()
        """Reads of several slots at once (tasks) not yet ended: a wait cancelled midway
        leaves them ending, and ``close`` waits for them."""

    @property
    def client_id(self) -> int | None:
        """Some id (the Watch checks that Redis gives ids): of any connection, or 0."""
        return next((r.client_id for r in self.readers.values() if r.client_id), 0)

    async def ready(self) -> None:
        """Nothing to do ahead: each slot's connection is made before its first read."""

    async def wait(self, newest: dict[str, str], block_ms: int) -> bool:
        """As ``Reader.wait``, for streams of any slots."""
        groups = slot_groups(newest)
        self._ending = False
        if len(groups) == 1:
            return await self._read(groups[0], block_ms)
        reads = [asyncio.ensure_future(self._read(g, block_ms)) for g in groups]
        for read in reads:
            self._live.add(read)
            read.add_done_callback(self._ended)
        try:
            _, pending = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            # Reads not sent yet are not sent; those sent are unblocked, again each
            # _UNBLOCK_AGAIN_S while one is left (an UNBLOCK may reach its node before
            # the read it was meant for).
            self._ending = True
            while pending:
                for group, read in zip(groups, reads, strict=True):
                    if read in pending:
                        await self._unblock_one(next(iter(group)))
                _, pending = await asyncio.wait(pending, timeout=_UNBLOCK_AGAIN_S)
        finally:
            for read in reads:
                if not read.done():  # only when this wait itself is cancelled
                    read.cancel()
        woke = False
        failure: BaseException | None = None
        for read in reads:
            if read.cancelled():
                continue
            if read.exception() is not None:
                failure = failure or read.exception()
            elif read.result():
                woke = True
        if failure is not None and not woke:
            raise failure
        return woke

    def _ended(self, read: asyncio.Future[bool]) -> None:
        """A read's task ended. Its outcome is retrieved here: ``wait`` reads it too, but a
        wait cancelled midway does not, and asyncio would log an error for it."""
        self._live.discard(read)
        if not read.cancelled():
            read.exception()

    async def _read(self, streams: dict[str, str], block_ms: int) -> bool:
        key = next(iter(streams))
        reader = self.readers.get(key)
        if reader is None:
            reader = self.readers[key] = Reader(
                node_client(self.cluster, key, socket_timeout=self.socket_timeout))
        try:
            await reader.ready()
            if self._ending:  # another slot's read woke meanwhile
                return False
            # nothing yields between this check and the read's write: an UNBLOCK sent
            # after the check is sent after the read
            return await reader.wait(streams, block_ms)
        except MovedError as exc:  # the slot is on another master now (its text, as
            await self._moved(exc)  # redis-py gives it, has no "MOVED" in it)
            await self._drop(key)
            return True
        except AskError:  # the slot is being moved and this stream already went: the
            await asyncio.sleep(_ASKED_PAUSE_S)  # take (which follows ASK) is tried
            return True                          # again, not in a tight loop
        except (RedisError, OSError):
            await self._drop(key)  # the next read connects again, to the slot's node then
            raise

    async def _moved(self, exc: MovedError) -> None:
        """Tell the cluster client's slot map where the slot went, so that the next
        read's connection is made to the new master (as redis-py does for its own
        commands)."""
        try:
            cluster: Any = self.cluster
            await cluster.nodes_manager.move_slot(exc)
        except Exception as failure:  # pragma: no cover - the next take refreshes the map
            log.debug("could not note a moved slot: %s", failure)

    async def _drop(self, key: str) -> None:
        reader = self.readers.pop(key, None)
        if reader is not None:
            try:
                await reader.close()
            except (RedisError, OSError) as exc:  # pragma: no cover - closing a broken one
                log.debug("closing a cluster reader failed: %s", exc)

    async def _unblock_one(self, key: str) -> None:
        reader = self.readers.get(key)
        if reader is not None:
            await reader.unblock(self.cluster)

    async def unblock(self, client: Redis) -> bool:
        """End every read still blocked (best effort); True when one was."""
        ended = False
        for reader in list(self.readers.values()):
            ended = await reader.unblock(client) or ended
        return ended

    async def close(self) -> None:
        """Close every connection, once no read is left running: a read of a wait cancelled
        midway is cancelled, not yet ended, and one still connecting would otherwise make
        its connection after the close and leave it open."""
        if self._live:
            for read in self._live:
                read.cancel()
            _, left = await asyncio.wait(list(self._live), timeout=_CLOSE_WAIT_S)
            if left:  # pragma: no cover - a cancelled read ends at its next step
                log.debug("%d cluster reads did not end on their cancellation", len(left))
        for key in list(self.readers):
            await self._drop(key)


AnyReader = Reader | ClusterReader


def reader_for(client: Redis, blocking: Redis, socket_timeout: float) -> AnyReader:
    """A blocking reader: one connection taken from the pool of the worker's ``blocking``
    client, or, on a cluster, a ``ClusterReader`` that finds the nodes through the
    worker's own ``client`` (already connected, its slot map known) and gives its
    connections ``socket_timeout`` (longer than any read blocks)."""
    if is_cluster(client):
        return ClusterReader(client, socket_timeout)
    return Reader(Redis(connection_pool=blocking.connection_pool,
                        single_connection_client=True))
