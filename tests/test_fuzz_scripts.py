"""Property tests (Hypothesis) of the Lua scripts against garbage in Redis.

Anything in Redis may be garbage: record fields of any value, job keys of the wrong type,
stream entries without a job id or pointing nowhere, queue-level keys of the wrong type.
Each test lets Hypothesis build such a queue, runs one script through its wrapper in
``_store``, and compares the queue's whole keyspace with a model of what the script's header
promises. The model reads numbers as the scripts' ``int()`` does: through Lua 5.1's
``tonumber``, which is C's ``strtod`` (emulated here with the C library itself).

Every test runs on both backends (fakeredis with Lua 5.1, and the real redis-server), each
example on a queue of its own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import re
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ResponseError

import asyncjobs
from asyncjobs._codec import encode_spec
from asyncjobs._model import ENDED_TTL_S, JobSpec
from asyncjobs._redis.kept import MIN_TTL_S as KEPT_MIN_TTL_S
from asyncjobs._redis.kept import SLACK_MS, _leb128
from asyncjobs._redis.keys import GROUP, Keys
from asyncjobs._redis.scripts import _prelude, load, run_pipelined
from asyncjobs._redis.store import QueueStore, reschedule_levels, revive_levels
from asyncjobs._redis.values import Delivery, LeaseAsk, NewJob, Orphan, SettleOp
from asyncjobs._routing import members
from asyncjobs._scheduling.leader import MAX_TTL_S as MAX_LEASE_TTL_S

from .conftest import Backend

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
ME, OTHER = "c-me", "c-other"
KEPT_TAG = "FuzzTagAAA"  # the tag of shaped job ids (asyncjobs/_redis/kept.py)

# -- Lua 5.1's tonumber and the prelude's int(), entry_ms() ----------------------------------

_libc = ctypes.CDLL(None)
_strtod = _libc.strtod
_strtod.restype = ctypes.c_double
_strtod.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
_strtoul = _libc.strtoul
_strtoul.restype = ctypes.c_ulong
_strtoul.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]


def lua_tonumber(raw: bytes) -> float | None:
    """Lua 5.1's ``tonumber`` of a string (``luaO_str2d``: strtod on the C string, a hex
    retry with strtoul, trailing white space allowed)."""
    cstr = raw.split(b"\0", 1)[0]
    buf = ctypes.create_string_buffer(cstr)
    start = ctypes.addressof(buf)
    end = ctypes.c_void_p()
    value = float(_strtod(start, ctypes.byref(end)))
    at = (end.value or start) - start
    if at == 0:
        return None
    if cstr[at:at + 1] in (b"x", b"X"):
        value = float(_strtoul(start, ctypes.byref(end), 16))
        at = (end.value or start) - start
    if cstr[at:].lstrip(b" \t\n\v\f\r"):
        return None
    return value


def lua_int(raw: bytes | None) -> int | None:
    """The prelude's ``int()``: a whole number below 1e15, or None."""
    if raw is None:
        return None
    n = lua_tonumber(raw)
    if n is None or n != n or not -1e15 < n < 1e15 or n != math.floor(n):
        return None
    return int(n)


def entry_ms(entry: bytes) -> int:
    """The prelude's ``entry_ms()``."""
    found = re.match(rb"^(\d+)", entry)
    return (lua_int(found.group(1)) or 0) if found else 0


def num(n: int) -> bytes:
    """A Lua number as Redis receives it as an argument (whole numbers: plain digits)."""
    return b"%d" % n


def text(raw: bytes | str | None) -> str:
    """Text of a reply, as ``_store`` decodes it."""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


# -- the keyspace of one queue -----------------------------------------------------------------

_RAW_XRANGE = "return redis.call('XRANGE', KEYS[1], '-', '+')"


@dataclass(frozen=True)
class Key:
    """One key as a test sees it: its type, whether it expires, and its content."""

    kind: str
    ttl: bool
    content: Any
    dump: bytes | None = field(default=None, compare=False)


Space = dict[bytes, Key]


async def raw_xrange(client: Redis, name: bytes | str) -> list[tuple[bytes, list[bytes]]]:
    """XRANGE with each entry's fields as written (order and repeats kept)."""
    reply = await client.eval(_RAW_XRANGE, 1, name)
    return [(e, list(f)) for e, f in reply]


async def read_key(client: Redis, name: bytes) -> Key | None:
    kind = (await client.type(name)).decode()
    if kind == "none":
        return None
    content: Any
    if kind == "hash":
        content = dict(await client.hgetall(name))
    elif kind == "string":
        content = await client.get(name)
    elif kind == "list":
        content = tuple(await client.lrange(name, 0, -1))
    elif kind == "set":
        content = frozenset(await client.smembers(name))
    elif kind == "zset":
        content = tuple(await client.zrange(name, 0, -1, withscores=True))
    else:
        content = await read_stream(client, name)
    ttl = await client.pttl(name)
    return Key(kind, ttl > 0, content, await client.dump(name))


@dataclass(frozen=True)
class Stream:
    entries: tuple[tuple[bytes, tuple[bytes, ...]], ...]
    pending: tuple[tuple[bytes, bytes, int], ...]  # entry, consumer, deliveries
    consumers: frozenset[bytes]


async def read_stream(client: Redis, name: bytes) -> Stream:
    entries = tuple((e, tuple(f)) for e, f in await raw_xrange(client, name))
    pending: list[tuple[bytes, bytes, int]] = []
    consumers: set[bytes] = set()
    for group in await client.xinfo_groups(name):
        if group["name"] != GROUP.encode():
            continue
        for row in await client.xpending_range(name, GROUP, "-", "+", 100_000):
            pending.append((row["message_id"], row["consumer"], row["times_delivered"]))
        consumers = {c["name"] for c in await client.xinfo_consumers(name, GROUP)}
    return Stream(entries, tuple(pending), frozenset(consumers))


async def snapshot(client: Redis, keys: Keys) -> Space:
    """Every key of the queue, read completely; but the per-minute outcome counters (charts'
    telemetry, checked on their own in test_admin_insight.py), which the models leave out."""
    minute = keys.minute_prefix.encode()
    names = sorted({n async for n in client.scan_iter(match=f"{keys.base}*", count=1000)
                    if not n.startswith(minute)})
    space: Space = {}
    for name in names:
        found = await read_key(client, name)
        if found is not None:
            space[name] = found
    return space


def dumps(space: Space) -> dict[bytes, tuple[Key, bytes | None]]:
    """The snapshot with each key's DUMP too: equal only if nothing was written."""
    return {name: (key, key.dump) for name, key in space.items()}


async def redis_ms(client: Redis) -> int:
    sec, usec = await client.time()
    return int(sec) * 1000 + int(usec) // 1000


# -- running one example -----------------------------------------------------------------------


@dataclass
class Env:
    client: Redis
    store: QueueStore

    @property
    def keys(self) -> Keys:
        return self.store.keys

    def job(self, job_id: str | bytes) -> bytes:
        raw = job_id.encode() if isinstance(job_id, str) else job_id
        return self.keys.job_prefix.encode() + raw

    def b(self, name: str) -> bytes:
        return name.encode()


def run(backend: Backend, body: Callable[[Env], Awaitable[None]]) -> None:
    """Run one example on a fresh queue of the backend; delete the queue afterwards."""

    async def main() -> None:
        client = backend.factory(max_connections=4, socket_timeout=None)
        keys = Keys(backend.prefix, f"q{secrets.token_hex(5)}")
        try:
            store = QueueStore(client, keys)
            await store.ensure_group()
            await body(Env(client, store))
        finally:
            with contextlib.suppress(Exception):
                names = [n async for n in client.scan_iter(match=f"{keys.base}*", count=1000)]
                if names:
                    await client.delete(*names)
            await client.aclose()

    asyncio.run(main())


# -- garbage -------------------------------------------------------------------------------

STATES = (b"scheduled", b"queued", b"running", b"complete", b"failed", b"aborted", b"expired")
NUMBERISH = (
    b"0", b"1", b"2", b"-1", b"-0", b" 3 ", b"4\n", b"\t5", b"0x10", b"0X1f", b"0x", b"1e3",
    b"1.5", b"2.0", b"1e15", b"999999999999999", b"-999999999999999", b"1e300", b"inf",
    b"-inf", b"nan", b"", b"abc", b"7\x00junk", b"\xff\xfe\x00", b"12abc", b"+5", b"0x1p4",
    b"5e-1", b" ", b"1 2",
)
junk = st.one_of(
    st.sampled_from(NUMBERISH),
    st.sampled_from(STATES),
    st.sampled_from((b"Queued", b"queued ", b"RUNNING", b"\x00")),
    st.binary(max_size=12),
    st.integers(-(10**16), 10**16).map(num),
)
WRONG_TYPES = ("string", "list", "set", "zset", "stream")
LAST_ID = b"18446744073709551615-18446744073709551615"
ENDED_STATES = ("", "", "", *WRONG_TYPES, "exhausted stream")
"""What the ended index may hold before a call: nothing, garbage of any type, a stream of
garbage, or a stream holding the last possible id (XADD * fails there)."""


async def make_wrong(client: Redis, name: bytes | str, kind: str) -> None:
    """Replace ``name`` by a key of type ``kind`` (not a hash)."""
    await client.delete(name)
    if kind == "string":
        await client.set(name, b"\x00junk")
    elif kind == "list":
        await client.rpush(name, b"junk")
    elif kind == "set":
        await client.sadd(name, b"junk")
    elif kind == "zset":
        await client.zadd(name, {b"junk": 1})
    elif kind == "stream":
        await client.xadd(name, {b"junk": b"1"})
    elif kind == "exhausted stream":
        await client.xadd(name, {b"junk": b"1"}, id=LAST_ID)
    else:
        await client.hset(name, b"junk", b"1")


class Marker:
    """A field value resolved when the queue is built (it depends on ids and the clock)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ENTRY, OTHER_ENTRY, PAST, FUTURE = (Marker(n) for n in ("ENTRY", "OTHER_ENTRY", "PAST",
                                                         "FUTURE"))
DELETE = Marker("DELETE")

field_value = {
    b"s": st.one_of(st.sampled_from(STATES), st.sampled_from(STATES), junk, st.just(DELETE)),
    b"a": st.one_of(junk, st.just(DELETE)),
    b"x": st.one_of(st.sampled_from((PAST, FUTURE)), st.just(PAST), junk),
    b"q": st.one_of(junk, st.just(DELETE)),
    b"e": st.one_of(st.sampled_from((ENTRY, OTHER_ENTRY, DELETE)), junk),
    b"ab": st.one_of(st.sampled_from((b"1", b"", b"0")), junk),
    b"j": st.binary(max_size=12),
    b"h": st.binary(max_size=12),
    b"w": st.sampled_from((ME.encode(), OTHER.encode(), b"")),
    b"de": st.one_of(junk, st.just(OTHER_ENTRY)),
    b"rs": st.one_of(st.sampled_from((PAST, FUTURE)), junk),
    # Fields that make a record not plain (see asyncjobs/_redis/kept.py), whatever they hold.
    b"d": junk, b"p": junk, b"cw": junk, b"dl": junk, b"et": junk,
}


@dataclass
class Case:
    """One stream entry of a generated queue and what its job key holds."""

    kind: str  # good | fields | wrong | gone | noid | emptyid | dangling
    fields: dict[bytes, Any] = field(default_factory=dict)
    wrong: str = ""
    ttl: bool = False
    raw: dict[bytes, bytes] = field(default_factory=dict)
    shaped: bool = False  # an id of new_job_ids' shape (its result may be kept shared)
    # Filled in when built:
    entry: bytes = b""
    job_id: bytes = b""


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(
        ("good", "fields", "fields", "fields", "wrong", "gone", "noid", "emptyid", "dangling")))
    case = Case(kind, ttl=draw(st.booleans()), shaped=draw(st.sampled_from((False, True, True))))
    if kind == "fields":
        names = draw(st.lists(st.sampled_from(sorted(field_value)), min_size=1, max_size=3,
                              unique=True))
        case.fields = {n: draw(field_value[n]) for n in names}
    elif kind == "wrong":
        case.wrong = draw(st.sampled_from(WRONG_TYPES))
    elif kind in ("noid", "dangling"):
        case.raw = draw(st.dictionaries(st.sampled_from((b"junk", b"x", b"I", b"id")), junk,
                                        max_size=2))
    return case


batches = st.lists(cases(), min_size=1, max_size=8)


async def build(env: Env, batch: Sequence[Case]) -> None:
    """Write the queue: records through enqueue.lua, then the corruption drawn."""
    client, store = env.client, env.store
    now = await redis_ms(client)
    for n, case in enumerate(batch):
        if case.kind in ("noid", "emptyid", "dangling"):
            fields = dict(case.raw)
            if case.kind != "noid":
                fields[b"i"] = b"" if case.kind == "emptyid" else b"ghost%d" % n
            fields = fields or {b"junk": b""}
            case.entry = await client.xadd(store.keys.stream, fields)  # type: ignore[arg-type]
            case.job_id = fields.get(b"i", b"")
            continue
        job_id = f"{KEPT_TAG}{n:012d}" if case.shaped else f"j{n}"
        spec = encode_spec(JobSpec("fuzz", [n]))
        assert await store.enqueue([NewJob(job_id, spec)]) == {}
        case.job_id = job_id.encode()
        key = env.job(job_id)
        case.entry = await client.hget(key, "e")
        await corrupt(env, key, case, now)


async def corrupt(env: Env, key: bytes, case: Case, now: int) -> None:
    client = env.client
    if case.kind == "wrong":
        await make_wrong(client, key, case.wrong)
    elif case.kind == "gone":
        await client.delete(key)
    for name, value in case.fields.items():
        if value is DELETE:
            await client.hdel(key, name)
            continue
        resolved = {ENTRY: case.entry, OTHER_ENTRY: b"1-1", PAST: num(now - 60_000),
                    FUTURE: num(now + 10**9)}.get(value, value)
        await client.hset(key, name, resolved)
    if case.ttl and await client.exists(key):
        await client.expire(key, 10_000)


_INT_PROBE = """
local out = {}
for i, v in ipairs(ARGV) do
  local n = int(v)
  out[i] = n and string.format('%.0f', n) or 'nil'
end
return out
"""


@settings(FUZZ, max_examples=50)
@given(values=st.lists(junk, min_size=1, max_size=20))
def test_the_models_int_is_the_scripts_int(backend: Backend, values: list[bytes]) -> None:
    """The models below read numbers as the prelude's ``int()`` does, through Lua's
    tonumber; checked here against the server's Lua itself."""

    async def body(env: Env) -> None:
        got = await env.client.eval(f"{_prelude()}\n{_INT_PROBE}", 0, *values)  # type: ignore[misc]
        want = [b"nil" if (n := lua_int(v)) is None else num(n) for v in values]
        assert got == want, values

    run(backend, body)


_UTF8_PROBE = """
local out = {}
for i, v in ipairs(ARGV) do out[i] = utf8_ok(v) and 1 or 0 end
return out
"""

_UTF8_EDGES = (b"", b"\x00", b"\x7f", b"\x80", b"\xc0\x80", b"\xc2\x80", b"\xdf\xbf",
               b"\xe0\x9f\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xed\xa0\x80",
               b"\xef\xbf\xbf", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80",
               b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff",
               b"abc\xe2\x82", "h\u00e9llo \u20ac \U0001f600".encode())


@settings(FUZZ, max_examples=60)
@given(values=st.lists(st.one_of(
    st.binary(max_size=12), st.sampled_from(_UTF8_EDGES),
    st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(st.sampled_from(_UTF8_EDGES), st.binary(max_size=3)).map(b"".join)),
    min_size=1, max_size=20))
def test_the_scripts_utf8_check_is_pythons(backend: Backend, values: list[bytes]) -> None:
    """The prelude's ``utf8_ok()`` (a job id that is not UTF-8 is never started: see
    start_entry) accepts exactly what Python decodes as UTF-8, NUL and surrogates included;
    checked against the server's Lua itself."""

    def python_ok(raw: bytes) -> int:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return 0
        return 1

    async def body(env: Env) -> None:
        got = await env.client.eval(f"{_prelude()}\n{_UTF8_PROBE}", 0, *values)  # type: ignore[misc]
        assert got == [python_ok(v) for v in values], values

    run(backend, body)


_DIGITS_PROBE = """
local out = {}
for i, v in ipairs(ARGV) do out[i] = digits(tonumber(v)) end
return out
"""

_DIGITS_EDGES = (0, 1, 9, 10, 999_999_999, 10**9, 10**9 + 1, 10**10 - 1, 1_795_276_503_766,
                 2**31 - 1, 2**31, 2**32, 10**15 - 1, 2**53 - 1, 2**53 - 10**9 + 1)


@settings(FUZZ, max_examples=60)
@given(values=st.lists(st.one_of(
    st.sampled_from(_DIGITS_EDGES), st.sampled_from(_DIGITS_EDGES).map(lambda n: -n),
    st.integers(-(2**53) + 1, 2**53 - 1), st.integers(-(10**10), 10**10)),
    min_size=1, max_size=20))
def test_the_scripts_digits_are_pythons(backend: Backend, values: list[int]) -> None:
    """The prelude's ``digits()`` (the text of the times and counts the scripts write) is
    the exact decimal text of every whole number below 2^53 in magnitude, in parts below
    10^9 so that a 32-bit C long could hold each; checked on the server's own Lua."""

    async def body(env: Env) -> None:
        got = await env.client.eval(f"{_prelude()}\n{_DIGITS_PROBE}", 0,  # type: ignore[misc]
                                    *(str(v) for v in values))
        assert got == [str(v).encode() for v in values], values

    run(backend, body)


# -- the model of start_entry() ------------------------------------------------------------


def model_start(env: Env, case: Case, before: Space, now: int
                ) -> tuple[tuple[Any, ...], dict[bytes, bytes] | None]:
    """start.lua's reply row for one entry and the record it leaves (None: untouched)."""
    key = env.job(case.job_id)
    found = before.get(key) if case.job_id else None
    if found is not None and found.kind != "hash":
        why = f"the job key {text(key)} holds something other than a hash".encode()
        return ("unreadable", why, 0, b"", entry_ms(case.entry), 0, False, False), None
    rec: dict[bytes, bytes] = dict(found.content) if found else {}
    state = rec.get(b"s")
    if state is None:
        return ("missing", b"", 0, b"", entry_ms(case.entry), 0, False, False), None
    attempts = lua_int(rec[b"a"]) if b"a" in rec else 0
    expires = lua_int(rec.get(b"x"))
    bad = None
    if state not in STATES:
        bad = "its state field is not a known state"
    elif attempts is None or attempts < 0:
        bad = "its attempts field is not a number"
    elif b"x" in rec and expires is None:
        bad = "its expiry field is not a time"
    if bad:
        shown = lua_int(rec.get(b"a"))
        return ("corrupt", f"the job record cannot be read: {bad}".encode(),
                0 if shown is None else shown, b"", entry_ms(case.entry), 0, False, False), None
    assert attempts is not None
    q = lua_int(rec.get(b"q"))
    enqueued = q if q is not None else entry_ms(rec.get(b"e", case.entry))
    verdict = "run"
    if state not in (b"queued", b"running") or rec.get(b"e") != case.entry:
        verdict = "stale"
    elif b"ab" in rec:
        verdict = "aborted"
    elif expires is not None and now >= expires:
        verdict = "expired"
    new = None
    reserved = 0
    if verdict == "run":
        attempts += 1
        new = {**rec, b"a": num(attempts), b"s": b"running", b"st": num(now),
               b"w": ME.encode()}
        if q is None:
            new[b"q"] = num(enqueued)
        if b"rs" in rec:  # a rate limit's reserved slot: handed back once, then cleared
            reserved = lua_int(new.pop(b"rs")) or 0
    # Plain: nothing a job that ran once through would not hold (see keep in the prelude).
    plain = verdict == "run" and not rec.get(b"h") and not any(
        f in rec for f in (b"x", b"ab", b"d", b"p", b"cw", b"dl", b"et"))
    # Resumed: the record said running, so the attempt before this one never ended.
    resumed = verdict == "run" and state == b"running"
    return (verdict, rec.get(b"j", b""), attempts, rec.get(b"h", b""), enqueued,
            reserved, plain, resumed), new


def check_started(env: Env, batch: Sequence[Case], rows: Sequence[Any], before: Space,
                  after: Space, lost: set[bytes], lo: int, hi: int) -> None:
    """Every entry got its verdict; runnable jobs started; nothing else was written."""
    assert len(rows) == len(batch), "every entry gets exactly one verdict"
    nows = {row.now_ms for row in rows}
    assert len(nows) == 1 and lo <= min(nows) <= hi
    now = nows.pop()
    expected = {name: k for name, k in before.items() if name != env.keys.stream.encode()}
    for case, row in zip(batch, rows, strict=True):
        assert row.delivery.entry == text(case.entry)
        got = (row.verdict, row.spec, row.attempts, row.history, row.enqueued_ms,
               row.reserved_ms, row.plain, row.resumed)
        event(f"verdict {row.verdict}")
        if row.reserved_ms:
            event("reserved slot handed back")
        if row.resumed:
            event("resumed a running record")
        if case.entry in lost:
            assert got == ("lost", b"", 0, b"", 0, 0, False, False), case
            continue
        assert row.delivery.job_id == text(case.job_id)
        want, record = model_start(env, case, before, now)
        assert got == want, (case, before.get(env.job(case.job_id)))
        if record is not None:
            old = expected[env.job(case.job_id)]
            expected[env.job(case.job_id)] = Key("hash", old.ttl, record)
    actual = {name: k for name, k in after.items() if name != env.keys.stream.encode()}
    assert actual == expected


@pytest.mark.parametrize("path", ["take", "start"])
@settings(FUZZ, max_examples=100)
@given(batch=batches, data=st.data())
def test_take_and_start_give_every_entry_its_verdict_and_start_only_good_records(
    backend: Backend, path: str, batch: list[Case], data: st.DataObject
) -> None:
    async def body(env: Env) -> None:
        await build(env, batch)
        lost: set[bytes] = set()
        stream = env.keys.stream
        if path == "take":
            before = await snapshot(env.client, env.keys)
            lo = await redis_ms(env.client)
            rows = await env.store.take(ME, 100)
        else:
            got = await env.store.read(env.client, ME, 100, None)
            assert [d.entry for d in got] == [text(c.entry) for c in batch]
            for case in batch:  # another worker took some over, or they were settled
                how = data.draw(st.sampled_from(("mine", "mine", "claimed", "acked")))
                if how == "claimed":
                    await env.client.xclaim(stream, GROUP, OTHER, 0, [case.entry])
                elif how == "acked":
                    await env.client.xack(stream, GROUP, case.entry)
                if how != "mine":
                    lost.add(case.entry)
            before = await snapshot(env.client, env.keys)
            lo = await redis_ms(env.client)
            rows = await env.store.start(ME, got)
        hi = await redis_ms(env.client)
        after = await snapshot(env.client, env.keys)
        check_started(env, batch, rows, before, after, lost, lo, hi)
        entries = after[stream.encode()].content
        assert [e for e, _ in entries.entries] == [c.entry for c in batch]  # none deleted
        if path == "take":
            assert {(e, c) for e, c, _ in entries.pending} == {(c.entry, ME.encode())
                                                               for c in batch}
        else:
            assert entries.pending == before[stream.encode()].content.pending

    run(backend, body)


# -- settle.lua ------------------------------------------------------------------------------

OUTCOMES = ("complete", "keep", "keep", "retry", "failed", "expired", "aborted", "ack",
            "garbage")
KEPT_PRESETS = {"": None, "right": 3_605_000, "too long": 3_700_000, "too short": 3_500_000,
                "no TTL": -1, **dict.fromkeys(WRONG_TYPES, -1)}
"""What the shared hash of the shaped ids' tag holds before settle: nothing, a hash whose TTL
fits a one-hour result, one that does not, one without a TTL, or a key of another type."""
BROKEN = b"the job key cannot hold a record: "


@dataclass(frozen=True)
class Op:
    case: int
    outcome: str
    payload: bytes
    number: int
    history: bytes


@st.composite
def settle_ops(draw: st.DrawFn, n: int) -> list[Op]:
    order = draw(st.permutations(range(n)))
    ops = []
    for i in order[:draw(st.integers(1, n))]:
        outcome = draw(st.sampled_from(OUTCOMES))
        numbers = {"retry": (0, 1, 10**7), "complete": (0, 60, -1), "expired": (0, 60, -1),
                   "aborted": (0, 60, -1), "keep": (0, 60, 300, 3600, 3600, 3600, 3600, -1)
                   }.get(outcome, (0,))
        head = st.binary(min_size=1, max_size=8)  # for a keep, the packed record's head
        ops.append(Op(i, outcome, draw(st.binary(max_size=8)), draw(st.sampled_from(numbers)),
                      draw(st.one_of(st.just(b""), head, head) if outcome == "keep"
                           else st.one_of(st.just(b""), head))))
    return ops


class Ref:
    """The id of the n-th entry a call adds to a stream (unknown until it runs)."""

    def __init__(self, stream: bytes, n: int) -> None:
        self.stream = stream
        self.n = n

    def __repr__(self) -> str:
        return f"<entry {self.n} added to {text(self.stream)}>"


class Prefix(bytes):
    """A value the server words (an error text): only its start is known."""


@dataclass
class Model:
    """What a script call should leave: every key but the streams it adds to, and the
    entries it adds to those (fields, in order)."""

    space: Space
    adds: dict[bytes, list[list[Any]]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    skip: frozenset[bytes] = frozenset()
    """Keys the test checks itself."""

    def rest(self, space: Space) -> Space:
        return {n: k for n, k in space.items() if n not in self.adds and n not in self.skip}

    def add(self, stream: bytes, fields: list[Any]) -> Ref:
        added = self.adds.setdefault(stream, [])
        added.append(fields)
        return Ref(stream, len(added) - 1)

    def note_ended(self, index: bytes, ended: list[bytes]) -> None:
        """One ended-index entry for the jobs a call ended, unless the index cannot take
        it (not a stream, or a stream that holds the last possible id): best effort."""
        old = self.space.get(index)
        if not ended or (old is not None and (old.kind != "stream" or (old.content.entries
                                              and old.content.entries[-1][0] == LAST_ID))):
            return
        self.space.pop(index, None)
        self.add(index, ended)

    def count_into(self, stats: bytes) -> None:
        """The counters, unless the stats key is of the wrong type (best effort)."""
        old = self.space.get(stats)
        if not +self.counts or (old is not None and old.kind != "hash"):
            return
        rec = dict(old.content) if old else {}
        for name, n in (+self.counts).items():  # a count of 0 writes nothing (count())
            rec[name.encode()] = num(int(rec.get(name.encode(), b"0")) + n)
        self.space[stats] = Key("hash", old.ttl if old else False, rec)


def stream_fields(before: Space, stream: str) -> dict[bytes, tuple[bytes, ...]]:
    found = before.get(stream.encode())
    return dict(found.content.entries) if found and found.kind == "stream" else {}


def model_settle(env: Env, batch: Sequence[Case], ops: Sequence[Op], before: Space,
                 held: set[bytes], now: int, shared_ttl: int | None = None
                 ) -> tuple[list[int], Model]:
    """settle.lua's replies and the keyspace it leaves. ``shared_ttl``: the PTTL (ms) of the
    shaped ids' shared hash before the call (None: absent; -1: none, or not a hash)."""
    k = env.keys
    dead = k.dead.encode()
    model = Model({n: v for n, v in before.items() if n not in (k.stream.encode(), dead)},
                  {dead: []}, skip=frozenset({k.stream.encode()}))
    fields = stream_fields(before, k.stream)
    replies = []
    delayed = k.delayed.encode()
    ended: list[bytes] = []
    shared_ttls = {env.keys.kept(f"{KEPT_TAG}{0:012d}"): shared_ttl}
    checked: dict[str, int] = {}  # keep()'s `fresh`: hashes this call wrote, by TTL ms
    for op in ops:
        case = batch[op.case]
        if case.entry not in held:
            replies.append(0)
            continue
        replies.append(1)
        key = env.job(case.job_id)
        if op.outcome == "keep" and keep_model(env, case, op, model, shared_ttls, checked,
                                                key, now):
            ended += [case.job_id, num(now)]
            model.counts["complete"] += 1
            continue
        cur = model.space.get(key)
        hashable = cur is None or cur.kind == "hash"
        hist = {b"h": op.history} if op.history else {}
        rec = dict(cur.content) if cur is not None and hashable else {}

        def finish(state: bytes, ttl: int, extra: dict[bytes, Any], key: bytes = key,
                   rec: dict[bytes, Any] = rec) -> None:
            if ttl == 0:
                model.space.pop(key, None)
            else:
                model.space[key] = Key("hash", ttl > 0, {**rec, b"s": state,
                                                          b"et": num(now), **extra})

        def dead_letter(reason: Any, case: Case = case, raw: bool = True) -> str:
            # A garbage entry's letter carries its raw fields (read before the entry is
            # deleted); a job key that turned out unable to hold a record, only the entry id.
            model.add(dead, [b"i", case.job_id, b"r", reason, b"t", num(now), b"entry",
                             case.entry, *(fields.get(case.entry, ()) if raw else ())])
            return "failed"

        kind, broken = op.outcome, False
        number = op.number
        if op.outcome == "keep":  # the shared hash could not take it: complete, no history
            kind, hist = "complete", {}
        if op.outcome == "retry" and hashable and b"ab" in rec:
            # its abort was requested meanwhile: it ends aborted, not scheduled
            kind, number = "aborted", ENDED_TTL_S
        if kind in ("complete", "expired", "aborted"):
            broken = not hashable
            if hashable:
                extra = {b"r": op.payload} if kind == "complete" else {}
                finish(kind.encode(), number, {**extra, **hist})
                ended += [case.job_id, num(now)]
        elif op.outcome == "retry":
            broken = not hashable
            if hashable:
                due = now + op.number
                model.space[key] = Key("hash", cur.ttl if cur else False,
                                       {**rec, b"s": b"scheduled", b"d": num(due), **hist})
                zadd(model.space, delayed, case.job_id, due)
        elif op.outcome == "failed":
            letter = model.add(dead, [b"i", case.job_id, b"r", op.payload, b"t", num(now)])
            if hashable:  # kept as long as its letter: a TTL (the longest letter age)
                finish(b"failed", 1, {b"dl": op.payload, b"de": letter, **hist})
                ended += [case.job_id, num(now)]
        elif op.outcome == "garbage":
            kind = dead_letter(op.payload)
        if broken:
            kind = dead_letter(Prefix(BROKEN), raw=False)
        if kind != "ack":
            model.counts[kind] += 1
    model.count_into(k.stats.encode())
    model.note_ended(k.ended.encode(), ended)
    return replies, model


def keep_model(env: Env, case: Case, op: Op, model: Model, ttls: dict[str | None, int | None],
               checked: dict[str, int], key: bytes, now: int) -> bool:
    """keep() of the prelude: whether the result went to its tag's shared hash (the job key
    deleted, whatever it held), and the hash as it leaves it."""
    shared = env.keys.kept(text(case.job_id)) if case.job_id else None
    ttl_ms = op.number * 1000
    if op.number < KEPT_MIN_TTL_S or not op.history or shared is None:
        return False
    create = False
    if checked.get(shared) != ttl_ms:
        left = ttls.get(shared)
        if left is None:
            create = True
        elif not ttl_ms <= left <= ttl_ms + SLACK_MS:
            return False
    name = shared.encode()
    old = model.space.get(name)
    content = dict(old.content) if old else {}
    content[case.job_id] = op.history + _leb128(now) + op.payload
    model.space[name] = Key("hash", True, content)
    if create:
        ttls[shared] = ttl_ms + SLACK_MS
    checked[shared] = ttl_ms
    model.space.pop(key, None)
    return True


def zadd(space: Space, name: bytes, member: bytes, score: int) -> None:
    old = space.get(name)
    members = dict(old.content) if old else {}
    members[member] = float(score)
    space[name] = Key("zset", old.ttl if old else False,
                      tuple(sorted(members.items(), key=lambda m: (m[1], m[0]))))


def added(before: Space, after: Space, stream: bytes) -> list[tuple[bytes, list[bytes]]]:
    """The entries of ``stream`` that were not there before."""
    old, new = before.get(stream), after.get(stream)
    seen = {e for e, _ in old.content.entries} if old and old.kind == "stream" else set()
    return [(e, list(f)) for e, f in (new.content.entries if new and new.kind == "stream"
                                      else ()) if e not in seen]


def same(want: Any, got: Any) -> bool:
    if isinstance(want, Prefix):
        return isinstance(got, bytes) and got.startswith(want) and len(got) > len(want)
    return bool(want == got)


def matches(model: Model, before: Space, after: Space) -> bool:
    """Whether the keyspace after a call is the model's (with the ids of added entries and
    the server's error texts filled in)."""
    ids: dict[bytes, list[bytes]] = {}
    for stream, want in model.adds.items():
        got = added(before, after, stream)
        if len(got) != len(want) or not all(
            len(g) == len(w) and all(same(x, y) for x, y in zip(w, g, strict=True))
            for (_, g), w in zip(got, want, strict=True)
        ):
            return False
        ids[stream] = [e for e, _ in got]

    def fill(value: Any) -> Any:
        return ids[value.stream][value.n] if isinstance(value, Ref) else value

    expected = {
        name: Key(key.kind, key.ttl, {f: fill(v) for f, v in key.content.items()})
        if key.kind == "hash" else key
        for name, key in model.space.items()
    }
    return expected == model.rest(after)


def assert_model(models: Callable[[int], Model], lo: int, hi: int, before: Space,
                 after: Space) -> int:
    """The call's clock is somewhere in [lo, hi]: some time there must explain the keyspace.
    Returns that time."""
    for now in range(lo, hi + 1):
        if matches(models(now), before, after):
            return now
    model = models(lo)
    for stream, want in model.adds.items():
        assert [f for _, f in added(before, after, stream)] == want, text(stream)
    assert model.rest(after) == model.space
    raise AssertionError("no time in the call's window explains the keyspace")


def entry_key(entry: bytes) -> tuple[int, int]:
    """A stream entry id as the pair Redis orders entries by."""
    ms, seq = entry.split(b"-")
    return int(ms), int(seq)


async def group_last_delivered(client: Redis, stream: str) -> bytes | None:
    """The group's last delivered entry id (None: no such stream or group)."""
    with contextlib.suppress(ResponseError):
        for group in await client.xinfo_groups(stream):
            if group["name"] == GROUP.encode():
                return bytes(group["last-delivered-id"])
    return None


def trimmed_below(old: Stream, batch: set[bytes], last_delivered: bytes | None
                  ) -> tuple[int, int] | None:
    """The bound below which settle.lua's XTRIM MINID takes every entry out of the stream
    (None: it does not trim). The entries of the batch pending for this consumer are
    acknowledged first; then the bound is the oldest entry still pending for anyone, or,
    with none, the last delivered one; the trim runs when one of those acknowledged entries
    lies below it."""
    mine = {p[0] for p in old.pending if p[1] == ME.encode() and p[0] in batch}
    left = [entry_key(p[0]) for p in old.pending if p[0] not in mine]
    if left:
        bound = min(left)
    elif last_delivered is not None:
        bound = entry_key(last_delivered)
    else:
        return None
    return bound if any(entry_key(e) < bound for e in mine) else None


OWNERSHIP = ("mine", "mine", "mine", "claimed", "acked", "deleted")
AFTERWARDS = ("", "", "", "gone", *WRONG_TYPES)


@settings(FUZZ, max_examples=150)
@given(batch=batches, data=st.data())
def test_settle_is_all_or_nothing_per_job_and_dead_letters_what_cannot_hold_a_record(
    backend: Backend, batch: list[Case], data: st.DataObject
) -> None:
    ops = data.draw(settle_ops(len(batch)), "ops")
    owner = data.draw(st.lists(st.sampled_from(OWNERSHIP), min_size=len(batch),
                               max_size=len(batch)), "ownership")
    later = data.draw(st.lists(st.sampled_from(AFTERWARDS), min_size=len(batch),
                               max_size=len(batch)), "job keys after the start")
    broken_stats = data.draw(st.sampled_from(("", "", *WRONG_TYPES)), "stats key")
    ended_index = data.draw(st.sampled_from(ENDED_STATES), "ended index")
    shared_hash = data.draw(st.sampled_from(("", "", "right", "right", *sorted(KEPT_PRESETS))),
                            "shared hash")

    async def body(env: Env) -> None:
        client, k = env.client, env.keys
        await build(env, batch)
        await env.store.take(ME, 100)
        held = set()
        for case, how, then in zip(batch, owner, later, strict=True):
            if how == "claimed":
                await client.xclaim(k.stream, GROUP, OTHER, 0, [case.entry])
            elif how == "acked":
                await client.xack(k.stream, GROUP, case.entry)
            else:
                held.add(case.entry)
                if how == "deleted":  # deleted while pending (aborted while running)
                    await client.xdel(k.stream, case.entry)
            if then == "gone":
                await client.delete(env.job(case.job_id))
            elif then:
                await make_wrong(client, env.job(case.job_id), then)
        held |= await orphaned(env, batch, held)
        if broken_stats:
            await make_wrong(client, k.stats, broken_stats)
        if ended_index:
            await make_wrong(client, k.ended, ended_index)
        shared = k.kept(f"{KEPT_TAG}{0:012d}")
        assert shared is not None
        shared_ttl = KEPT_PRESETS[shared_hash]
        if shared_hash in WRONG_TYPES:
            await make_wrong(client, shared, shared_hash)
        elif shared_hash:
            await client.hset(shared, b"other", b"x")
            if shared_ttl is not None and shared_ttl > 0:
                await client.pexpire(shared, shared_ttl)
        before = await snapshot(client, k)
        last_delivered = await group_last_delivered(client, k.stream)
        call = env.store.settle_call(ME, [
            SettleOp(text(batch[op.case].entry), text(batch[op.case].job_id), op.outcome,
                     op.payload, op.number, op.history) for op in ops])
        lo = await redis_ms(client)
        [replies] = await run_pipelined(client, [call])
        hi = await redis_ms(client)
        after = await snapshot(client, k)
        want, _ = model_settle(env, batch, ops, before, held, lo, shared_ttl)
        assert replies == want
        for op in ops:
            event(f"settle {op.outcome} {'held' if batch[op.case].entry in held else 'lost'}")
        kept_now = after.get(shared.encode())
        if kept_now is not None and kept_now.kind == "hash" and len(kept_now.content) > (
                1 if shared_hash else 0):
            event("a result kept in the shared hash")
        assert_model(lambda now: model_settle(env, batch, ops, before, held, now,
                                              shared_ttl)[1], lo, hi, before, after)
        stream = after[k.stream.encode()].content
        settled = {batch[op.case].entry for op in ops} & held
        old = before[k.stream.encode()].content
        below = trimmed_below(old, {batch[op.case].entry for op in ops}, last_delivered)
        if below is not None:
            event("settle trims the stream")
        assert stream.entries == tuple(e for e in old.entries if e[0] not in settled
                                       and not (below and entry_key(e[0]) < below))
        assert stream.pending == tuple(p for p in old.pending if p[0] not in settled)

    run(backend, body)


# -- enqueue.lua -------------------------------------------------------------------------------

NOT_HASH = "holds something other than a hash"


@dataclass(frozen=True)
class Plan:
    """One job of an enqueue batch; times are Markers or ms."""

    id: str
    spec: bytes
    delay: int
    at: Any
    expires_in: int
    expires_at: Any


plans = st.builds(
    Plan,
    id=st.sampled_from([f"n{i}" for i in range(6)]),  # repeats: dedup inside one batch
    spec=st.binary(max_size=10),
    delay=st.sampled_from((0, 0, 1, 10**8)),
    at=st.sampled_from((0, 0, PAST, FUTURE)),
    expires_in=st.sampled_from((0, 0, 1000, 10**9)),
    expires_at=st.sampled_from((0, 0, PAST, FUTURE)),
)
EXISTING = ("", "", "", "hash", "hash", "hash without a state", *WRONG_TYPES)
QUEUE_KEY_STATE = ("", "", "", "", *WRONG_TYPES)
MAX_LENGTHS = st.one_of(
    st.integers(1, 6).map(num), st.just(None), st.integers(1, 6).map(num), st.just(None),
    junk, st.sampled_from(WRONG_TYPES))
"""The settings hash's max_length: none, a small maximum (the queue starts with one
delayed job), garbage, or a settings key of the wrong type."""


def model_room(env: Env, before: Space) -> tuple[int | None, int | None]:
    """The maximum enqueue.lua reads, and the room it finds: the maximum less XLEN of the
    stream and ZCARD of the delayed set (a key of the wrong type counts 0)."""
    k = env.keys
    settings = before.get(k.settings.encode())
    most = None
    if settings is not None and settings.kind == "hash":
        most = lua_int(settings.content.get(b"max_length"))
    if most is None or most <= 0:
        return None, None
    held = before.get(k.stream.encode())
    later = before.get(k.delayed.encode())
    length = len(held.content.entries) if held is not None and held.kind == "stream" else 0
    length += len(later.content) if later is not None and later.kind == "zset" else 0
    return most, most - length


def model_enqueue(env: Env, jobs: Sequence[NewJob], before: Space, now: int,
                  count_refused: bool = True) -> tuple[dict[int, Any], Model]:
    k = env.keys
    stream, delayed = k.stream.encode(), k.delayed.encode()
    is_stream = stream not in before or before[stream].kind == "stream"
    model = Model({n: v for n, v in before.items() if n != stream or not is_stream},
                  {stream: []} if is_stream else {})
    replies: dict[int, Any] = {}
    most, room = model_room(env, before)
    for i, job in enumerate(jobs):
        key = env.job(job.id)
        cur = model.space.get(key)
        if cur is not None and cur.kind != "hash":
            replies[i] = f"error: its key {text(key)} {NOT_HASH}"
            continue
        if cur is not None and b"s" in cur.content:
            replies[i] = text(cur.content[b"s"])
            continue
        if room is not None and room <= 0:
            replies[i] = f"full: {most}"
            model.counts["refused"] += count_refused
            continue
        due = job.due_at_ms or (now + job.delay_ms if job.delay_ms else 0)
        expires = job.expires_at_ms or (now + job.expires_in_ms if job.expires_in_ms else 0)
        fields: dict[bytes, Any]
        if due > now:
            old = model.space.get(delayed)
            if old is not None and old.kind != "zset":
                replies[i] = Prefix(b"error: ")
                continue
            zadd(model.space, delayed, job.id.encode(), due)
            fields = {b"j": job.spec, b"a": b"0", b"q": num(now), b"s": b"scheduled",
                      b"d": num(due)}
        else:
            if not is_stream:
                replies[i] = Prefix(b"error: ")
                continue
            fields = {b"j": job.spec, b"a": b"0", b"s": b"queued",
                      b"e": model.add(stream, [b"i", job.id.encode()])}
        if expires:
            fields[b"x"] = num(expires)
        model.space[key] = Key("hash", cur.ttl if cur else False,
                               {**(cur.content if cur else {}), **fields})
        model.counts["enqueued"] += 1
        room = None if room is None else room - 1
    model.count_into(k.stats.encode())
    return replies, model


@settings(FUZZ, max_examples=150)
@given(batch=st.lists(plans, min_size=1, max_size=8), data=st.data())
def test_enqueue_writes_each_job_whole_or_not_at_all(
    backend: Backend, batch: list[Plan], data: st.DataObject
) -> None:
    """...and never past the queue's maximum length: a new job that finds no room is not
    written at all (``full: <max>``); a dedup'd one takes no room."""
    existing = {i: data.draw(st.sampled_from(EXISTING), f"key of {i}")
                for i in sorted({p.id for p in batch})}
    state = data.draw(st.one_of(st.sampled_from(STATES), junk), "state of existing records")
    queue_keys = data.draw(st.fixed_dictionaries(
        {"stream": st.sampled_from(QUEUE_KEY_STATE), "delayed": st.sampled_from(QUEUE_KEY_STATE),
         "stats": st.sampled_from(QUEUE_KEY_STATE)}), "queue keys")
    most = data.draw(MAX_LENGTHS, "settings: max_length")
    count_refused = data.draw(st.booleans(), "count refused")

    async def body(env: Env) -> None:
        client, k = env.client, env.keys
        now = await redis_ms(client)
        await client.zadd(k.delayed, {b"older": now + 5 * 10**8})
        for job_id, what in existing.items():
            if what == "hash":
                await client.hset(env.job(job_id), mapping={b"s": state, b"j": b"old"})
            elif what == "hash without a state":
                await client.hset(env.job(job_id), b"p", b"progress")
            elif what:
                await make_wrong(client, env.job(job_id), what)
        for name, kind in queue_keys.items():
            if kind:
                await make_wrong(client, getattr(k, name), kind)
        if most in WRONG_TYPES:
            await make_wrong(client, k.settings, str(most))
        elif most is not None:
            await client.hset(k.settings, b"max_length", most)
        times = {PAST: now - 60_000, FUTURE: now + 10**9}
        jobs = [NewJob(p.id, p.spec, p.delay, times.get(p.at, p.at), p.expires_in,
                       times.get(p.expires_at, p.expires_at)) for p in batch]
        before = await snapshot(client, k)
        lo = await redis_ms(client)
        replies = await env.store.enqueue(jobs, count_refused=count_refused)
        hi = await redis_ms(client)
        after = await snapshot(client, k)
        want, _ = model_enqueue(env, jobs, before, lo, count_refused)
        assert set(replies) == set(want)
        for i, reply in replies.items():
            assert same(want[i], reply.encode()) if isinstance(want[i], Prefix) \
                else reply == want[i], (i, jobs[i])
            event(f"enqueue reply {reply.split(':')[0] if ':' in reply else 'ok'}")
        if len(replies) < len(jobs):
            event("enqueue created some")
        assert_model(lambda t: model_enqueue(env, jobs, before, t, count_refused)[1], lo, hi,
                     before, after)
        room = model_room(env, before)[1]
        if room is not None:
            event("enqueue with a maximum")
            created = len(jobs) - len(replies)
            assert created <= max(room, 0), "never past the maximum"
        stream = after.get(k.stream.encode())
        if stream is not None and stream.kind == "stream":
            old = before[k.stream.encode()].content if k.stream.encode() in before else None
            assert stream.content.pending == (old.pending if old else ())

    run(backend, body)


# -- promote.lua -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """One member of the delayed set and what its job key holds."""

    what: str  # scheduled | record | gone | one of WRONG_TYPES
    score: Any  # ms, or FUTURE
    fields: tuple[tuple[bytes, Any], ...] = ()


dues = st.builds(
    Due,
    what=st.one_of(st.just("scheduled"),
                   st.sampled_from(("scheduled", "record", "gone", *WRONG_TYPES))),
    score=st.one_of(st.sampled_from((0, 1, 5, PAST, FUTURE)), st.integers(0, 10**6)),
    fields=st.one_of(
        st.just(()), st.just(((b"x", PAST),)), st.just(((b"x", FUTURE),)),
        st.lists(st.tuples(st.sampled_from((b"s", b"x", b"q", b"e")),
                           st.one_of(st.sampled_from((PAST, FUTURE)), junk)),
                 max_size=2).map(tuple)),
)


def model_promote(env: Env, members: dict[bytes, float], limit: int, ttl: int, before: Space,
                  now: int) -> tuple[tuple[int, int, int | None], Model]:
    k = env.keys
    stream, dead, delayed = k.stream.encode(), k.dead.encode(), k.delayed.encode()
    model = Model({n: v for n, v in before.items() if n not in (stream, dead)},
                  {stream: [], dead: []})
    due = sorted((m for m, score in members.items() if score <= now),
                 key=lambda m: (members[m], m))[:limit]
    left = {m: s for m, s in members.items() if m not in due}
    if left:
        model.space[delayed] = Key("zset", before[delayed].ttl, tuple(
            sorted(left.items(), key=lambda m: (m[1], m[0]))))
    else:
        model.space.pop(delayed, None)
    promoted = expired = 0
    ended: list[bytes] = []
    for job_id in due:
        key = env.job(job_id)
        cur = model.space.get(key)
        if cur is not None and cur.kind != "hash":
            model.add(dead, [b"i", job_id, b"r", f"the job key {text(key)} {NOT_HASH}".encode(),
                             b"t", num(now)])
            model.counts["failed"] += 1
            continue
        if cur is None or cur.content.get(b"s") != b"scheduled":
            continue
        expires = lua_int(cur.content.get(b"x"))
        if expires is not None and now >= expires:
            expired += 1
            model.counts["expired"] += 1
            ended += [job_id, num(now)]
            if ttl == 0:
                del model.space[key]
            else:
                model.space[key] = Key("hash", True, {**cur.content, b"s": b"expired",
                                                      b"et": num(now)})
        else:
            promoted += 1
            entry = model.add(stream, [b"i", job_id])
            model.space[key] = Key("hash", cur.ttl, {**cur.content, b"s": b"queued",
                                                     b"e": entry})
    model.count_into(k.stats.encode())
    model.note_ended(k.ended.encode(), ended)
    first = min(left.values()) if left else None
    return (promoted, expired, None if first is None else int(first)), model


@settings(FUZZ, max_examples=100)
@given(members=st.lists(dues, min_size=1, max_size=10), limit=st.integers(1, 10),
       ttl=st.sampled_from((0, 60)), stats=st.sampled_from(QUEUE_KEY_STATE),
       ended_index=st.sampled_from(ENDED_STATES))
def test_promote_moves_each_due_job_once_and_dead_letters_unreadable_ones(
    backend: Backend, members: list[Due], limit: int, ttl: int, stats: str, ended_index: str
) -> None:
    async def body(env: Env) -> None:
        client, k = env.client, env.keys
        now = await redis_ms(client)
        times = {PAST: now - 60_000, FUTURE: now + 10**9}
        for n, due in enumerate(members):
            key = env.job(f"d{n}")
            if due.what in ("scheduled", "record"):
                job = NewJob(f"d{n}", encode_spec(JobSpec("fuzz", [n])), delay_ms=10**9)
                assert await env.store.enqueue([job]) == {}
                if due.what == "record":  # no longer scheduled: aborted, requeued...
                    await client.hset(key, b"s", b"queued")
                for name, value in due.fields:
                    await client.hset(key, name, times.get(value, value))
            elif due.what != "gone":
                await make_wrong(client, key, due.what)
            await client.zadd(k.delayed, {f"d{n}": times.get(due.score, due.score)})
        if stats:
            await make_wrong(client, k.stats, stats)
        if ended_index:
            await make_wrong(client, k.ended, ended_index)
        before = await snapshot(client, k)
        scores = dict(before[k.delayed.encode()].content)
        lo = await redis_ms(client)
        got = await env.store.promote(limit, ttl)
        hi = await redis_ms(client)
        after = await snapshot(client, k)
        assert lo <= got.now_ms <= hi
        want, _ = model_promote(env, scores, limit, ttl, before, got.now_ms)
        assert (got.promoted, got.expired, got.next_due_ms) == want
        event(f"promoted {min(got.promoted, 2)}+, expired {min(got.expired, 2)}+")
        assert_model(lambda t: model_promote(env, scores, limit, ttl, before, t)[1],
                     got.now_ms, got.now_ms, before, after)
        queued = Counter(f[1] for _, f in added(before, after, k.stream.encode()))
        assert all(n == 1 for n in queued.values()), "a job is promoted at most once"

    run(backend, body)


# -- reschedule.lua --------------------------------------------------------------------------


STREAM_ID = re.compile(rb"^(\d+)-(\d+)$")


def _id_key(entry: bytes) -> tuple[int, int]:
    found = STREAM_ID.match(entry)
    assert found
    return int(found[1]), int(found[2])


def canonical(entry: bytes) -> bytes | None:
    """The entry id Redis reads ``entry`` as (``b"01-0"`` -> ``b"1-0"``), None if none."""
    found = STREAM_ID.match(entry)
    if not found or max(int(found[1]), int(found[2])) >= 2**64:
        return None
    return b"%d-%d" % (int(found[1]), int(found[2]))


def job_of(fields: tuple[bytes, ...]) -> bytes:
    """The prelude's ``job_id_of()``: the last ``i`` field's value, or empty."""
    found = b""
    for name, value in zip(fields[::2], fields[1::2], strict=False):
        if name == b"i":
            found = value
    return found


Lost = dict[bytes, tuple[bytes | None, bytes | None]]
"""Job key -> (its record's entry id, None if none; the entry of the stream that id names
when it is this job's, which the repair deletes, else None)."""


async def unreachable(client: Redis, stream: str, job_prefix: str, before: Space,
                      state: bytes = b"queued") -> Lost:
    """reschedule.lua's model for one level: the records that say queued but whose entry the
    group will never hand to a worker: not an entry id, not in the stream as written (start
    compares the text), another job's, or at or before the group's last delivered id and
    pending for nobody. Nothing when the stream key holds another type (left alone)."""
    held = before.get(stream.encode())
    if held is not None and held.kind != "stream":
        return {}
    entries = dict(held.content.entries) if held else {}
    pending = {e for e, _, _ in held.content.pending} if held else set()
    last = None
    if held is not None:
        for group in await client.xinfo_groups(stream):
            if group["name"] == GROUP.encode():
                last = group["last-delivered-id"]
    prefix = job_prefix.encode()
    found: Lost = {}
    for name, key in before.items():
        if not name.startswith(prefix) or key.kind != "hash" \
                or key.content.get(b"s") != state:
            continue
        entry = key.content.get(b"e")
        real = canonical(entry) if entry is not None else None
        own = real if real in entries and job_of(entries[real]) == name[len(prefix):] \
            else None
        reachable = (own is not None and own == entry
                     and (last is None or _id_key(own) > _id_key(last) or own in pending))
        if not reachable:
            found[name] = (entry, own)
    return found


def check_requeued(before: Space, after: Space, stream: str, job_prefix: str, lost: Lost,
                   lo: int, hi: int) -> None:
    """Each record in ``lost`` (see ``unreachable``) points at a new entry of ``stream``
    holding its id, one each; it keeps its enqueue time (``q``; from its old entry id when it
    had none, else now); its own old entry left the stream; nothing else of the stream
    changed."""
    name = stream.encode()
    if not lost:
        assert after.get(name) == before.get(name), "a stream with nothing to put back stays"
        return
    old = before[name].content if name in before else Stream((), (), frozenset())
    new = after[name].content
    dropped = {own for _, own in lost.values() if own is not None}
    kept = tuple(x for x in old.entries if x[0] not in dropped)
    assert new.entries[:len(kept)] == kept, "the stream's other entries stay"
    added = dict(new.entries[len(kept):])
    assert len(added) == len(lost), "one new entry per job put back"
    assert new.pending == old.pending and new.consumers == old.consumers
    for key, (entry, _) in lost.items():
        was, now = before[key].content, after[key].content
        assert added.get(now.get(b"e")) == (b"i", key[len(job_prefix):]), (key, now)
        want = {**was, b"e": now[b"e"]}
        if lua_int(was.get(b"q")) is None:
            if entry is not None and STREAM_ID.match(entry):
                want[b"q"] = num(entry_ms(entry))
            else:
                q = lua_int(now.get(b"q"))
                assert q is not None and lo <= q <= hi, now
                want[b"q"] = now[b"q"]
        assert now == want, (key, was, now)


@dataclass(frozen=True)
class Waiting:
    """One job record of a level, and whether its level's delayed set still holds it."""

    what: str  # a state, "no state", or one of WRONG_TYPES (the job key's type)
    due: Any  # the record's `d`: PAST, FUTURE, junk, or DELETE (none)
    in_set: bool
    entry: Any  # the record's `e`: one of ENTRY_KINDS (an entry made so), junk, or DELETE


ENTRY_KINDS = ("new", "pending", "acknowledged", "padded", "gone", "another job's")
"""A stream entry for the record's `e`: not delivered yet, delivered and pending, delivered
and acknowledged (or passed by the group, never to be delivered), a new one's id with a
leading zero, an id not in the stream, or the entry of another job."""


RECORD_STATES = ("scheduled", "queued", "running", "complete", "failed", "no state",
                 "Scheduled", "scheduled ")
waitings = st.builds(
    Waiting,
    what=st.one_of(st.sampled_from(("scheduled", "queued", "running")),
                   st.sampled_from((*RECORD_STATES, *WRONG_TYPES))),
    due=st.one_of(st.sampled_from((PAST, FUTURE, DELETE)), junk),
    in_set=st.booleans(),
    entry=st.one_of(st.sampled_from((*ENTRY_KINDS, DELETE)), junk),
)


async def scan_count(client: Redis, count: int) -> int:
    """``count``, raised so that a SCAN pass over the whole server takes at most about 200
    steps: a shared real server holds the keys of every other test (tens of thousands on
    CI), and COUNT 1 over them outlasted the test's timeout."""
    return max(count, await client.dbsize() // 200 + 1)


@settings(FUZZ, max_examples=100)
@given(levels=st.lists(st.lists(waitings, max_size=6), min_size=1, max_size=3),
       sets=st.lists(st.sampled_from(("", "", "", *WRONG_TYPES, "hash")), min_size=3,
                     max_size=3),
       streams=st.lists(st.sampled_from(("", "", "", "none", "string", "zset", "hash")),
                        min_size=3, max_size=3),
       count=st.sampled_from((1, 2, 10, 1000)), decoy=st.booleans())
def test_reschedule_puts_back_exactly_the_waiting_jobs_their_set_or_stream_lost(
    backend: Backend, levels: list[list[Waiting]], sets: list[str], streams: list[str],
    count: int, decoy: bool
) -> None:
    """A SCAN of the levels' job keys, step by step: a record that says scheduled and is not
    in its level's delayed set goes back in, at its due time (now if that is not a time); one
    that says queued and whose entry the group will never hand out gets a new entry, once;
    nothing else in the queue changes, and a delayed set or stream of the wrong type is left
    alone."""
    async def body(env: Env) -> None:
        client = env.client
        stores = [QueueStore(client, Keys(env.keys.prefix, name))
                  for name in members(env.keys.queue)[:len(levels)]]
        now = await redis_ms(client)
        times = {PAST: now - 60_000, FUTURE: now + 10**9}
        want: dict[bytes, dict[bytes, int | None]] = {}  # delayed set -> id -> score (None: now)
        for store, jobs, kind, skind in zip(stores, levels, sets, streams, strict=False):
            delayed, stream = store.keys.delayed, store.keys.stream
            if kind:  # of the wrong type, or ("zset") a set holding a junk member already
                await make_wrong(client, delayed, kind)
            if skind == "none":
                await client.delete(stream)
            elif skind:
                await make_wrong(client, stream, skind)
            other = None
            if not skind:  # a stream with its group (and an entry of another job)
                other = await client.xadd(stream, {b"i": b"other"})
                with contextlib.suppress(ResponseError):
                    await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            for n, w in enumerate(jobs):
                job_id, key = f"r{n}", store.keys.job(f"r{n}")
                if w.what in WRONG_TYPES:
                    await make_wrong(client, key, w.what)
                    continue
                fields: dict[bytes, bytes] = {b"j": SPEC, b"a": b"0"}
                if w.what != "no state":
                    fields[b"s"] = w.what.encode()
                if w.due is not DELETE:
                    fields[b"d"] = num(times[w.due]) if w.due in times else w.due
                if w.entry == "gone":
                    fields[b"e"] = b"1-1"
                elif w.entry == "another job's":
                    fields[b"e"] = other or b"1-2"
                elif w.entry in ENTRY_KINDS and not skind:
                    fields[b"e"] = await client.xadd(stream, {b"i": job_id.encode()})
                    if w.entry == "padded":
                        fields[b"e"] = b"0" + fields[b"e"]
                    elif w.entry != "new":
                        await client.xreadgroup(GROUP, "ghost", {stream: ">"})
                    if w.entry == "acknowledged":
                        await client.xack(stream, GROUP, fields[b"e"])
                elif w.entry not in ENTRY_KINDS and w.entry is not DELETE:
                    fields[b"e"] = w.entry
                await client.hset(key, mapping=fields)
                if kind not in ("", "zset"):
                    continue
                if w.in_set:
                    await client.zadd(delayed, {job_id: 7})
                elif w.what == "scheduled":
                    due = lua_int(fields.get(b"d"))
                    want.setdefault(delayed.encode(), {})[job_id.encode()] = (
                        due if due is not None and due >= 0 else None)
        if decoy:  # matches the pattern of several levels, under no job key prefix
            await client.hset(f"{env.keys.shared}:conc:5:x:job:r0",
                              mapping={b"s": b"scheduled", b"d": b"5"})
        before = await snapshot(client, env.keys)
        lost = [await unreachable(client, st_.keys.stream, st_.keys.job_prefix, before)
                for st_ in stores]
        orphans = {(level, key[len(st_.keys.job_prefix):])
                   for level, st_ in enumerate(stores)
                   for key in await unreachable(client, st_.keys.stream, st_.keys.job_prefix,
                                                before, b"running")}
        lo = await redis_ms(client)
        cursor, restored, earliest, steps, requeued = "0", 0, [], 0, 0
        reported: list[tuple[int, bytes | str]] = []
        step_count = await scan_count(client, count)
        while True:
            step = await reschedule_levels(stores, cursor, step_count)
            restored += step.restored
            requeued += step.requeued
            reported += [(o.level, o.job_id) for o in step.orphans]
            earliest += [] if step.earliest_ms is None else [step.earliest_ms]
            cursor, steps = step.cursor, steps + 1
            if cursor == "0" or steps > 10_000:
                break
        hi = await redis_ms(client)
        after = await snapshot(client, env.keys)
        assert cursor == "0"
        sets_ = {st_.keys.delayed.encode() for st_ in stores}
        streams_ = {st_.keys.stream.encode() for st_ in stores}
        records = {key for one in lost for key in one}
        written = sets_ | streams_ | records
        assert {n: k for n, k in after.items() if n not in written} == \
            {n: k for n, k in before.items() if n not in written}, "nothing else is written"
        for st_, one in zip(stores, lost, strict=True):
            check_requeued(before, after, st_.keys.stream, st_.keys.job_prefix, one, lo, hi)
        assert requeued == len(records)
        assert sorted(reported) == sorted(orphans), "running jobs no reclaim will take over"
        scores: list[float] = []
        for name in sets_:
            if name in before and before[name].kind != "zset":
                assert after.get(name) == before[name]
                continue
            old = dict(before[name].content) if name in before else {}
            new = dict(after[name].content) if name in after else {}
            added = {m: sc for m, sc in new.items() if m not in old}
            assert {m: new[m] for m in old} == old, "members already there keep their score"
            assert set(added) == set(want.get(name, {}))
            for member, score in added.items():
                due = want[name][member]
                assert score == due if due is not None else lo <= score <= hi, (member, score)
                scores.append(score)
        assert restored == len(scores)
        assert (min(earliest) if earliest else None) == (min(scores) if scores else None)
        event(f"put back {min(restored, 3)}+ and queued {min(requeued, 3)}+ in "
              f"{min(steps, 3)}+ steps")

    run(backend, body)


@pytest.mark.parametrize(("kind", "put_back"), [
    ("new", False), ("pending", False), ("acknowledged", True), ("passed by the group", True),
    ("padded", True), ("gone", True), ("another job's", True), ("junk", True),
    ("none", True), ("stream deleted", True), ("stream a string", False),
])
def test_reschedule_puts_back_a_queued_job_by_where_its_entry_is(
    backend: Backend, kind: str, put_back: bool
) -> None:
    """Each way a queued job's entry can be, one by one (the Hypothesis test above mixes
    them): put back exactly when the group will never hand that entry to a worker, with its
    own old entry deleted and another job's left alone."""
    async def body(env: Env) -> None:
        client, k = env.client, env.keys
        other = await client.xadd(k.stream, {b"i": b"other"})
        entry = await client.xadd(k.stream, {b"i": b"j"})
        fields = {b"j": SPEC, b"a": b"0", b"s": b"queued", b"e": entry}
        if kind in ("pending", "acknowledged"):
            await client.xreadgroup(GROUP, "ghost", {k.stream: ">"})
            if kind == "acknowledged":
                await client.xack(k.stream, GROUP, entry)
        elif kind == "passed by the group":
            await client.xgroup_setid(k.stream, GROUP, "$")
        elif kind == "padded":
            fields[b"e"] = b"00" + entry
        elif kind == "gone":
            await client.xdel(k.stream, entry)
        elif kind == "another job's":
            fields[b"e"] = other
        elif kind == "junk":
            fields[b"e"] = b"\xff1-x"
        elif kind == "none":
            del fields[b"e"]
        elif kind == "stream deleted":
            await client.delete(k.stream)
        elif kind == "stream a string":
            await make_wrong(client, k.stream, "string")
        await client.hset(env.job("j"), mapping=fields)
        before = await snapshot(client, k)
        step = await reschedule_levels([env.store], "0", await scan_count(client, 1000))
        while step.cursor != "0":
            step = await reschedule_levels([env.store], step.cursor, 1000)
        after = await snapshot(client, k)
        now = after[env.job("j")].content
        if not put_back:
            assert after == before
            return
        stream = dict(after[k.stream.encode()].content.entries)
        if kind == "stream deleted":
            # Put back into a stream that no longer existed: it comes back holding that job's
            # entry alone. (The new entry's id can equal the deleted one's: a recreated stream
            # numbers from 0 again, and the same millisecond gives the same id.)
            assert k.stream.encode() not in before
            assert stream == {now[b"e"]: (b"i", b"j")}
            return
        assert now[b"e"] != fields.get(b"e")
        assert stream[now[b"e"]] == (b"i", b"j")
        assert (entry in stream) == (kind in ("another job's", "junk", "none")), \
            "its own old entry goes; one it does not name stays"
        assert other in stream

    run(backend, body)


@pytest.mark.parametrize("change", ["none", "attempts", "worker", "entry", "state",
                                    "pending again", "kept", "started lately"])
def test_revive_puts_back_only_a_running_job_still_as_it_was_found(
    backend: Backend, change: str
) -> None:
    """A running job whose entry no reclaim will take over (its consumer deleted by hand),
    reported by a scan and given back: put back in the stream, still running, only if its
    record and entry are as the scan found them; a job started again, settled, or whose
    entry is pending again meanwhile is left alone."""
    async def body(env: Env) -> None:
        client, k = env.client, env.keys
        entry = await client.xadd(k.stream, {b"i": b"j"})
        await client.xreadgroup(GROUP, "gone", {k.stream: ">"})
        await client.hset(env.job("j"), mapping={b"j": SPEC, b"a": b"1", b"s": b"running",
                                                 b"w": b"gone", b"e": entry})
        await client.xgroup_delconsumer(k.stream, GROUP, "gone")
        step = await reschedule_levels([env.store], "0", await scan_count(client, 1000))
        found = list(step.orphans)
        while step.cursor != "0":
            step = await reschedule_levels([env.store], step.cursor, 1000)
            found += step.orphans
        assert found == [Orphan(0, b"j", b"gone", b"1", entry)]
        if change == "attempts":
            await client.hset(env.job("j"), b"a", b"2")
        elif change == "worker":
            await client.hset(env.job("j"), b"w", b"other")
        elif change == "entry":
            await client.hset(env.job("j"), b"e", await client.xadd(k.stream, {b"i": b"j"}))
        elif change == "state":
            await client.hset(env.job("j"), b"s", b"complete")
        elif change == "pending again":
            await client.xgroup_setid(k.stream, GROUP, "0")
            await client.xreadgroup(GROUP, "new", {k.stream: ">"})
        elif change == "kept":  # a live worker's keep-alive stamped it a claim timeout ago
            await client.hset(env.job("j"), b"kt", num(await redis_ms(client) - 59_000))
        elif change == "started lately":
            await client.hset(env.job("j"), b"st", num(await redis_ms(client) - 59_000))
        before = await snapshot(client, k)
        assert await revive_levels([env.store], found, 60_000) == (change == "none")
        after = await snapshot(client, k)
        if change != "none":
            assert after == before
            return
        rec = after[env.job("j")].content
        stream = dict(after[k.stream.encode()].content.entries)
        assert entry not in stream and stream[rec[b"e"]] == (b"i", b"j")
        assert {**rec, b"e": entry} == {**before[env.job("j")].content,
                                        b"q": num(entry_ms(entry))}
        # the next pass finds it reachable: nothing more to report or put back
        step = await reschedule_levels([env.store], "0", await scan_count(client, 1000))
        again: list[object] = [*step.orphans, step.requeued]
        while step.cursor != "0":
            step = await reschedule_levels([env.store], step.cursor, 1000)
            again += [*step.orphans, step.requeued]
        assert not any(again)

    run(backend, body)


# -- the other scripts on garbage records ---------------------------------------------------

record_fields = st.dictionaries(st.sampled_from(sorted(field_value)), st.none(), min_size=1,
                                max_size=3)


async def garbage_queue(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    """A queue in use, then garbage: entries started, taken over, acknowledged or deleted;
    records rewritten after the start; dead letters, some with a garbage record."""
    client, k = env.client, env.keys
    await build(env, batch)
    await env.store.take(ME, 100)
    now = await redis_ms(client)
    for n, case in enumerate(batch):
        how = data.draw(st.sampled_from(OWNERSHIP), f"entry {n}")
        if how == "claimed":
            await client.xclaim(k.stream, GROUP, OTHER, 0, [case.entry])
        elif how == "acked":
            await client.xack(k.stream, GROUP, case.entry)
        elif how == "deleted":
            await client.xdel(k.stream, case.entry)
        key = env.job(case.job_id)
        then = data.draw(st.sampled_from((*AFTERWARDS, "fields", "fields", "dead")),
                         f"record {n}")
        if not case.job_id or (then in ("fields", "dead")
                               and await client.type(key) not in (b"hash", b"none")):
            continue
        if then == "gone":
            await client.delete(key)
        elif then in WRONG_TYPES:
            await make_wrong(client, key, then)
        elif then == "fields":
            names = data.draw(record_fields, f"fields {n}")
            later = Case("fields", {f: data.draw(field_value[f]) for f in names},
                         entry=case.entry)
            await corrupt(env, key, later, now)
        elif then == "dead":
            letter = await client.xadd(k.dead, {b"i": case.job_id, b"r": b"why"})
            de = data.draw(st.one_of(st.just(letter), junk), f"letter of {n}")
            await client.hset(key, mapping={b"s": b"failed", b"de": de})


def job_ids(batch: Sequence[Case]) -> list[bytes]:
    return list(dict.fromkeys(c.job_id for c in batch if c.job_id))


async def record(env: Env, job_id: bytes) -> Key | None:
    return await read_key(env.client, env.job(job_id))


async def pending_mine(env: Env) -> list[tuple[bytes, int]]:
    rows = await env.client.xpending_range(env.keys.stream, GROUP, "-", "+", 10_000, ME)
    return [(r["message_id"], r["times_delivered"]) for r in rows]


async def orphaned(env: Env, batch: Sequence[Case], held: set[bytes]) -> set[bytes]:
    """The entries of ``batch`` that are orphans (see ``orphans`` in the scripts' prelude):
    not in ``held``, pending for no consumer, a stream id, and their job's record a hash
    that says it runs on that entry."""
    try:
        rows = await env.client.xpending_range(env.keys.stream, GROUP, "-", "+", 10_000)
    except ResponseError:  # no group: nothing is pending
        rows = []
    pending = {r["message_id"] for r in rows}
    found = set()
    for case in batch:
        if case.entry in held or case.entry in pending or not case.job_id \
                or not re.fullmatch(rb"\d+-\d+", case.entry):
            continue
        rec = await record(env, case.job_id)
        if rec and rec.kind == "hash" and rec.content.get(b"s") == b"running" \
                and rec.content.get(b"e") == case.entry:
            found.add(case.entry)
    return found


async def check_touch(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    held = [Delivery(text(c.entry), text(c.job_id)) for c in batch]
    mine = dict(await pending_mine(env))
    orphans = await orphaned(env, batch, set(mine))
    lost_want = [d.entry for d in held
                 if d.entry.encode() not in mine and d.entry.encode() not in orphans]
    abort_want = []
    for d in held:
        rec = await record(env, d.job_id.encode()) if d.job_id else None
        if (d.entry.encode() in mine or d.entry.encode() in orphans) \
                and rec and rec.kind == "hash" and b"ab" in rec.content:
            abort_want.append(d.job_id)
    lost, aborted = await env.store.touch(ME, held)
    assert (lost, aborted) == (lost_want, abort_want)
    after = dict(await pending_mine(env))
    existing = {e for e, _ in await env.client.xrange(env.keys.stream)}
    assert {e: n for e, n in mine.items() if e in existing} == \
        {e: n for e, n in after.items() if e in existing}, "touch counts no delivery"


def live_record(rec: Key | None, entry: bytes) -> bool:
    return bool(rec and rec.kind == "hash" and rec.content.get(b"e") == entry
                and rec.content.get(b"s") in (b"running", b"queued"))


async def check_handback(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    client, k = env.client, env.keys
    mine = [e for e, _ in await pending_mine(env)]
    keep = data.draw(st.lists(st.sampled_from([c.entry for c in batch]), unique=True), "keep")
    most = data.draw(st.sampled_from((1, 2, 1000)), "most")
    before = await snapshot(client, k)
    fields = stream_fields(before, k.stream)
    handed = [e for e in mine[:most] if e not in keep]
    remaining = [e for e in mine if e not in handed]
    rest = remaining[:len(keep) + 1]
    model = Model({n: v for n, v in before.items() if n != k.stream.encode()},
                  {k.stream.encode(): []})
    for entry in handed:
        found = list(fields.get(entry, ()))
        job_id = next((found[i + 1] for i in range(0, len(found) - 1, 2) if found[i] == b"i"),
                      b"")
        rec = before.get(env.job(job_id)) if job_id else None
        live = live_record(rec, entry)
        readable = rec is not None and rec.kind == "hash" and b"s" in rec.content
        if not found or not (live or not readable):
            continue
        fresh = model.add(k.stream.encode(), found)
        if live:
            assert rec is not None
            change: dict[bytes, Any] = {b"s": b"queued", b"e": fresh}
            if lua_int(rec.content.get(b"q")) is None:
                change[b"q"] = num(entry_ms(entry))
            attempts = lua_int(rec.content.get(b"a"))
            if rec.content[b"s"] == b"running" and rec.content.get(b"w") == ME.encode() \
                    and attempts and attempts > 0:
                change[b"a"] = num(attempts - 1)
            model.space[env.job(job_id)] = Key("hash", rec.ttl, {**rec.content, **change})
    moved, left = await env.store.handback(ME, [text(e) for e in keep], most)
    after = await snapshot(client, k)
    assert (moved, left) == (len(handed), sum(e not in keep for e in rest))
    event(f"handed back {'some' if handed else 'none'}")
    assert_model(lambda _: model, 0, 0, before, after)
    old, new = before[k.stream.encode()].content, after[k.stream.encode()].content
    fresh_entries = {e for e, _ in added(before, after, k.stream.encode())}
    assert [e for e in new.entries if e[0] not in fresh_entries] == \
        [e for e in old.entries if e[0] not in handed]
    assert new.pending == tuple(p for p in old.pending if p[0] not in handed)
    assert (ME.encode() in new.consumers) == bool(rest), "the consumer goes once it holds none"


async def check_abort(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    for job_id in [*job_ids(batch), b"nobody"]:
        rec = await record(env, job_id)
        state = await env.store.abort(text(job_id), 60)
        if rec is not None and rec.kind != "hash":
            assert state == "unreadable"
        elif rec is None or b"s" not in rec.content:
            assert state == "missing"
        else:
            assert state == text(rec.content[b"s"])
            after = await record(env, job_id)
            assert after is not None
            if rec.content[b"s"] in (b"queued", b"scheduled"):
                assert after.content[b"s"] == b"aborted"
            elif rec.content[b"s"] == b"running":
                assert after.content == {**rec.content, b"ab": b"1"}
            else:
                assert after.content == rec.content
        event(f"abort {state if state in ('unreadable', 'missing') else 'state'}")


async def check_requeue(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    client, k = env.client, env.keys
    for job_id in [*job_ids(batch), b"nobody"]:
        rec = await record(env, job_id)
        letters = {e for e, _ in await client.xrange(k.dead)}
        state = await env.store.requeue(text(job_id))
        if rec is not None and rec.kind != "hash":
            assert state == "unreadable"
        elif rec is None or b"s" not in rec.content:
            assert state == "missing"
        elif rec.content[b"s"] == b"queued":
            assert state == "already queued"  # (its state would read as the success)
        elif rec.content[b"s"] != b"failed":
            assert state == text(rec.content[b"s"])
        else:
            assert state == "queued"
            after = await record(env, job_id)
            assert after is not None and not after.ttl
            gone = {b"dl", b"de", b"et", b"w", b"ab", b"r", b"x", b"d"}
            assert after.content == {
                **{f: v for f, v in rec.content.items() if f not in gone},
                b"s": b"queued", b"a": b"0", b"e": after.content[b"e"]}
            [(_, entry)] = await client.xrange(k.stream, after.content[b"e"],
                                               after.content[b"e"])
            assert entry == {b"i": job_id}
            de = rec.content.get(b"de")
            if de in letters:
                assert not await client.xrange(k.dead, de, de)
        event(f"requeue {state}")


async def check_purge(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    client, k = env.client, env.keys
    letters = [(e, f.get(b"i", b"")) for e, f in await client.xrange(k.dead)]
    letters += [(b"1-1", c.job_id) for c in batch[:1]]  # a letter already purged
    records = {i: await record(env, i) for _, i in letters if i}
    want_gone = {i for e, i in letters if i and (r := records[i]) is not None
                 and r.kind == "hash" and r.content.get(b"s") == b"failed"
                 and r.content.get(b"de") == e}
    deleted = await env.store.purge_dead([(text(e), text(i)) for e, i in letters])
    assert deleted == len(letters) - 1
    assert await client.xlen(k.dead) == 0
    for i, rec in records.items():
        assert await record(env, i) == (None if i in want_gone else rec)
    event(f"purge deleted {'some' if want_gone else 'no'} records")


async def check_progress(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    for job_id in [*job_ids(batch), b"nobody"]:
        rec = await record(env, job_id)
        ours = bool(rec and rec.kind == "hash" and rec.content.get(b"s") == b"running"
                    and rec.content.get(b"w") == ME.encode())
        assert await env.store.progress(text(job_id), b"\x93\x01\xa0\x00", ME) is ours
        after = await record(env, job_id)
        assert after == (Key("hash", rec.ttl, {**rec.content, b"p": b"\x93\x01\xa0\x00"})
                         if ours and rec else rec)
        event(f"progress {ours}")


async def check_cron(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    client, k = env.client, env.keys
    ids = job_ids(batch)
    for n in range(3):
        name = f"cron{n}"
        cursor = data.draw(st.one_of(st.none(), junk), f"cursor {n}")
        if cursor is not None:
            await client.hset(k.cron, name, cursor)
        if ids and data.draw(st.booleans(), f"has a last job {n}"):
            last_id = data.draw(st.sampled_from(ids))
            if data.draw(st.booleans(), f"the last job is one of its ticks {n}"):
                own = f"cron:{name}:prev".encode()
                held = data.draw(st.sampled_from(("hash", "hash", "", *WRONG_TYPES)),
                                 f"key of its last tick {n}")
                if held == "hash":
                    await client.hset(env.job(own), b"s", data.draw(
                        st.one_of(st.sampled_from(STATES), junk), f"its last tick's state {n}"))
                elif held:
                    await make_wrong(client, env.job(own), held)
                last_id = own
            await client.hset(k.cron, f"{name}:job", last_id)
        tick = data.draw(st.sampled_from((0, 3, 5, 10**12)), f"tick {n}")
        job_id = f"cron:{name}:{tick}"
        kind = data.draw(st.sampled_from(("", "", "hash", *WRONG_TYPES)), f"key of {job_id}")
        if kind:
            await make_wrong(client, env.job(job_id), kind)
        fire, no_overlap = data.draw(st.booleans()), data.draw(st.booleans())
        last = await client.hget(k.cron, f"{name}:job")
        # only one of its own tick ids names a previous run
        own_tick = last is not None and last.startswith(f"cron:{name}:".encode())
        previous = await record(env, last) if own_tick else None
        reply = await env.store.cron_tick(name, tick, job_id, b"\x91\xa4fuzz", fire=fire,
                                          no_overlap=no_overlap)
        old = lua_int(cursor)
        if tick <= (-1 if old is None else old):
            want = "stale"
        elif not fire:
            want = "advanced"
        elif no_overlap and previous and previous.kind == "hash" and \
                previous.content.get(b"s") in (b"queued", b"running", b"scheduled"):
            want = "overlap"
        elif kind:
            want = "duplicate"
        else:
            want = "enqueued"
        assert reply == want
        event(f"cron {reply}")
        # 'reset' sets the cursor back only while it holds what the caller read
        now_raw = await client.hget(k.cron, name)
        read = now_raw if now_raw is not None and data.draw(st.booleans(), f"read {n}") \
            else data.draw(junk, f"read instead {n}")
        reset = await env.store.cron_reset(name, read, 7)
        assert reset == ("reset" if read == now_raw else "stale")
        assert await client.hget(k.cron, name) == (b"7" if read == now_raw else now_raw)
        event(f"cron reset {reset}")


async def check_reclaim(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    client, k = env.client, env.keys
    count = data.draw(st.integers(1, 10), "count")
    fields = dict(await raw_xrange(client, k.stream))
    _, got = await env.store.reclaim(ME, 0, count, "0-0")
    assert len(got) <= count
    for d in got:
        entry = d.entry.encode()
        assert entry in fields, "a deleted entry is never handed out"
        found = fields[entry]
        job_id = next((found[i + 1] for i in range(0, len(found) - 1, 2) if found[i] == b"i"),
                      b"")
        assert d.job_id == text(job_id)
    mine = dict(await pending_mine(env))
    for d in got:
        assert mine[d.entry.encode()] == d.deliveries
    event(f"reclaimed {len(got)}")


LEASE_TOKEN = b"me|" + b"0123456789abcdef" * 2
"""A holder's value (leader.py's Lease: '<holder>|<32 hex digits>')."""
LEASE_VALUES = {
    "ours": LEASE_TOKEN,
    "theirs": b"w:1|" + b"fedcba9876543210" * 2,
    "theirs, upper case": b"|" + b"FEDCBA9876543210" * 2,
    "stray": b"stray-script-value",
    "31 digits": b"w|" + b"f" * 31,
    "33 digits": b"w|" + b"f" * 33,
    "no bar": b"w" + b"f" * 32,
    "a line after": b"w|" + b"f" * 32 + b"\n",
    "empty": b"",
}
"""What a lease key may hold as a string; the first three are values a holder writes (a
33-digit tail ends with 32 digits after a character that is not a bar: not one)."""
LEASE_MAX_MS = int(MAX_LEASE_TTL_S * 1000)


async def set_lease(env: Env, kind: str, expiry: int | None) -> Key | None:
    """Make the lease key hold ``kind`` (a key of LEASE_VALUES, "none" or a wrong type),
    expiring in ``expiry`` ms (None: never); returns it as read back."""
    client, k = env.client, env.keys
    await client.delete(k.leader)
    if kind in LEASE_VALUES:
        await client.set(k.leader, LEASE_VALUES[kind])
    elif kind != "none":
        await make_wrong(client, k.leader, kind)
    if expiry is not None and kind != "none":
        await client.pexpire(k.leader, expiry)
    return await read_key(client, k.leader.encode())


async def check_lease_clear(env: Env, kind: str, expiry: int | None) -> str:
    """lease_clear.lua on a lease key holding ``kind``: a stray key is removed (and the
    reason said), a holder's lease is left as it was and its time left returned."""
    before = await set_lease(env, kind, expiry)
    ms, why = await load("lease_clear")(env.client, [env.keys.leader], [LEASE_MAX_MS])
    after = await read_key(env.client, env.keys.leader.encode())
    if kind == "none":
        want = ""
    elif expiry is None:
        want = "no expiry"
    elif kind not in ("ours", "theirs", "theirs, upper case"):
        want = "not a holder's value"
    elif expiry > LEASE_MAX_MS:
        want = "an expiry longer than any holder sets"
    else:
        want = ""
    assert text(why) == want, (kind, expiry, why)
    if want or kind == "none":
        assert (ms, after) == (0, None), "a stray lease is removed"
    else:
        assert expiry is not None and 0 < ms <= expiry
        assert after == before, "a holder's lease is never touched"
    return want or ("none" if kind == "none" else "kept")


LEASE_KINDS = (*LEASE_VALUES, "none", *WRONG_TYPES, "hash")
LEASE_EXPIRIES = (None, 10_000, LEASE_MAX_MS, LEASE_MAX_MS + 5_000)


async def check_lease(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    for step in ("renew", "release", "clear"):
        kind = data.draw(st.sampled_from(LEASE_KINDS), step)
        expiry = data.draw(st.sampled_from(LEASE_EXPIRIES), f"{step} expiry")
        if step == "clear":
            event(f"lease clear {await check_lease_clear(env, kind, expiry)}")
            continue
        await set_lease(env, kind, expiry)
        args: list[Any] = [LEASE_TOKEN, 5000] if step == "renew" else [LEASE_TOKEN]
        reply = await load(f"lease_{step}")(env.client, [env.keys.leader], args)
        assert reply == int(kind == "ours")
        event(f"lease {step} {reply}")


def test_lease_clear_removes_every_stray_lease_and_no_holders(backend: Backend) -> None:
    """Every kind of lease key with every kind of expiry, not only those drawn above."""
    async def body(env: Env) -> None:
        for kind in LEASE_KINDS:
            for expiry in LEASE_EXPIRIES:
                await check_lease_clear(env, kind, expiry)

    run(backend, body)


async def check_beat(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    client = env.client
    workers = f"{env.keys.base}:workers"
    members = data.draw(st.dictionaries(st.binary(max_size=6), st.integers(0, 10**13),
                                        max_size=4), "workers")
    if members:
        await client.zadd(workers, members)
    claims = f"{env.keys.base}:claims"
    declared = data.draw(st.dictionaries(
        st.integers(0, 5_000_000).map(str)
        | st.sampled_from(["", "abc", "1e300", "-5", "0x36EE80", " 3000", "3.6e6"]),
        st.integers(0, 10**13), max_size=4), "claims")
    if declared:
        await client.zadd(claims, declared)
    record = f"{env.keys.base}:worker:{ME}"
    now, most, least = await load("beat")(client, [workers, record, claims],
                                          [ME, 60_000, '{"name": "me"}', 15, 2_000])
    left = dict(await client.zrange(workers, 0, -1, withscores=True))
    assert left[ME.encode()] == now
    assert all(score >= now - 60_000 for score in left.values())
    assert await client.get(record) == b'{"name": "me"}'
    assert 0 < await client.ttl(record) <= 15
    # the largest and smallest claim timeouts declared and not lapsed (nor lapsing over 10
    # minutes ahead), ours included; garbage ignored
    alive = [int(m) for m, score in declared.items()
             if now < score <= now + 600_000 and m.isdigit() and 1_000 <= int(m) <= 3_600_000]
    assert (most, least) == (max([2_000, *alive]), min([2_000, *alive]))
    kept = dict(await client.zrange(claims, 0, -1, withscores=True))
    assert kept[b"2000"] >= now + 15_000
    assert all(now < score <= now + 600_000 for score in kept.values())


async def check_reschedule(env: Env, batch: Sequence[Case], data: st.DataObject) -> None:
    client, k = env.client, env.keys
    before = await snapshot(client, k)
    had = dict(before[k.delayed.encode()].content) if k.delayed.encode() in before else {}
    lost = {i for i in job_ids(batch)
            if (rec := before.get(env.job(i))) is not None and rec.kind == "hash"
            and rec.content.get(b"s") == b"scheduled" and i not in had}
    # One count for the whole pass (drawn once: the number of SCAN steps depends on every
    # key of the server, other tests' included on a shared real one).
    unhanded = await unreachable(client, k.stream, k.job_prefix, before)
    count = await scan_count(client, data.draw(st.sampled_from([3, 50, 500])))
    cursor, restored, requeued = "0", 0, 0
    lo = await redis_ms(client)
    while True:
        step = await reschedule_levels([env.store], cursor, count)
        cursor, restored = step.cursor, restored + step.restored
        requeued += step.requeued
        if cursor == "0":
            break
    hi = await redis_ms(client)
    after = await snapshot(client, k)
    now = dict(after[k.delayed.encode()].content) if k.delayed.encode() in after else {}
    assert restored == len(lost) and set(now) == set(had) | lost
    assert requeued == len(unhanded)
    written = {k.delayed.encode(), k.stream.encode(), *unhanded}
    assert {n: v for n, v in after.items() if n not in written} == \
        {n: v for n, v in before.items() if n not in written}
    check_requeued(before, after, k.stream, k.job_prefix, unhanded, lo, hi)
    event(f"reschedule put back {min(restored, 2)}+, queued {min(requeued, 2)}+")


NEVER_RAISE: dict[str, Callable[[Env, Sequence[Case], st.DataObject], Awaitable[None]]] = {
    "touch": check_touch, "handback": check_handback, "abort": check_abort,
    "requeue": check_requeue, "purge": check_purge, "progress": check_progress,
    "cron": check_cron, "reclaim": check_reclaim, "lease": check_lease, "beat": check_beat,
    "reschedule": check_reschedule,
}


@pytest.mark.parametrize("script", sorted(NEVER_RAISE))
@settings(FUZZ, max_examples=30)
@given(batch=batches, data=st.data())
def test_scripts_never_raise_on_garbage_records(
    backend: Backend, script: str, batch: list[Case], data: st.DataObject
) -> None:
    async def body(env: Env) -> None:
        await garbage_queue(env, batch, data)
        await NEVER_RAISE[script](env, batch, data)

    run(backend, body)


# -- queue-level keys of the wrong type --------------------------------------------------------

ALL_TYPES = ("string", "list", "set", "zset", "stream", "hash")
RIGHT_TYPE = {"stream": "stream", "delayed": "zset", "dead": "stream", "stats": "hash",
              "cron": "hash", "leader": "string", "workers": "zset",
              "concurrency_limits": "hash"}
SPEC = encode_spec(JobSpec("fuzz", [1]))


@dataclass
class Typical:
    """A queue in ordinary use: j0, j1 running here, j2 dead-lettered, j3 queued, j4 due."""

    entries: dict[str, str]
    letter: str
    workers: str


async def typical_queue(env: Env) -> Typical:
    client, k, store = env.client, env.keys, env.store
    assert await store.enqueue([NewJob(f"j{i}", SPEC) for i in range(4)]) == {}
    assert await store.enqueue([NewJob("j4", SPEC, delay_ms=10**8)]) == {}
    await client.zadd(k.delayed, {"j4": 0})
    started = await store.take(ME, 2)
    assert [s.verdict for s in started] == ["run", "run"]
    letter = await client.xadd(k.dead, {"i": "j2", "r": "why"})
    await client.hset(env.job("j2"), mapping={"s": "failed", "de": letter})
    await client.hset(k.cron, mapping={"c": "5", "c:job": "j0"})
    await client.set(k.leader, "tok", px=10_000)
    workers = f"{k.base}:workers"
    await client.zadd(workers, {"w": 1})
    entries = {f"j{i}": text(await client.hget(env.job(f"j{i}"), "e"))
               for i in range(4)}
    return Typical(entries, text(letter), workers)


def calls(env: Env, q: Typical) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each script that writes when the queue's keys are sound."""
    store, client, e = env.store, env.client, q.entries
    return {
        "take": lambda: store.take(ME, 10),
        "start": lambda: store.start(ME, [Delivery(e["j0"], "j0"), Delivery(e["j1"], "j1")]),
        "settle": lambda: run_pipelined(client, [store.settle_call(ME, [
            SettleOp(e["j0"], "j0", "retry", lease="4:fuzz:"),
            SettleOp(e["j1"], "j1", "failed", "why"),
            SettleOp(e["j3"], "j3", "garbage", "junk")])]),
        "enqueue": lambda: store.enqueue([NewJob("n1", SPEC), NewJob("n2", SPEC, 10**8)]),
        "promote": lambda: store.promote(10, 60),
        "handback": lambda: store.handback(ME, [], 1000),
        "touch": lambda: store.touch(ME, [Delivery(e["j0"], "j0")]),
        "concurrency": lambda: run_pipelined(client, [store.lease_call(ME, [
            LeaseAsk(Delivery(e["j0"], "j0"), "4:fuzz:", 1),
            LeaseAsk(Delivery(e["j1"], "j1"), "4:fuzz:", 1)], 15_000)]),
        "abort queued": lambda: store.abort("j3", 60),
        "abort scheduled": lambda: store.abort("j4", 60),
        "requeue": lambda: store.requeue("j2"),
        "purge": lambda: store.purge_dead([(q.letter, "j2")]),
        "cron": lambda: store.cron_tick("c", 10**12, "cron:c:1", SPEC, fire=True,
                                        no_overlap=False),
        "reclaim": lambda: store.reclaim(OTHER, 0, 10),
        "prune": lambda: store.prune_consumers(0, OTHER),
        "reschedule": lambda: reschedule_levels([store], "0", 1000),
        "lease_renew": lambda: load("lease_renew")(client, [env.keys.leader], ["tok", 5000]),
        "lease_release": lambda: load("lease_release")(client, [env.keys.leader], ["tok"]),
        "lease_clear": lambda: load("lease_clear")(client, [env.keys.leader],
                                                   [LEASE_MAX_MS]),
        "beat": lambda: load("beat")(client, [q.workers, f"{q.workers}:{ME}",
                                              f"{q.workers}:claims"],
                                     [ME, 60_000, "{}", 15, 2_000]),
    }


QUEUE_KEYS = {
    "take": ("stream",), "start": ("stream",), "settle": ("stream", "delayed", "dead", "stats"),
    "enqueue": ("stream", "delayed", "stats"), "promote": ("stream", "delayed", "dead", "stats"),
    "handback": ("stream",), "touch": ("stream",), "abort queued": ("stream", "delayed", "stats"),
    "abort scheduled": ("stream", "delayed", "stats"), "requeue": ("stream", "dead"),
    "purge": ("dead",), "cron": ("cron", "stream", "stats"), "reclaim": ("stream",),
    "prune": ("stream",), "reschedule": ("delayed",),
    "concurrency": ("stream", "delayed", "stats", "concurrency_limits"),
    "lease_renew": ("leader",), "lease_release": ("leader",),
    "lease_clear": ("leader",), "beat": ("workers",),
}


@pytest.mark.parametrize("script", sorted(QUEUE_KEYS))
def test_a_queue_key_of_the_wrong_type_fails_the_call_before_its_first_write(
    backend: Backend, script: str
) -> None:
    """Every queue-level key a script uses, as every other type: the call either works or
    raises having written nothing (the whole queue compared, DUMP included)."""
    for name in QUEUE_KEYS[script]:
        for kind in ALL_TYPES:
            if kind == RIGHT_TYPE[name]:
                continue

            async def body(env: Env, name: str = name, kind: str = kind) -> None:
                q = await typical_queue(env)
                target = q.workers if name == "workers" else getattr(env.keys, name)
                await make_wrong(env.client, target, kind)
                before = await snapshot(env.client, env.keys)
                raised: Exception | None = None
                try:
                    await calls(env, q)[script]()
                except Exception as exc:  # fakeredis raises AttributeError for some types
                    raised = exc
                after = await snapshot(env.client, env.keys)
                if raised is not None:
                    assert dumps(after) == dumps(before), (name, kind, str(raised))
                elif name == "stats":  # counters are best effort: never a reason to fail
                    assert after[target.encode()] == before[target.encode()]

            run(backend, body)


# -- end to end: a worker over a corrupted queue ---------------------------------------------

RAN: Counter[str] = Counter()


@asyncjobs.task(name="fuzz_note")
async def note(ctx: asyncjobs.Context, token: str) -> str:
    RAN[token] += 1
    return token


def undecodable(data: bytes) -> bool:
    try:
        spec = asyncjobs._codec.decode_spec(data)
    except Exception:
        return True
    return spec.task != "fuzz_note"


not_a_spec = st.one_of(
    st.binary(max_size=16),
    st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=4)),
                 lambda inner: st.lists(inner, max_size=3), max_leaves=6
                 ).map(asyncjobs._codec.encode_value),
).filter(undecodable)
NOT_INT = (b"abc", b"1.5", b"inf", b"nan", b"", b"1e300", b"-1", b"0x", b"12abc", b"\xff")
BAD = ("noid", "emptyid", "dangling", "wrongtype", "nostate", "badstate", "badattempts",
       "badexpiry", "badspec", "unknowntask", "badargs", "delayed-wrongtype",
       "scheduled-badexpiry")
FINE = ("good", "good", "badhistory", "badq")


@dataclass(frozen=True)
class Item:
    kind: str
    junk: bytes = b""
    wrong: str = "string"


items = st.one_of(
    st.builds(Item, st.sampled_from(FINE), junk),
    st.builds(Item, st.sampled_from(BAD), st.one_of(st.sampled_from(NOT_INT), not_a_spec),
              st.sampled_from(WRONG_TYPES)),
)


async def write_item(env: Env, n: int, item: Item) -> tuple[str, bytes]:
    """Put one job (or one piece of garbage) in the queue; returns its job id and a marker
    found in its dead letter."""
    client, k, store = env.client, env.keys, env.store
    job_id, marker = f"e{n}", b"m%d" % n
    if item.kind in ("noid", "emptyid", "dangling"):
        fields = {b"junk": marker}
        if item.kind != "noid":
            fields[b"i"] = b"" if item.kind == "emptyid" else job_id.encode()
        await client.xadd(k.stream, fields)  # type: ignore[arg-type]
        return ("" if item.kind != "dangling" else job_id), marker
    task, args = "fuzz_note", [job_id]
    if item.kind == "unknowntask":
        task = "no_such_task"
    elif item.kind == "badargs":
        args = []
    delay = 10**8 if item.kind.startswith(("delayed", "scheduled")) else 0
    job = NewJob(job_id, encode_spec(JobSpec(task, args)), delay_ms=delay)
    assert await store.enqueue([job]) == {}
    key = env.job(job_id)
    if delay:
        await client.zadd(k.delayed, {job_id: 0})
    change = {"badstate": b"s", "badattempts": b"a", "badexpiry": b"x", "scheduled-badexpiry":
              b"x", "badspec": b"j", "badhistory": b"h", "badq": b"q"}.get(item.kind)
    if change == b"s":
        await client.hset(key, b"s", item.junk if item.junk not in STATES else b"junk")
    elif change in (b"a", b"x"):
        value = item.junk if lua_int(item.junk) is None else b"abc"
        await client.hset(key, change, value if change == b"x" or value != b"" else b"-1")
    elif change == b"j":
        await client.hset(key, b"j", item.junk if undecodable(item.junk) else b"\xc1")
    elif change is not None:
        await client.hset(key, change, item.junk)
    elif item.kind == "nostate":
        await client.hdel(key, b"s")
    elif "wrongtype" in item.kind:
        await make_wrong(client, key, item.wrong)
    return job_id, marker


@settings(FUZZ, max_examples=30)
@given(batch=st.lists(items, min_size=1, max_size=8),
       queue_junk=st.sampled_from(("", "", "stats", "leader")))
def test_a_worker_runs_every_good_job_once_and_dead_letters_every_bad_entry(
    backend: Backend, batch: list[Item], queue_junk: str
) -> None:
    async def body(env: Env) -> None:
        client, k = env.client, env.keys
        RAN.clear()
        written = [await write_item(env, n, item) for n, item in enumerate(batch)]
        if queue_junk:  # best-effort counters and a lease nobody holds must not matter
            await make_wrong(client, getattr(k, queue_junk), "list")
        worker = backend.worker([note], queues=[k.queue], burst=True, shutdown_grace=5,
                                claim_timeout=5)
        await asyncio.wait_for(backend.run(worker), 60)
        good = [job_id for (job_id, _), item in zip(written, batch, strict=True)
                if item.kind in FINE]
        assert Counter(good) == RAN, "every good job ran exactly once"
        for job_id in good:
            assert await client.hget(env.job(job_id), "s") == b"complete"
        letters = await raw_xrange(client, k.dead)
        for (job_id, marker), item in zip(written, batch, strict=True):
            mine = [f for _, f in letters
                    if (marker in f if item.kind in ("noid", "emptyid")
                        else f[:2] == [b"i", job_id.encode()])]
            if item.kind in FINE:
                assert mine == [], (item, mine)
                continue
            assert len(mine) == 1, (item, letters)
            [fields] = mine
            reason = dict(zip(fields[::2], fields[1::2], strict=True)).get(b"r", b"")
            assert fields[2] == b"r" and reason.strip(), (item, fields)
            event(f"dead {item.kind}")
        assert await client.xlen(k.stream) == 0
        assert (await client.xpending(k.stream, GROUP))["pending"] == 0
        assert await client.zcard(k.delayed) == 0

    run(backend, body)


# -- the job id of an entry, whichever path delivers it ---------------------------------------

entry_fields = st.lists(st.tuples(st.sampled_from((b"i", b"i", b"junk", b"I")),
                                  st.one_of(st.sampled_from((b"j1", b"j2", b"")), junk)),
                        min_size=1, max_size=4)


@settings(FUZZ, max_examples=60)
@given(fields=entry_fields)
def test_take_read_and_reclaim_agree_on_the_job_id_of_an_entry(
    backend: Backend, fields: list[tuple[bytes, bytes]]
) -> None:
    """An entry written by hand (repeated fields, no ``i``) names one job, whether it is
    taken (take.lua), read by a blocking read (then start.lua), or reclaimed (reclaim.lua):
    the one its last ``i`` field names (redis-py reads the fields into a dict, where the
    last one wins, and the scripts' ``job_id_of`` does the same)."""
    flat = [x for pair in fields for x in pair]
    first = next((v for f, v in reversed(fields) if f == b"i"), b"")

    async def body(env: Env) -> None:
        stream = env.keys.stream
        for _ in range(3):
            await env.client.execute_command("XADD", stream, "*", *flat)
        [taken] = await env.store.take(ME, 1)
        [read] = await env.store.read(env.client, ME, 1, None)
        [[_, [(left, _)]]] = await env.client.xreadgroup(GROUP, OTHER, {stream: ">"}, count=1)
        _, got = await env.store.reclaim(ME, 0, 10, "0-0")
        [reclaimed] = [d for d in got if d.entry == text(left)]
        ids = {"take": taken.delivery.job_id, "read": read.job_id,
               "reclaim": reclaimed.job_id}
        assert ids == dict.fromkeys(ids, text(first))

    run(backend, body)


@pytest.mark.parametrize("with_record", [False, True], ids=["no record", "a record"])
@pytest.mark.parametrize("job_id", [b"\x80", b"job-\xff\xfe"], ids=repr)
def test_an_entry_whose_job_id_is_not_utf8_is_dead_lettered_and_never_left_running(
    backend: Backend, job_id: bytes, with_record: bool
) -> None:
    """Job ids asyncjobs writes are text; one written by hand that is not UTF-8 cannot be
    named by the worker (``values.reply_text`` replaces the bad bytes): such an entry is
    dead-lettered (``_store`` says so), its task never runs, and no record is left
    ``running`` or written under another id."""

    async def body(env: Env) -> None:
        client, k = env.client, env.keys
        RAN.clear()
        entry = await client.xadd(k.stream, {b"i": job_id})
        if with_record:
            await client.hset(env.job(job_id), mapping={
                b"j": encode_spec(JobSpec("fuzz_note", ["binary"])), b"s": b"queued",
                b"a": b"0", b"e": entry})
        before = await record(env, job_id)
        worker = backend.worker([note], queues=[k.queue], burst=True, shutdown_grace=5)
        await asyncio.wait_for(backend.run(worker), 60)
        letters = await raw_xrange(client, k.dead)
        assert [entry in f for _, f in letters] == [True], letters
        assert not RAN, "the task of an entry the worker cannot name never runs"
        after = await record(env, job_id)
        assert after is None or after.content.get(b"s") != b"running", after
        lossy = env.job(text(job_id))
        assert await client.exists(lossy) == (before is not None and lossy == env.job(job_id))

    run(backend, body)
