"""The job handle a producer gets back: status, record, result, progress, abort.

Which record a handle reads: the hash in the job's own key when it has a state, else the
job's kept result (``_redis.kept``), else none. A hash without a state (written by hand,
or by another program) beside no kept result is damaged: ``CorruptJob`` from every reader
(``status``, ``info``, ``result``, ``abort``); ``JobNotFound`` means no record at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from redis.exceptions import ResponseError

from .._codec import decode_errors, decode_progress, decode_spec, decode_value
from .._model import ENDED_TTL_S, ErrorInfo, JobInfo, JobState, Progress, from_ms
from .._redis import scripts as _scripts
from .._redis.kept import decode as kept_record
from .._redis.keys import split_limit_name
from .._redis.refusals import corrupt_key
from .._text import safe_str
from ..exceptions import (
    CorruptJob,
    JobAborted,
    JobExpired,
    JobFailed,
    JobNotFound,
    ResultTimeout,
)

if TYPE_CHECKING:
    from .._durations import Seconds
    from .pool import Pool

R = TypeVar("R")
T = TypeVar("T")

_RECHECK_S = 5.0  # re-read the record this often while waiting, in case a notice was lost
_REGISTERED_MS = 15_000  # a waiter's registration lasts this long (renewed at each re-read)


class Job(Generic[R]):
    """A handle on one job. Cheap to create: it holds the id, the queue and the pool."""

    __slots__ = ("_pool", "_result_type", "id", "queue")

    def __init__(self, pool: Pool, job_id: str, queue: str, result_type: Any = Any) -> None:
        self._pool = pool
        self._result_type = result_type
        self.id = job_id
        self.queue = queue

    def __repr__(self) -> str:
        return f"<Job {self.id} queue={self.queue}>"

    async def _read(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """One read of the job's key; a key holding something other than a hash is a
        ``CorruptJob``, not a Redis error."""
        try:
            return await self._pool.call(make)
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise CorruptJob(self.id, "its key holds something other than a hash") from None

    async def _lookup(self, own: Callable[[Any, str], Any]) -> tuple[Any, bytes | None]:
        """One round trip: ``own(pipeline, job key)``'s reply, and the job's kept result
        (packed, see ``kept``; None when it has none). A job key holding something other
        than a hash is a ``CorruptJob``; a shared hash of another type holds nothing."""
        keys = self._pool.keys(self.queue)
        kept = keys.kept(self.id)

        async def read() -> list[Any]:
            pipe = self._pool.client.pipeline(transaction=False)
            own(pipe, keys.job(self.id))
            if kept is not None:
                pipe.hget(kept, self.id)
            return list(await pipe.execute(raise_on_error=False))

        replies = await self._pool.call(read)
        first = replies[0]
        if isinstance(first, ResponseError) and "WRONGTYPE" in str(first):
            raise CorruptJob(self.id, "its key holds something other than a hash")
        if isinstance(first, Exception):
            raise first
        packed = replies[1] if len(replies) > 1 else None
        return first, packed if isinstance(packed, bytes) else None

    async def _not_found(self) -> NoReturn:
        """Raise when the first look found no state, in the job's key or a kept result:
        ``CorruptJob`` if a second look finds a hash there without a readable state, else
        ``JobNotFound`` (also for a job written between the looks: it was not there). Only
        a lookup of a missing or damaged job pays this second round trip."""
        key = self._pool.keys(self.queue).job(self.id)
        raw: dict[bytes, bytes] = await self._read(lambda: self._pool.client.hgetall(key))
        if raw:
            _state(self.id, raw.get(b"s"))
        raise JobNotFound(self.id, self.queue)

    def _unpack(self, packed: bytes) -> dict[bytes, bytes]:
        """A kept result's record fields; ``CorruptJob`` for garbage in the shared hash."""
        try:
            return kept_record(packed)
        except ValueError as exc:
            raise CorruptJob(self.id, f"its kept result cannot be read: {exc}") from None

    async def status(self) -> JobState:
        """The job's current state; raises ``JobNotFound`` if there is no record,
        ``CorruptJob`` if its record has no state asyncjobs can read."""
        state, packed = await self._lookup(lambda p, key: p.hget(key, "s"))
        if state is None:
            if packed is None:
                await self._not_found()
            state = self._unpack(packed)[b"s"]
        return _state(self.id, state)

    async def info(self) -> JobInfo:
        """The whole record: task, arguments, state, attempts, times, errors, progress."""
        raw, packed = await self._lookup(lambda p, key: p.hgetall(key))
        if b"s" not in raw:  # no record of its own: a kept result, if any, is the record
            if packed is not None:
                raw = self._unpack(packed)
            elif not raw:
                raise JobNotFound(self.id, self.queue)
        return parse_record(self.id, self.queue, raw)

    async def progress(self) -> Progress | None:
        """The latest progress the task reported, if any."""
        key = self._pool.keys(self.queue).job(self.id)
        data: bytes | None = await self._read(lambda: self._pool.client.hget(key, "p"))
        return _or_default(lambda: decode_progress(data), None)

    async def result(self, timeout: Seconds | None = None) -> R:
        """Wait for the job to end and return its value.

        Raises ``JobFailed`` (with the remote error's type, message and traceback),
        ``JobAborted``, ``JobExpired``, ``ResultTimeout`` when ``timeout`` elapses first,
        ``JobNotFound``, ``CorruptJob``, or ``PoolClosed`` when the pool closes (at once,
        also while waiting). Waiting uses pub/sub, not polling.
        """
        from .._durations import to_seconds

        limit = to_seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        keys = self._pool.keys(self.queue)
        async with self._pool.waiter.watch(keys.done_channel(self.id)) as notice:
            while True:
                notice.clear()
                found = await self._final_value()
                if found is not None:
                    return found[0]  # type: ignore[no-any-return]
                wait = _RECHECK_S
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise ResultTimeout(f"job {self.id} did not finish within {limit} s")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await notice.wait()

    async def _final_value(self) -> tuple[Any] | None:
        """The job's final value (in a 1-tuple), None while it runs; registers the job as
        waited for (settles publish its end only then; the registration lapses on its own
        ``_REGISTERED_MS`` after the last read)."""
        keys = self._pool.keys(self.queue)
        final = _scripts.load(_scripts.FINAL)
        reply: list[bytes | None] = await self._read(lambda: final(
            self._pool.client, [keys.job(self.id), keys.waiting], [self.id, _REGISTERED_MS]))
        state, value, history, reason = reply
        if state is None:
            await self._not_found()
        if state == b"kept":  # in a shared hash: value is the packed record
            state, value = b"complete", self._unpack(value or b"")[b"r"]
        current = _state(self.id, state)
        if current is JobState.COMPLETE:
            try:
                return (decode_value(value, self._result_type) if value else None,)
            except Exception as exc:
                raise CorruptJob(self.id, f"its result cannot be decoded as "
                                 f"{getattr(self._result_type, '__name__', self._result_type)}"
                                 f": {safe_str(exc, 200)}") from exc
        if current is JobState.FAILED:
            errors = _or_default(lambda: decode_errors(history), _NO_ERRORS)
            error = errors[-1] if errors else ErrorInfo("unknown", _text(reason), "", 0, 0)
            raise JobFailed(self.id, error, errors)
        if current is JobState.ABORTED:
            raise JobAborted(self.id, f"job {self.id} was aborted")
        if current is JobState.EXPIRED:
            raise JobExpired(self.id, f"job {self.id} expired: no attempt may start after its "
                                      "expiry time")
        return None

    async def abort(self) -> bool:
        """Abort the job. A queued or scheduled job never starts; a running one is cancelled
        within about a second. Returns False if the job had already ended."""
        try:
            state: str = await self._pool.call(
                lambda: self._pool.store(self.queue).abort(self.id, ENDED_TTL_S))
        except ResponseError as exc:
            if damage := corrupt_key(exc):  # a key of its queue holds the wrong type
                raise CorruptJob(self.id, f"a key of its queue is damaged: {damage}") from None
            raise
        if state == "missing":
            await self._not_found()
        return not _state(self.id, state.encode()).is_final


_NO_ERRORS: tuple[ErrorInfo, ...] = ()


def _text(raw: bytes | None) -> str:
    return raw.decode(errors="replace") if raw else ""


def _ms(raw: bytes | None) -> Any:
    """A time field, or None when absent or not a time (garbage is shown as absent)."""
    try:
        return from_ms(int(raw)) if raw else None
    except (ValueError, OverflowError, OSError):
        return None


def _entry_ms(entry: bytes | None) -> bytes | None:
    """A stream entry id's time part: the enqueue time of a job not started yet."""
    return entry.split(b"-", 1)[0] if entry else None


def _state(job_id: str, raw: bytes | None) -> JobState:
    try:
        return JobState(_text(raw))
    except ValueError:
        why = ("it has no state field" if raw is None
               else f"its state field is {_text(raw)[:50]!r}")
        raise CorruptJob(job_id, why) from None


def _or_default(decode: Callable[[], T], default: T) -> T:
    """A field decoded, or ``default`` when it holds garbage: a record is shown with what
    can be read (its state is the one field that must be readable)."""
    try:
        return decode()
    except Exception:
        return default


def parse_record(job_id: str, queue: str, raw: dict[bytes, bytes]) -> JobInfo:
    """Build a ``JobInfo`` from a record hash (see ``_model`` for the fields). Fields that
    hold garbage are shown as absent; a state that cannot be read raises ``CorruptJob``."""
    state = _state(job_id, raw.get(b"s"))
    spec = _or_default(lambda: decode_spec(raw[b"j"]), None)
    try:
        attempts = int(raw.get(b"a", 0))
    except ValueError:
        attempts = 0
    return JobInfo(
        id=job_id,
        queue=queue,
        task=spec.task if spec else "<undecodable>",
        args=spec.args if spec else [],
        kwargs=spec.kwargs if spec else {},
        state=state,
        attempts=attempts,
        enqueued_at=_ms(raw.get(b"q") or _entry_ms(raw.get(b"e"))),
        scheduled_for=_ms(raw.get(b"d")),
        started_at=_ms(raw.get(b"st")),
        ended_at=_ms(raw.get(b"et")),
        expires_at=_ms(raw.get(b"x")),
        worker=_text(raw.get(b"w")) or None,
        errors=_or_default(lambda: decode_errors(raw.get(b"h")), _NO_ERRORS),
        progress=_or_default(lambda: decode_progress(raw.get(b"p")), None),
        dead_letter_reason=_text(raw.get(b"dl")) or None,
        timeout_s=spec.timeout_s if spec else None,
        max_tries=spec.max_tries if spec else None,
        headers=dict(spec.headers) if spec else {},
        result=_or_default(lambda: decode_value(raw[b"r"]), None) if b"r" in raw else None,
        waiting_on=(_waiting_on(state, raw.get(b"cw"))
                    or _rate_wait(state, spec.task if spec else "", raw.get(b"rs"))),
    )


def _rate_wait(state: JobState, task: str, raw: bytes | None) -> str | None:
    """Why a scheduled job waits, when its task's rate limit deferred it to a slot (its
    ``rs``, ms)."""
    slot = _ms(raw) if state is JobState.SCHEDULED and raw else None
    if slot is None:
        return None
    return (f"rate limit of task {task!r}: its slot is at "
            f"{slot.isoformat(timespec='milliseconds')}")


def _waiting_on(state: JobState, raw: bytes | None) -> str | None:
    """Why a scheduled job waits, when a concurrency limit deferred it (its ``cw``)."""
    if state is not JobState.SCHEDULED or not raw:
        return None
    task, key = split_limit_name(_text(raw))
    if not task:
        return None
    where = f" for key {key!r}" if key else ""
    return (f"concurrency limit of task {task!r}{where}: every lease is held; it starts "
            "when one is released")
