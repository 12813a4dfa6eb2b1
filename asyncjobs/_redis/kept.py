"""Kept results: where a complete job's record stays for its result TTL, and the ids that
make that cheap. No I/O.

A record in its own key costs Redis about 186 bytes before its first field (the key's name,
its keyspace entry, the hash's headers, the TTL). A complete job's record is kept for the
whole ``result_ttl`` (an hour by default), so at a steady rate that overhead is most of
Redis' memory. Instead, a job that completes with a *plain* record and a result kept
``MIN_TTL_S`` or longer goes into a hash shared with the jobs enqueued next to it: the field
is the job id, the value the record packed (``decode``), one TTL for the hash. Redis stores
a hash of up to 128 fields of up to 64 bytes as one listpack, so a kept job costs its id,
its packed record and a few bytes.

Which hash: the first ``TAG_LENGTH`` characters of the job id (its *tag*), under the queue's
``kept:`` prefix (``Keys.kept``). Only ids of 22 base64url characters have one (the ids
``new_job_ids`` makes; any other id keeps its own key). ``new_job_ids`` gives at most
``PER_TAG`` ids one tag, and starts a new tag after ``TAG_SECONDS`` at the latest, so the
jobs of one hash were enqueued together and usually end together.

Plain: the record holds only what a job that ran once through holds (task and arguments,
state, attempts, enqueue and start times, worker, stream entry): no expiry, due time, error
history, progress, concurrency wait or earlier end. start.lua tells the worker (the
``plain`` of a start), which then settles the job as ``keep`` with the head of the packed
value (``packed_head``: everything it knows) when the attempt added no error or progress.
settle.lua appends the end time and the result, and moves the record only into a hash that
is absent (created with TTL + ``SLACK_MS``) or expires between the TTL and TTL + ``SLACK_MS``
from now; otherwise (a hash of another type, one too old or too young) the job completes in
its own key as before. So a kept result is readable at least ``result_ttl`` and gone at most
``SLACK_MS`` later. What lands in the job key between the worker's decision and the settle
goes with it: an abort requested as the job completed (nothing reads it on a complete job),
or a progress report the task sent without awaiting it. Per job this costs the same two
commands as a record in its own key (the shared hash's HSET and the job key's DEL, instead
of HSET and EXPIRE). Everything that reads a record by id (``Job.status/info/result``,
listings, abort, re-queue, dedup at enqueue) looks in the shared hash when the job's own
key is gone.

The packed value: a version byte (1), then unsigned LEB128 varints: attempts, the enqueue
time (ms), zigzag(start - enqueue), the spec's length, the spec, the worker name's length,
the worker name, the end time (ms); the rest is the result (msgpack). For
``benchmarks/redis_bytes.py``'s no-op task, 46 bytes, where the same fields cost about 127
in a hash of its own.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from base64 import urlsafe_b64encode

TAG_LENGTH = 10
"""Characters of a job id that name the shared hash its kept result goes to."""

PER_TAG = 64
"""Most ids ``new_job_ids`` gives one tag (well under Redis' 128-field listpack limit)."""

TAG_SECONDS = 10.0
"""Longest a tag is handed out for, from its first id."""

SLACK_MS = 10_000
"""How much longer than its ``result_ttl`` a kept result may stay (settle.lua's
``KEPT_SLACK_MS``)."""

MIN_TTL_S = 300
"""Results kept for less go on in their own key (settle.lua's ``KEPT_MIN_TTL_S``): they
cost little memory, and their TTL stays exact."""

_SHAPE = re.compile(r"[A-Za-z0-9_-]{22}")
_VERSION = 1
_VERSION_BYTE = bytes([_VERSION])


def tag_of(job_id: str) -> str | None:
    """The tag of a job id that may have a kept result: its first ``TAG_LENGTH``
    characters when it is 22 base64url characters (the shape ``new_job_ids`` makes),
    None for any other id."""
    return job_id[:TAG_LENGTH] if _SHAPE.fullmatch(job_id) else None


class _Tags:
    """Hands out tags: a random 6-character prefix per process, then a 24-bit counter,
    a new tag every ``PER_TAG`` ids or ``TAG_SECONDS``, whichever comes first. A forked
    child starts over (a new lock, a new prefix)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A fresh start (at creation, and in a forked child)."""
        self.lock = threading.Lock()
        self.pid = -1
        self.prefix = ""
        self.counter = 0
        self.left = 0
        self.since = 0.0

    def take(self, count: int) -> list[str]:
        """Tags for ``count`` new ids, in order."""
        out: list[str] = []
        with self.lock:
            now = time.monotonic()
            if os.getpid() != self.pid:  # a fresh process, or a forked child
                self.pid, self.left = os.getpid(), 0
                self._new_prefix()
            if now - self.since >= TAG_SECONDS:
                self.left = 0
            while len(out) < count:
                if self.left == 0:
                    self._next(now)
                n = min(self.left, count - len(out))
                tag = self.prefix + urlsafe_b64encode(self.counter.to_bytes(3, "big")).decode()
                out += [tag] * n
                self.left -= n
        return out

    def _new_prefix(self) -> None:
        prefix = urlsafe_b64encode(os.urandom(6)).decode()[:6]
        # Never starting with '-': a command line would read the id as an option.
        self.prefix = f"x{prefix[1:]}" if prefix.startswith("-") else prefix

    def _next(self, now: float) -> None:
        self.counter += 1
        if self.counter >= 1 << 24:
            self.counter = 0
            self._new_prefix()
        self.left, self.since = PER_TAG, now


_TAGS = _Tags()
if hasattr(os, "register_at_fork"):  # a child forked while a thread held the lock
    os.register_at_fork(after_in_child=_TAGS.reset)


def new_job_ids(count: int) -> list[str]:
    """Job ids: a tag (``TAG_LENGTH`` characters, shared by at most ``PER_TAG`` ids made
    together) and 72 bits from the OS's CSPRNG, in base64url, 22 characters. Unguessable
    (the random part alone), so an id can be shown to whoever enqueued the job; never
    starting with '-'."""
    data = os.urandom(9 * count)
    tags = _TAGS.take(count)
    return [tags[n] + urlsafe_b64encode(data[9 * n : 9 * n + 9]).decode()
            for n in range(count)]


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """An unsigned LEB128 number at ``at``: (value, next position)."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 56:
            raise ValueError("a kept record ends inside a number")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def _leb128(n: int) -> bytes:
    if 0 <= n < 128:
        return _ONE_BYTE[n]
    if n < 0:
        raise ValueError("a kept record holds no negative number")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_ONE_BYTE = [bytes([n]) for n in range(128)]


@functools.lru_cache(maxsize=16)
def _sized(name: bytes) -> bytes:
    """A worker name with its length in front (the same few names, job after job)."""
    return _leb128(len(name)) + name


def _zigzag(n: int) -> int:
    return n * 2 if n >= 0 else -n * 2 - 1


def _signed(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def packed_head(attempts: int, enqueued_ms: int, started_ms: int, spec: bytes,
                name: bytes) -> bytes:
    """What the worker knows of a plain record when its job completes (``name``: the
    worker's), packed: the start of the kept value, to which settle.lua appends the end
    time and the result."""
    enqueued_ms = max(0, enqueued_ms)
    return b"".join((_VERSION_BYTE, _leb128(max(0, attempts)), _leb128(enqueued_ms),
                     _leb128(_zigzag(started_ms - enqueued_ms)), _leb128(len(spec)), spec,
                     _sized(name)))


def decode(value: bytes) -> dict[bytes, bytes]:
    """A kept result's packed value as the record's fields (what HGETALL of its own key
    would give: ``s`` complete, ``j``, ``a``, ``q``, ``st``, ``et``, ``w``, ``r``). Raises
    ValueError for anything settle.lua did not write."""
    if not value or value[0] != _VERSION:
        raise ValueError("a kept record starts with an unknown version")
    attempts, at = _varint(value, 1)
    enqueued, at = _varint(value, at)
    waited, at = _varint(value, at)
    fields: dict[bytes, bytes] = {}
    for name in (b"j", b"w"):
        size, at = _varint(value, at)
        if at + size > len(value):
            raise ValueError("a kept record is shorter than its fields")
        fields[name] = value[at : at + size]
        at += size
    ended, at = _varint(value, at)
    fields.update({b"s": b"complete", b"a": b"%d" % attempts, b"q": b"%d" % enqueued,
                   b"st": b"%d" % (enqueued + _signed(waited)), b"et": b"%d" % ended,
                   b"r": value[at:]})
    return fields


def encode(fields: dict[bytes, bytes]) -> bytes:
    """The packed value of a plain record's fields, as ``packed_head`` and settle.lua
    write it together (for tests and tools)."""
    head = packed_head(int(fields[b"a"]), int(fields[b"q"]), int(fields[b"st"]),
                       fields[b"j"], fields[b"w"])
    return head + _leb128(int(fields[b"et"])) + fields[b"r"]
