"""A tiny RESP2 client (standard library only), sync and asyncio flavours.

Used by the harness (INFO, polling, FLUSHALL) and by every adapter's job instrumentation
(`_probe.py`), so that the measurement cost inside jobs is identical for all systems and does
not depend on which Redis client library a peer happens to ship.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from urllib.parse import urlparse


class RedisError(Exception):
    pass


def parse_url(url: str) -> tuple[str, int, int]:
    u = urlparse(url)
    db = int(u.path.lstrip("/") or 0) if u.path not in ("", "/") else 0
    return u.hostname or "127.0.0.1", u.port or 6379, db


def encode(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _scalar(line: bytes):
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    raise RedisError(f"unexpected reply {line!r}")


class SyncRedis:
    """Blocking client; one connection; `call()` for one command, `pipeline()` for many."""

    def __init__(self, url: str, timeout: float = 30.0):
        host, port, db = parse_url(url)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.sent = 0  # commands sent by this client (the harness subtracts its own)
        if db:
            self.call("SELECT", db)

    def _read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind = line[:1]
        if kind == b"$":
            size = int(line[1:-2])
            if size < 0:
                return None
            return self.file.read(size + 2)[:-2]
        if kind == b"*":
            size = int(line[1:-2])
            return None if size < 0 else [self._read() for _ in range(size)]
        return _scalar(line)

    def pipeline(self, *cmds) -> list:
        self.sock.sendall(b"".join(encode(*c) for c in cmds))
        self.sent += len(cmds)
        replies = [self._read() for _ in cmds]
        for r in replies:
            if isinstance(r, RedisError):
                raise r
        return replies

    def call(self, *args):
        return self.pipeline(args)[0]

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class AsyncRedis:
    """Multiplexing asyncio client: concurrent callers share one connection without a lock.

    Requests are written in order and replies are matched FIFO by a reader task, so 100
    concurrent jobs cost 100 small writes and naturally coalesce; nobody waits for a lock.
    """

    def __init__(self, url: str):
        self.url = url
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: collections.deque[asyncio.Future] = collections.deque()
        self._connecting: asyncio.Future | None = None
        self._task: asyncio.Task | None = None

    async def _connect(self) -> None:
        if self.writer is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            host, port, db = parse_url(self.url)
            try:
                self.reader, writer = await asyncio.open_connection(host, port)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._task = asyncio.ensure_future(self._read_loop())
                self.writer = writer
                if db:
                    await self.pipeline(("SELECT", db))
                self._connecting.set_result(None)
            except BaseException as exc:
                self._connecting.set_exception(exc)
                self._connecting = None
                raise
        else:
            await asyncio.shield(self._connecting)

    async def _read(self):
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind = line[:1]
        if kind == b"$":
            size = int(line[1:-2])
            return None if size < 0 else (await self.reader.readexactly(size + 2))[:-2]
        if kind == b"*":
            size = int(line[1:-2])
            return None if size < 0 else [await self._read() for _ in range(size)]
        return _scalar(line)

    async def _read_loop(self) -> None:
        try:
            while True:
                reply = await self._read()
                fut = self.pending.popleft()
                if not fut.done():
                    fut.set_result(reply)
        except Exception as exc:  # connection lost: fail everyone waiting
            while self.pending:
                fut = self.pending.popleft()
                if not fut.done():
                    fut.set_exception(exc)

    async def pipeline(self, *cmds) -> list:
        if self.writer is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in cmds]
        self.pending.extend(futs)
        self.writer.write(b"".join(encode(*c) for c in cmds))
        replies = [await f for f in futs]
        for r in replies:
            if isinstance(r, RedisError):
                raise r
        return replies
