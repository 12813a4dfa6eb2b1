"""A Sentinel-managed Redis the test suite starts itself: a master, its replicas and three
Sentinels, each a ``redis-server`` on a free port of 127.0.0.1 in a temporary directory
(never the machine's 6379). ``SentinelSetup`` waits until the Sentinels agree (each knows
the master, the replicas and the two other Sentinels) and tears everything down.

Sentinels are tuned for tests: a master is judged down after 1 s without an answer
(``down-after-milliseconds``), so a failover takes a few seconds, not the default 30+.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from asyncjobs._redis.embedded import RedisServer

SERVICE = "ajtest"
QUORUM = 2
FAST_SYNC = ("--repl-diskless-sync-delay", "0")
"""A replica's first sync starts at once (Redis waits 5 s for more replicas by default)."""


class SentinelServer(RedisServer):
    """``redis-server <config> --sentinel`` monitoring ``SERVICE`` at ``master_port``."""

    def __init__(self, master_port: int) -> None:
        super().__init__()
        self.master_port = master_port

    def arguments(self) -> list[str]:
        config = self.directory / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        config.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}",
            f"logfile {self.directory / 'redis.log'}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {SERVICE} 1000",
            f"sentinel failover-timeout {SERVICE} 10000",
            f"sentinel parallel-syncs {SERVICE} 2",
        ]) + "\n")
        return [self.binary, str(config), "--sentinel"]


def command(port: int, *args: str, timeout_s: float = 2.0) -> str:
    """One command to 127.0.0.1:``port`` over a raw socket; the reply as text (errors too)."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(payload.encode())
        chunks = b""
        sock.settimeout(0.2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if chunks:
                    break
                continue
            if not chunk:
                break
            chunks += chunk
            if _reply_end(chunks, 0) == len(chunks):  # one whole reply: no need to wait on
                break
    return chunks.decode(errors="replace")


def _reply_end(data: bytes, at: int) -> int:
    """Where the RESP2 reply starting at ``at`` ends, or -1 if ``data`` does not hold all
    of it yet."""
    line_end = data.find(b"\r\n", at)
    if line_end < 0:
        return -1
    kind, head = data[at:at + 1], data[at + 1:line_end]
    after = line_end + 2
    if kind in (b"+", b"-", b":"):
        return after
    try:
        size = int(head)
    except ValueError:
        return -1
    if kind == b"$":
        end = after + max(size, 0) + (2 if size >= 0 else 0)
        return end if len(data) >= end else -1
    if kind == b"*":
        for _ in range(max(size, 0)):
            after = _reply_end(data, after)
            if after < 0:
                return -1
        return after
    return -1


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` of a server as a dict."""
    fields = {}
    for line in command(port, "INFO", section).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


class SentinelSetup:
    """A master, ``replicas`` replicas and three Sentinels; ``url`` is the Sentinel URL."""

    def __init__(self, replicas: int = 1) -> None:
        self.master = RedisServer(extra_args=FAST_SYNC)
        self.replicas = [RedisServer(extra_args=(*FAST_SYNC, "--replicaof", "127.0.0.1",
                                                 str(self.master.port)))
                         for _ in range(replicas)]
        self.sentinels = [SentinelServer(self.master.port) for _ in range(3)]

    @property
    def servers(self) -> list[RedisServer]:
        """The data nodes: the first master, then the replicas (roles change on failover)."""
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        for server in [*self.servers, *self.sentinels]:
            server.start()
        self.wait_until_agreed(self.master.port)

    def master_port(self) -> int | None:
        """The master's port, if every live Sentinel names the same one."""
        named = set()
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            reply = command(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            named.add(reply.split("\r\n")[-2] if reply.startswith("*2") else "")
        found = named.pop() if len(named) == 1 else ""
        return int(found) if found.isdigit() else None

    def wait_until_agreed(self, master_port: int, timeout_s: float = 30.0) -> None:
        """Until every Sentinel names ``master_port`` and knows the live replicas and the
        other Sentinels, and every live replica is in sync with that master."""
        live = [s for s in self.servers if s.process is not None and s.port != master_port]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._agreed(master_port, len(live)) and all(
                    info(s.port, "replication").get("master_link_status") == "up"
                    and info(s.port, "replication").get("master_port") == str(master_port)
                    for s in live):
                return
            time.sleep(0.1)
        raise TimeoutError(f"Sentinels did not agree on master {master_port} within "
                           f"{timeout_s} s: {[self._view(s.port) for s in self.sentinels]}")

    def _agreed(self, master_port: int, replicas: int) -> bool:
        for sentinel in self.sentinels:
            view = self._view(sentinel.port)
            if (view.get("port") != str(master_port) or "s_down" in view.get("flags", "")
                    or int(view.get("num-other-sentinels", -1)) != len(self.sentinels) - 1
                    or int(view.get("num-slaves", -1)) < replicas):
                return False
        return True

    def _view(self, port: int) -> dict[str, str]:
        reply = command(port, "SENTINEL", "MASTER", SERVICE)
        items = [line for line in reply.split("\r\n")[1:] if line and line[0] not in "$*"]
        return dict(zip(items[::2], items[1::2], strict=False))

    def wait_for_new_master(self, old_port: int, timeout_s: float = 30.0) -> int:
        """Until the Sentinels agree on a master other than ``old_port``; its port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.master_port()
            if port is not None and port != old_port:
                role = command(port, "ROLE")
                if "master" in role:
                    return port
            time.sleep(0.05)
        raise TimeoutError(f"no failover from {old_port} within {timeout_s} s")

    def wait_until_replica(self, port: int, timeout_s: float = 30.0) -> None:
        """Until the server on ``port`` (an old master) has been made a replica."""
        deadline = time.monotonic() + timeout_s
        while "slave" not in command(port, "ROLE"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{port} was not made a replica within {timeout_s} s")
            time.sleep(0.05)

    def server(self, port: int) -> RedisServer:
        """The data node on ``port``."""
        return next(s for s in self.servers if s.port == port)

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()

    def __enter__(self) -> SentinelSetup:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@contextmanager
def sentinel_setup(replicas: int = 1) -> Iterator[SentinelSetup]:
    """A started ``SentinelSetup``, closed on the way out."""
    with SentinelSetup(replicas) as setup:
        yield setup


def log_of(server: RedisServer) -> str:
    """A server's log (for failure messages)."""
    path: Path = server.directory / "redis.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""
