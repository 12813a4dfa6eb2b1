"""A Redis Cluster the test suite starts itself: ``masters`` masters (and ``replicas``
replicas of each), every one a ``redis-server --cluster-enabled yes`` on a free port of
127.0.0.1 in a temporary directory (never the machine's 6379), joined by
``redis-cli --cluster create``. ``ClusterSetup`` waits until every node says the cluster is
ok and knows every slot's master, and tears everything down.

Nodes are tuned for tests: a master is judged failed after 1 s without an answer
(``cluster-node-timeout``), so a replica takes over within a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from types import TracebackType

from asyncjobs._redis.embedded import RedisServer, free_port

from .sentinel import command, info

NODE_TIMEOUT_MS = 1000


class ClusterNodeServer(RedisServer):
    """One node: ``redis-server`` with cluster mode on and its own nodes.conf."""

    def __init__(self) -> None:
        super().__init__(extra_args=self._cluster_args())

    def new_ports(self) -> None:
        """The client port and the bus port, both anew (either may have been taken)."""
        super().new_ports()
        self.extra_args = self._cluster_args()

    @staticmethod
    def _cluster_args() -> tuple[str, ...]:
        return (
            # the bus port given, not port + 10000 (which may be out of range or taken)
            "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--repl-diskless-sync-delay", "0")


def cluster_info(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of a node as a dict ({} when it does not answer)."""
    try:
        text = command(port, "CLUSTER", "INFO", timeout_s=1.0)
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


class ClusterSetup:
    """``masters`` masters with ``replicas`` replicas each; ``url`` is the cluster URL."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.nodes = [ClusterNodeServer() for _ in range(masters * (1 + replicas))]
        self.masters = masters
        self.replicas = replicas

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming every node (any one would do)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def ports(self) -> list[int]:
        """Every node's port."""
        return [n.port for n in self.nodes]

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the nodes, create the cluster, wait until it is ok everywhere."""
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not on PATH (it comes with redis-server)")
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: "
                               f"{created.stdout[-2000:]}{created.stderr[-2000:]}")
        self.wait_ok(timeout_s)

    def wait_ok(self, timeout_s: float = 30.0, *, alive: list[int] | None = None) -> None:
        """Wait until every node of ``alive`` (default: all) says ``cluster_state:ok``
        with all 16384 slots served, and every replica is in sync."""
        ports = alive if alive is not None else self.ports
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [cluster_info(p) for p in ports]
            if all(s.get("cluster_state") == "ok" and s.get("cluster_slots_ok") == "16384"
                   and s.get("cluster_known_nodes") == str(len(self.nodes))
                   for s in states) and self._replicas_synced(ports):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the cluster was not ok within {timeout_s} s: "
                           f"{[cluster_info(p).get('cluster_state') for p in ports]}")

    def _replicas_synced(self, ports: list[int]) -> bool:
        for port in ports:
            replication = info(port, "replication")
            if replication.get("role") == "slave" \
                    and replication.get("master_link_status") != "up":
                return False
        return True

    def master_of(self, key: str) -> RedisServer:
        """The node that is the master of ``key``'s slot now."""
        reply = command(self.nodes[0].port, "CLUSTER", "KEYSLOT", key)
        slot = int(reply.strip().lstrip(":"))
        for node in self.nodes:
            if node.process is not None and _serves(node.port, slot):
                return node
        raise LookupError(f"no master serves slot {slot}")

    def close(self) -> None:
        """Stop every node and remove its directory."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> ClusterSetup:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _serves(port: int, slot: int) -> bool:
    """Whether the node on ``port`` is the master of ``slot`` (by ``CLUSTER NODES``)."""
    for line in command(port, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if len(fields) < 8 or "myself" not in fields[2] or "master" not in fields[2]:
            continue
        for part in fields[8:]:
            low, _, high = part.partition("-")
            if low.isdigit() and int(low) <= slot <= int(high or low):
                return True
    return False


def node_id(port: int) -> str:
    """A node's id (``CLUSTER MYID``)."""
    return command(port, "CLUSTER", "MYID").split("\r\n")[1]


def key_slot(port: int, key: str) -> int:
    """``CLUSTER KEYSLOT key``."""
    return int(command(port, "CLUSTER", "KEYSLOT", key).strip().lstrip(":"))


def migrate_slot(cluster: ClusterSetup, slot: int, source: RedisServer, target: RedisServer,
                 *, batch: int = 5, pause_s: float = 0.05) -> int:
    """Move ``slot`` from ``source`` to ``target`` as ``redis-cli --cluster reshard`` does
    (IMPORTING, MIGRATING, MIGRATE of its keys, SETSLOT NODE on every master), slowly:
    ``batch`` keys per MIGRATE and a pause between, so clients meet the slot half moved
    (ASK, TRYAGAIN). Returns the number of keys moved."""
    source_id, target_id = node_id(source.port), node_id(target.port)
    _ok(command(target.port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id))
    _ok(command(source.port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id))
    moved = 0
    give_up = time.monotonic() + 120  # a test that failed meanwhile must not hang its teardown
    while True:
        if time.monotonic() > give_up:
            raise RuntimeError(f"slot {slot} still holds keys after 120 s of migration")
        reply = command(source.port, "CLUSTER", "GETKEYSINSLOT", str(slot), str(batch))
        keys = [line for line in reply.split("\r\n")[1:] if line and not line.startswith("$")]
        if not keys:
            break
        _ok(command(source.port, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000",
                    "KEYS", *keys, timeout_s=10.0))
        moved += len(keys)
        time.sleep(pause_s)
    for node in cluster.nodes:
        if node.process is not None:
            _ok(command(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id))
    return moved


def _ok(reply: str) -> None:
    if not reply.startswith("+"):
        raise RuntimeError(f"cluster command refused: {reply.strip()}")
