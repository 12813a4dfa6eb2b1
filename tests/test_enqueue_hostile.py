"""Hostile input on the producer side: what ``enqueue`` accepts, a worker can run; what it
refuses, it refuses with an asyncjobs error (or the documented ``ValueError`` /
``TypeError`` of an option) and without writing anything; and reading a damaged record back
gives a typed error.

Each refused enqueue is followed by a look at Redis (``nothing_written``): no record and no
stream entry, so never half a job. Accepted hostile jobs are run by a burst worker, so "the
worker can decode it" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import msgspec
import pytest

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._redis.embedded import RedisServer
from asyncjobs.exceptions import (
    AsyncJobsError,
    ConfigurationError,
    CorruptJob,
    JobFailed,
    JobNotFound,
    ResultTimeout,
    SerializationError,
)

from .conftest import Backend, need_redis_server


@asyncjobs.task
async def echo(ctx: Context, value: Any) -> Any:
    return value


@asyncjobs.task
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


async def burst(backend: Backend, tasks: list[Any] | None = None) -> None:
    worker = backend.worker(tasks or [echo, add], burst=True)
    await asyncio.wait_for(backend.run(worker), 60)


async def nothing_written(pool: asyncjobs.Pool) -> None:
    """No key of the pool's prefix holds a job: no record, no stream entry, no delayed
    entry (the queues set and the stats hash are not jobs)."""
    keys = sorted(k.decode() for k in await pool.client.keys(f"{pool.prefix}:*"))
    jobs = [k for k in keys if ":job:" in k or k.endswith((":stream", ":delayed"))]
    assert jobs == [], f"a refused enqueue wrote {jobs}"


def self_referencing_list() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def self_referencing_dict() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["me"] = loop
    return loop


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


# -- arguments a worker could not decode were accepted -----------------------------------------


@pytest.mark.parametrize("value", [
    pytest.param(msgspec.Raw(b"\xc1"), id="raw-invalid-opcode"),
    pytest.param([1, {"k": msgspec.Raw(b"\x92\x01")}], id="raw-truncated-array-nested"),
    pytest.param(msgspec.msgpack.Ext(-1, b"garbage"), id="ext-bad-timestamp"),
    pytest.param({"when": [msgspec.msgpack.Ext(-1, b"\xff" * 12)]}, id="ext-bad-timestamp-nested"),
])
@pytest.mark.asyncio
async def test_an_argument_that_encodes_but_cannot_decode_is_refused_at_enqueue(
        backend: Backend, pool: asyncjobs.Pool, value: Any) -> None:
    """msgspec writes a ``Raw`` verbatim and an ``Ext`` as given: the spec was written, and
    every worker dead-lettered it as an undecodable payload."""
    with pytest.raises(SerializationError, match=r"argument 'value'.*task 'echo'"):
        await pool.enqueue(echo, value)
    await nothing_written(pool)


@pytest.mark.asyncio
async def test_well_formed_raw_and_ext_arguments_still_run(backend: Backend,
                                                           pool: asyncjobs.Pool) -> None:
    """The check above refuses only what cannot be decoded: pre-encoded msgpack (``Raw``)
    and an application ``Ext`` go through and arrive decoded."""
    raw = await pool.enqueue(echo, msgspec.Raw(msgspec.msgpack.encode({"a": [1, 2]})))
    ext = await pool.enqueue(echo, msgspec.msgpack.Ext(5, b"xyz"))
    moment = await pool.enqueue(echo, datetime(2030, 1, 2, tzinfo=UTC))
    await burst(backend)
    assert await raw.result(timeout=5) == {"a": [1, 2]}
    assert await ext.result(timeout=5) == msgspec.msgpack.Ext(5, b"xyz")
    assert await moment.result(timeout=5) == datetime(2030, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize("name", [123, b"echo", 1.5])
def test_a_task_reference_whose_name_is_not_text_is_refused(name: Any) -> None:
    """``task_ref(123)`` made a spec whose task field was an int: enqueued, and every
    worker dead-lettered it as an undecodable payload."""
    with pytest.raises(ConfigurationError, match="task name must be a str"):
        asyncjobs.task_ref(name)
    with pytest.raises(ConfigurationError, match="task name must be a str"):
        asyncjobs.task(name=name)(echo.fn)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_task_name_that_is_not_valid_text_is_refused_at_enqueue(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    with pytest.raises(SerializationError, match="task"):
        await pool.enqueue(asyncjobs.task_ref("bad\udc80name"), 1)
    await nothing_written(pool)


@pytest.mark.asyncio
async def test_headers_from_a_provider_that_are_not_text_are_refused_at_enqueue(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """``pool.header_providers`` bypass ``options(headers=...)``'s check: a provider giving
    ``{1: 2}`` wrote a spec no worker could decode."""
    pool.header_providers.append(lambda: {1: 2})  # type: ignore[dict-item]
    with pytest.raises(SerializationError, match="headers"):
        await pool.enqueue(add, 1, 2)
    await nothing_written(pool)


# -- times ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_expiry_before_1970_expires_the_job(backend: Backend,
                                                     pool: asyncjobs.Pool) -> None:
    """``expires=datetime(1960, ...)`` became a negative number of ms, which the script
    reads as "never expires": a job that should never start ran."""
    job = await pool.enqueue(add.options(expires=datetime(1960, 1, 1, tzinfo=UTC)), 1, 2)
    epoch = await pool.enqueue(add.options(expires=datetime(1970, 1, 1, tzinfo=UTC)), 1, 2)
    await burst(backend)
    assert await job.status() is JobState.EXPIRED
    assert await epoch.status() is JobState.EXPIRED


@pytest.mark.asyncio
async def test_a_start_time_before_1970_runs_at_once(backend: Backend,
                                                     pool: asyncjobs.Pool) -> None:
    """``at=`` in the past is "now", however far back (after a ``delay``: the later of the
    two wins)."""
    job = await pool.enqueue(add.options(delay=3600).options(at=datetime(1900, 1, 1, tzinfo=UTC)),
                             1, 2)
    assert await job.status() is JobState.QUEUED
    await burst(backend)
    assert await job.result(timeout=5) == 3


class _NoOffset(tzinfo):
    """A tzinfo that knows no offset: Python counts such a datetime as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None


@pytest.mark.parametrize("option", ["at", "expires"])
def test_a_datetime_whose_tzinfo_gives_no_offset_is_naive(option: str) -> None:
    """A tzinfo whose ``utcoffset()`` is None passed the naive check (``tzinfo is None``)
    and then failed in ``datetime.timestamp()`` with a bare TypeError at enqueue."""
    moment = datetime(2030, 1, 1, tzinfo=_NoOffset())
    with pytest.raises(ValueError, match="aware datetime"):
        add.options(**{option: moment})


@pytest.mark.parametrize(("given", "error"), [
    ({"delay": -1}, ValueError), ({"delay": timedelta(days=-1)}, ValueError),
    ({"delay": math.nan}, ValueError), ({"delay": math.inf}, ValueError),
    ({"delay": timedelta.max}, ValueError), ({"delay": 10**400}, ValueError),
    ({"delay": True}, TypeError), ({"delay": "5"}, TypeError),
    ({"expires": -math.inf}, ValueError), ({"timeout": math.nan}, ValueError),
    ({"result_ttl": 11 * 365 * 86400}, ValueError),
    ({"at": datetime(2030, 1, 1)}, ValueError), ({"expires": datetime(2030, 1, 1)}, ValueError),
    ({"at": 0}, TypeError),
    ({"priority": "urgent"}, ConfigurationError), ({"priority": 1}, ConfigurationError),
    ({"priority": "HIGH"}, ConfigurationError),
    ({"max_tries": 0}, ValueError), ({"max_tries": 1.0}, TypeError),
    ({"job_id": ""}, ValueError), ({"job_id": "x" * 1025}, ValueError),
    ({"job_id": "lone\udc80"}, ValueError), ({"job_id": b"bytes"}, ValueError),
    ({"queue": "has space"}, ConfigurationError), ({"queue": "{tag}"}, ConfigurationError),
    ({"queue": "q\ud800"}, ConfigurationError), ({"queue": "x" * 201}, ConfigurationError),
])
@pytest.mark.asyncio
async def test_odd_options_fail_before_anything_is_written(
        backend: Backend, pool: asyncjobs.Pool, given: dict[str, Any],
        error: type[Exception]) -> None:
    with pytest.raises(error):
        await pool.enqueue(add.options(**given), 1, 2)
    await nothing_written(pool)


@pytest.mark.parametrize("queue", [""])
def test_an_empty_queue_name_is_refused_not_sent_to_the_default_queue(queue: str) -> None:
    """``options(queue="")`` was taken for "no queue given": the job silently went to the
    pool's default queue."""
    with pytest.raises(ConfigurationError, match="queue name"):
        add.options(queue=queue)
    with pytest.raises(ConfigurationError, match="queue name"):
        asyncjobs.task(queue=queue)(add.fn)  # type: ignore[arg-type]


# -- job ids and queue names -----------------------------------------------------------------


class _Disguised(str):
    """A str subclass whose formatting, str(), hash and equality all lie."""

    def __format__(self, spec: str) -> str:
        return "formatted"

    def __str__(self) -> str:
        return "stringified"

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return True


@pytest.mark.asyncio
async def test_a_job_id_of_a_str_subclass_names_one_job(backend: Backend,
                                                        pool: asyncjobs.Pool) -> None:
    """A job id whose ``__format__`` lies made the record key ``job:formatted`` while the
    stream entry said ``real``: the worker found no record (dead letter "no record") and
    the record stayed ``queued`` for ever."""
    job = await pool.enqueue(add.options(job_id=_Disguised("real")), 1, 2)
    await burst(backend)
    assert await pool.job("real").result(timeout=5) == 3
    assert await pool.client.keys(f"{pool.prefix}:*formatted*") == []
    assert type(job.id) is str and job.id == "real"


@pytest.mark.asyncio
async def test_a_queue_name_of_a_str_subclass_names_one_queue(backend: Backend,
                                                              pool: asyncjobs.Pool) -> None:
    """The same with a queue name: keys under ``{formatted}``, the queue registered as
    ``mail``, the handle saying ``stringified``; a worker of ``mail`` never saw the job."""
    job = await pool.enqueue(add.options(queue=_Disguised("mail")), 1, 2)
    worker = backend.worker([add], burst=True, queues=["mail"])
    await asyncio.wait_for(backend.run(worker), 60)
    assert await pool.job(job.id, queue="mail").result(timeout=5) == 3
    assert type(job.queue) is str and job.queue == "mail"


@pytest.mark.parametrize("job_id", ["{x}", "a:b:c", "}{", "{default}:job:x", "x" * 1024,
                                    "é\n\t\x00", "💥"])
@pytest.mark.asyncio
async def test_job_ids_with_separators_and_braces_run(backend: Backend, pool: asyncjobs.Pool,
                                                      job_id: str) -> None:
    job = await pool.enqueue(add.options(job_id=job_id), 1, 2)
    again = await pool.enqueue(add.options(job_id=job_id), 5, 5)  # dedup
    await burst(backend)
    assert again.id == job.id == job_id
    assert await job.result(timeout=5) == 3


# -- arguments the codec refuses, and the batch around them -----------------------------------


@pytest.mark.parametrize("value", [
    pytest.param(self_referencing_list(), id="self-referencing-list"),
    pytest.param(self_referencing_dict(), id="self-referencing-dict"),
    pytest.param(nested(101), id="nested-101"),
    pytest.param({"k": nested(150)}, id="nested-in-dict"),
    pytest.param("lone \ud800 surrogate", id="lone-surrogate"),
    pytest.param({"key\udfff": 1}, id="lone-surrogate-key"),
    pytest.param(2**64, id="int-too-large"),
    pytest.param(-(2**63) - 1, id="int-too-small"),
    pytest.param(1j, id="complex"),
    pytest.param(object(), id="object"),
    pytest.param(threading.Lock(), id="lock"),
    pytest.param(lambda: None, id="function"),
    pytest.param(iter([1]), id="iterator"),
])
@pytest.mark.asyncio
async def test_arguments_the_codec_refuses_fail_at_enqueue(backend: Backend,
                                                           pool: asyncjobs.Pool,
                                                           value: Any) -> None:
    with pytest.raises(SerializationError, match="task 'echo'"):
        await pool.enqueue(echo, value)
    await nothing_written(pool)


@pytest.mark.asyncio
async def test_one_bad_call_in_enqueue_many_writes_none_of_the_batch(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """Every call is encoded before anything is written: a bad call anywhere in the batch
    (even in another queue) refuses the whole batch, good calls included."""
    calls = [asyncjobs.call(add, i, i) for i in range(10)]
    calls.append(asyncjobs.call(add.options(queue="other"), 1, 1))
    calls.append(asyncjobs.call(echo, object()))
    calls += [asyncjobs.call(add, i, i) for i in range(10)]
    with pytest.raises(SerializationError, match=r"position 0\) of task 'echo'"):
        await pool.enqueue_many(calls)
    await nothing_written(pool)
    with pytest.raises(TypeError):  # arguments that cannot bind: the same
        await pool.enqueue_many([asyncjobs.call(add, 1, 2), asyncjobs.call(add, 1)])  # type: ignore[call-arg]
    await nothing_written(pool)


@pytest.mark.parametrize("value", [
    pytest.param(nested(99), id="nested-99"),
    pytest.param([math.nan, math.inf, -math.inf, -0.0], id="non-finite-floats"),
    pytest.param({b"bytes": "str", "str": b"bytes", 1: None, None: 2.5}, id="mixed-keys"),
    pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
    pytest.param(bytearray(b"\x00\xff"), id="bytearray"),
    pytest.param("\x00\u2028\U0010ffff", id="odd-text"),
    pytest.param(2**64 - 1, id="largest-int"),
])
@pytest.mark.asyncio
async def test_odd_arguments_the_codec_takes_reach_the_worker(backend: Backend,
                                                              pool: asyncjobs.Pool,
                                                              value: Any) -> None:
    job = await pool.enqueue(echo, value)
    await burst(backend)
    assert await job.status() is JobState.COMPLETE
    got = await job.result(timeout=5)
    assert msgspec.msgpack.encode(got) == msgspec.msgpack.encode(value)


class _OddInt(int):
    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        raise TypeError("unhashable odd int")

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class _OddStr(str):
    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 1

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class _OddDict(dict[str, Any]):
    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:  # type: ignore[override]
        return 1

    def items(self) -> Any:
        raise RuntimeError("items")

    def keys(self) -> Any:
        raise RuntimeError("keys")


@pytest.mark.asyncio
@pytest.mark.parametrize("value", [_OddInt(2), _OddStr("x"), [1, {"k": _OddInt(3)}]],
                         ids=["int", "str", "nested-int"])
async def test_int_and_str_subclasses_are_refused_by_type(backend: Backend,
                                                          pool: asyncjobs.Pool,
                                                          value: Any) -> None:
    """msgspec takes no subclass of int or str (enums aside): refused by name, whatever
    their ``__str__``, ``__eq__`` or ``__hash__`` do."""
    with pytest.raises(SerializationError, match="_Odd"):
        await pool.enqueue(echo, value)
    await nothing_written(pool)


@pytest.mark.asyncio
async def test_a_dict_subclass_with_odd_dunders_arrives_as_its_contents(
        backend: Backend, pool: asyncjobs.Pool) -> None:
    """Encoded by its contents; over 100 bytes the depth check walks it too, and must not
    call its ``keys()`` (which raised out of ``enqueue``)."""
    job = await pool.enqueue(echo, _OddDict(a=[_OddDict(b=1)], pad="x" * 200))
    await burst(backend)
    assert await job.result(timeout=5) == {"a": [{"b": 1}], "pad": "x" * 200}


# -- size: over what Redis takes ------------------------------------------------------------


@pytest.fixture
def small_bulk_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own taking values of at most 1 MiB (Redis' smallest
    ``proto-max-bulk-len``)."""
    need_redis_server()
    with RedisServer(extra_args=("--proto-max-bulk-len", "1mb")) as server:
        yield server


@pytest.mark.asyncio
async def test_a_job_larger_than_redis_takes_is_refused_before_anything_is_written(
        small_bulk_redis: RedisServer) -> None:
    """A spec over ``proto-max-bulk-len`` made Redis answer "Protocol error" and drop the
    connection: ``enqueue`` raised redis-py's bare ``ResponseError``, and in an
    ``enqueue_many`` of 601 jobs the first 500 (an earlier script call of the pipeline)
    were written while the caller heard only the error."""
    big = b"x" * (1024 * 1024 + 1)
    async with asyncjobs.create_pool(small_bulk_redis.url, prefix="big") as pool:
        with pytest.raises(SerializationError, match=r"task 'echo'.*larger than Redis takes"):
            await pool.enqueue(echo, big)
        await nothing_written(pool)
        calls = [asyncjobs.call(add, i, i) for i in range(600)]
        with pytest.raises(SerializationError, match="larger than Redis takes"):
            await pool.enqueue_many([*calls, asyncjobs.call(echo, big)])
        await nothing_written(pool)
        # under the limit: written, and the pool still works
        fits = await pool.enqueue(echo, b"x" * (1024 * 1024 - 100))
        assert await fits.status() is JobState.QUEUED


# -- a pool used where it should not be --------------------------------------------------------


# -- reading back a record whose stored bytes are garbage ------------------------------------


@pytest.mark.parametrize(("fields", "status", "result_error"), [
    ({"s": "bogus"}, CorruptJob, CorruptJob),
    ({"s": b"\xff\xfe"}, CorruptJob, CorruptJob),
    ({"s": "complete", "r": b"\xc1"}, None, CorruptJob),
    ({"s": "complete", "r": b"\x91" * 100_000}, None, CorruptJob),  # too deep to decode
    ({"s": "failed", "h": b"\xc1", "dl": b"\xff"}, None, JobFailed),
    ({"s": "running", "a": "9" * 5000, "q": "-" + "9" * 30, "st": "nan", "p": b"\xc1",
      "j": b"\x00", "x": "1e400", "cw": "99999999999:x", "rs": "x"}, None, ResultTimeout),
])
@pytest.mark.asyncio
async def test_reading_a_record_with_garbage_fields_gives_typed_errors(
        backend: Backend, pool: asyncjobs.Pool, fields: dict[str, Any],
        status: type[Exception] | None, result_error: type[Exception]) -> None:
    key = pool.keys("default").job("damaged")
    await pool.client.hset(key, mapping=fields)
    job = pool.job("damaged")
    for read in (job.status, job.info):
        if status is None:
            await read()
        else:
            with pytest.raises(status):
                await read()
    assert await job.progress() is None
    with pytest.raises(result_error):
        await job.result(timeout=0.2)


@pytest.mark.asyncio
async def test_a_kept_result_that_is_garbage_is_a_corrupt_job(backend: Backend,
                                                              pool: asyncjobs.Pool) -> None:
    job_id = "AAAAAAAAAAbbbbbbbbbbbb"  # the shape whose kept result is in a shared hash
    kept = pool.keys("default").kept(job_id)
    assert kept is not None
    job = pool.job(job_id)
    for garbage in (b"", b"\x01", b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x02abc",
                    b"\x01\x01\x01\x01\x7f"):
        await pool.client.hset(kept, job_id, garbage)
        for read in (job.status, job.info):
            with pytest.raises(CorruptJob):
                await read()
        with pytest.raises(CorruptJob):
            await job.result(timeout=0.2)


@pytest.mark.parametrize(("timeout", "error"), [
    (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    (timedelta(seconds=-1), ValueError), (True, TypeError), ("1", TypeError),
    (10**400, ValueError),
])
@pytest.mark.asyncio
async def test_result_refuses_odd_timeouts(backend: Backend, pool: asyncjobs.Pool,
                                           timeout: Any, error: type[Exception]) -> None:
    job = await pool.enqueue(add, 1, 2)
    with pytest.raises(error, match="timeout"):
        await job.result(timeout=timeout)


@pytest.mark.parametrize("timeout", [0, 0.0, 1e-9, timedelta(0)])
@pytest.mark.asyncio
async def test_result_with_no_time_left_looks_once(backend: Backend, pool: asyncjobs.Pool,
                                                   timeout: Any) -> None:
    job = await pool.enqueue(add, 1, 2)
    with pytest.raises(ResultTimeout):
        await job.result(timeout=timeout)
    with pytest.raises(JobNotFound):
        await pool.job("never").result(timeout=timeout)
    await burst(backend)
    assert await job.result(timeout=timeout) == 3


def test_every_error_raised_here_is_in_the_tree() -> None:
    for kind in (SerializationError, ConfigurationError, CorruptJob, JobFailed, JobNotFound,
                 ResultTimeout):
        assert issubclass(kind, AsyncJobsError)
    assert issubclass(SerializationError, TypeError)  # what a caller catching TypeError gets
