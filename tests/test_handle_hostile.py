"""Hostile use of the producer side: job handles, result waits, and opening a pool.

From an adversarial sweep: each test failed on the code it was written against because of
the defect its docstring names ("Was:"); the behaviour checked is the one README.md and the
docstrings promise (a typed error from ``asyncjobs.exceptions`` or a documented
TypeError/ValueError, never a raw redis-py error, a wrong answer, a leak or a wait past the
stated bound).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

import asyncjobs
from asyncjobs.exceptions import (
    AsyncJobsError,
    ConfigurationError,
    JobNotFound,
    RedisUnavailable,
    ResultTimeout,
)

from .conftest import Backend

pytestmark = pytest.mark.asyncio


async def _channels(admin: Redis, prefix: str) -> list[bytes]:
    return list(await admin.pubsub_channels(f"{prefix}:*"))


async def test_result_waits_cancelled_again_and_again_leave_no_subscription_behind(
    real: Backend,
) -> None:
    """Was: a ``job.result()`` call whose cancellation is delivered again while it
    leaves (anyio cancel scopes re-deliver it at every await; so does a second
    ``task.cancel()``, or ``wait_for`` around ``asyncio.timeout``) never unregisters from
    the pool's waiter when other waiters are leaving at the same time: the exit path of
    ``Waiter.watch`` (waiter.py, the ``finally`` with ``async with self._lock``) is
    cancelled while it waits for the lock, so its event stays in ``_events``, the channel
    stays subscribed and the reader task runs for ever. In a web app that puts a timeout
    around ``result()`` this grows without bound.
    Expected: once every cancelled ``result()`` call has returned, none of its channels is
    still subscribed (as with a single cancellation)."""
    admin = Redis.from_url(real.url)
    try:
        async with real.pool() as pool:
            jobs = await pool.enqueue_many(asyncjobs.call("never_run") for _ in range(100))
            with anyio.fail_after(15):
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        for job in jobs:
                            tg.start_soon(job.result, 10)
                        while len(await _channels(admin, real.prefix)) < len(jobs):
                            await anyio.sleep(0.02)
                        scope.cancel()
            left = await _channels(admin, real.prefix)
            deadline = time.monotonic() + 3
            while left and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                left = await _channels(admin, real.prefix)
            leaked = len(left)
            assert leaked == 0, (f"{leaked} of {len(jobs)} result() calls, all cancelled and "
                                 "returned, are still subscribed")
    finally:
        await admin.aclose()


async def test_abort_on_a_queue_whose_keys_are_damaged_raises_a_typed_error(
    real: Backend,
) -> None:
    """Was: ``job.abort()`` of a queued job whose queue's stream key holds something
    else (a string) raises redis-py's ``ResponseError`` ("user_script:77:
    ASYNCJOBS_CORRUPT key ... holds a string, not a stream"), raw: handle.py ``abort``
    passes abort.lua's ``check_type`` error through ``pool.call`` untranslated (the same
    damage makes ``enqueue`` raise a typed ``EnqueueError``). Same with a damaged delayed
    set for a scheduled job.
    Expected: an ``asyncjobs.exceptions`` error (e.g. ``CorruptJob``) saying which key is
    damaged."""
    async with real.pool() as pool:
        queued = await pool.enqueue("never_run")
        scheduled = await pool.enqueue(asyncjobs.task_ref("never_run").options(delay=600))
        keys = pool.keys("default")
        await pool.client.delete(keys.stream, keys.delayed)
        await pool.client.set(keys.stream, "garbage")
        await pool.client.set(keys.delayed, "garbage")
        for job in (queued, scheduled):
            try:
                await job.abort()
            except AsyncJobsError:
                continue
            except RedisError as exc:
                pytest.fail(f"abort() of a {await job.status()} job raised redis-py's "
                            f"{type(exc).__name__}: {exc}")


async def test_a_pool_too_small_to_wait_for_results_is_refused(
    real: Backend,
) -> None:
    """Was: on a pool opened with ``max_connections=1`` (accepted by ``create_pool``),
    ``job.result(timeout=0.5)`` subscribes first, and the waiter's PubSub takes the
    pool's only connection (waiter.py ``_subscribe`` via ``client.pubsub()``); the
    record read that follows then waits the whole socket timeout (5 s) for a connection
    and raises ``PoolExhausted`` ("too many calls at once", with one call). The PubSub
    keeps that connection after the wait ends (``_unsubscribe`` leaves it open), so every
    later call of the pool, ``enqueue`` included, raises ``PoolExhausted`` for ever.
    Expected: ``ResultTimeout`` within about its timeout, and the pool still usable after
    (or the option refused up front with a ``ConfigurationError``)."""
    with pytest.raises(ConfigurationError, match="max_connections must be a whole number, "
                                                 "2 or more"):
        real.pool(max_connections=1)
    async with real.pool(max_connections=2) as pool:  # the smallest: waits, then enqueues
        job = await pool.enqueue("never_run")
        began = time.monotonic()
        with pytest.raises(ResultTimeout):
            await job.result(timeout=0.5)
        assert time.monotonic() - began < 3
        await pool.enqueue("never_run")


@pytest.mark.parametrize("path", ["/-1", "/abc", "/1/2"])
async def test_a_redis_url_whose_path_is_no_database_number_is_refused(
    real: Backend, path: str,
) -> None:
    """Was: a Redis URL whose path is not a database number is not checked like its
    ``?db=`` option is (url_options.py checks the query only; connection.py
    ``parse_plain_url`` hands the path to redis-py's ``parse_url``, which drops what is not
    an int and strips slashes): ``/abc`` silently opens database 0, ``/1/2`` database 12,
    and ``/-1`` reaches Redis and comes back from ``create_pool`` as a raw redis-py
    ``ResponseError`` ("DB index is out of range"), where ``?db=-1`` is a ``BadRedisUrl``.
    Expected (README: "a value that can never work ... is a ConfigurationError naming
    it"): ``ConfigurationError`` before anything connects."""
    url = real.url.rsplit("/", 1)[0] + path
    try:
        async with asyncjobs.create_pool(url, prefix=real.prefix, retry_for=0.5):
            pass
    except ConfigurationError:
        return
    except RedisError as exc:
        pytest.fail(f"create_pool({url!r}) raised redis-py's {type(exc).__name__}: {exc}")
    pytest.fail(f"create_pool({url!r}) opened a pool (on another database than the URL says)")


async def test_a_database_number_the_server_does_not_have_is_a_configuration_error(
    real: Backend,
) -> None:
    """Was: ``create_pool`` on a URL naming a database the server does not have
    (``/99999``, or ``?db=99999``) raises redis-py's ``ResponseError`` ("DB index is out
    of range") from the opening checks (opening.py ``open_``: ``pool._retrying(
    client.ping)`` re-raises a ResponseError it does not retry, untranslated).
    Expected: a typed error (``ConfigurationError``: the URL can never work)."""
    url = real.url.rsplit("/", 1)[0] + "/99999"
    try:
        async with asyncjobs.create_pool(url, prefix=real.prefix, retry_for=0.5):
            pytest.fail("a pool opened on a database the server does not have")
    except AsyncJobsError:
        pass
    except RedisError as exc:
        pytest.fail(f"create_pool raised redis-py's {type(exc).__name__}: {exc}")


async def _open_and_close(url: str, **options: Any) -> None:
    async with asyncjobs.create_pool(url, **options):
        pass


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never sends a byte (a TLS endpoint whose
    back end is gone: the handshake never completes)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_create_pool_timeout_bounds_a_connect_that_never_completes(
    silent_listener: int,
) -> None:
    """Was: ``create_pool(timeout=0.5, retry_for=0.5)`` on an endpoint whose connect
    never completes takes 10 s to raise ``RedisUnavailable``: the pool's connect timeout
    is fixed at 5 s whatever ``timeout`` says (transport.py ``pool_settings``:
    ``socket_connect_timeout: 5.0``), and redis-py's one retry doubles it. A host that
    drops SYNs (down, firewalled) behaves the same on ``redis://``.
    Expected (create_pool's docstring: "Each Redis call waits at most ``timeout``
    seconds; a call that cannot reach Redis is retried for up to ``retry_for`` seconds,
    then raises ``RedisUnavailable``"): ``RedisUnavailable`` within a few seconds."""
    began = time.monotonic()
    with pytest.raises(RedisUnavailable):
        await asyncio.wait_for(_open_and_close(f"rediss://127.0.0.1:{silent_listener}/0",
                                               timeout=0.5, retry_for=0.5), 18)
    took = time.monotonic() - began
    assert took < 4, f"create_pool(timeout=0.5, retry_for=0.5) took {took:.1f} s to give up"


async def test_a_handle_for_a_bytes_job_id_is_refused(
    real: Backend,
) -> None:
    """Was: ``pool.job(job_id)`` checks nothing (pool.py ``job``; enqueue checks ids with
    ``check_job_id``), so a job id given as bytes (as a raw Redis client returns it)
    makes a handle whose keys are built from ``repr`` (``...:job:b'abc'``):
    ``result()`` and ``abort()`` answer ``JobNotFound`` for a job that is queued under
    that id, while ``status()`` fails with an unrelated regex ``TypeError``.
    Expected: a ``TypeError``/``ValueError`` naming the bad id, or a handle on the job."""
    async with real.pool() as pool:
        await pool.enqueue(asyncjobs.task_ref("never_run").options(job_id="abc"))
        try:
            handle = pool.job(b"abc")  # type: ignore[arg-type]
            aborted = await handle.abort()
        except (TypeError, ValueError):
            return
        except JobNotFound as exc:
            pytest.fail(f"a handle on b'abc' says the queued job 'abc' does not exist: {exc}")
        assert aborted is True
