"""A closed pool, and the job records the producer finds damaged.

Each test failed on the code it was written against because of the gap its docstring names
("Was:"), but for two guards that passed there too: a state of garbage bytes (and an empty
one), already ``CorruptJob`` for every reader, and a job written between the two looks of a
lookup (the second look is new):

- a pool used after ``await pool.close()`` quietly opened its connections again (redis-py
  reconnects a closed client); now every call of the pool, of its job handles and of its
  ``admin`` raises ``PoolClosed`` and reaches no server;
- a ``job.result()`` waiting when the pool closed went on waiting (re-reading the record
  every 5 s, on connections it opened again) until its own timeout; now it ends with
  ``PoolClosed`` at once;
- a job hash without a state field was ``JobNotFound`` for ``status()``, ``result()`` and
  ``abort()`` but ``CorruptJob`` for ``info()``; now all four agree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from fakeredis import FakeAsyncRedis as FakeRedis
from redis.asyncio import Redis, RedisCluster

import asyncjobs
from asyncjobs import Context, JobState, PoolClosed
from asyncjobs._producer import waiter as waiter_module
from asyncjobs._redis.embedded import RedisServer
from asyncjobs._redis.pubsub import pubsub_for as real_pubsub_for
from asyncjobs.testing import Harness

from .conftest import Backend

pytestmark = pytest.mark.asyncio

PROMPT_S = 1.0
"""How soon after ``close()`` a call under way must have ended."""


@asyncjobs.task
async def double(ctx: Context, x: int) -> int:
    return 2 * x


def _admin(backend: Backend) -> Any:
    """A client of the test's own on the backend's Redis (not the pool's)."""
    return backend.factory(max_connections=20, socket_timeout=10.0)


async def _channels(admin: Any, prefix: str) -> list[bytes]:
    """The result notice channels of ``prefix`` subscribed (on a cluster: on any node,
    sharded or not)."""
    if not isinstance(admin, RedisCluster):
        return list(await admin.pubsub_channels(f"{prefix}:*"))
    found: list[bytes] = []
    await admin.initialize()  # a cluster client knows its nodes from its first command
    for node in admin.get_nodes():
        for kind in ("CHANNELS", "SHARDCHANNELS"):
            found += await admin.execute_command("PUBSUB", kind, f"{prefix}:*",
                                                 target_nodes=node)
    return found


async def _until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 5.0
                 ) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within_s:g} s: {what}")
        await asyncio.sleep(0.01)


async def _subscribed(admin: Any, prefix: str, count: int) -> None:
    async def enough() -> bool:
        return len(await _channels(admin, prefix)) >= count

    await _until(enough, f"{count} result waits subscribed")


async def _none_subscribed(admin: Any, prefix: str) -> None:
    """No result notice channel of ``prefix`` is subscribed (not checked on fakeredis,
    which keeps the subscriptions of a closed connection)."""
    if isinstance(admin, FakeRedis):
        return

    async def none() -> bool:
        return not await _channels(admin, prefix)

    await _until(none, "no result notice channel still subscribed")


async def _tidy(pool: asyncjobs.Pool | None, *tasks: asyncio.Task[Any]) -> None:
    """End a test's tasks, and close its pool's own client again: on code where a closed
    pool reopened its connections, a failing test would leave them open (and uvloop hangs
    closing a loop that still has sockets)."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if pool is not None:
        await pool.client.aclose()


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text, repr(text)


async def _outcome(call: Callable[[], Awaitable[Any]]) -> str:
    """What ``call()`` did, in a word: 'PoolClosed', another error's name, 'returned', or
    'hung' (it did not end within 2 s)."""
    try:
        with anyio.move_on_after(2) as scope:
            await call()
    except PoolClosed as exc:
        _one_line(exc)
        return "PoolClosed"
    except Exception as exc:
        return type(exc).__name__
    return "hung" if scope.cancelled_caught else "returned"


def _every_call(pool: asyncjobs.Pool, job: asyncjobs.Job[Any]) -> dict[str, Callable[[], Any]]:
    """Every call of a pool, its job handles and its admin that talks to Redis."""
    admin = pool.admin
    other = pool.job("no-such-job")
    return {
        "enqueue": lambda: pool.enqueue(double, 1),
        "enqueue by name": lambda: pool.enqueue("double", 1),
        "enqueue_many": lambda: pool.enqueue_many([asyncjobs.call(double, 2)]),
        "enqueue_many, another queue": lambda: pool.enqueue_many(
            [asyncjobs.call(double.options(queue="elsewhere"), 3)]),
        "job.status": job.status,
        "job.info": job.info,
        "job.progress": job.progress,
        "job.result()": job.result,
        "job.result(timeout=1)": lambda: job.result(timeout=1),
        "job.abort": job.abort,
        "pool.job(...).status": other.status,
        "admin.queues": admin.queues,
        "admin.queue_stats": admin.queue_stats,
        "admin.set_max_length": lambda: admin.set_max_length("default", 10),
        "admin.max_length": admin.max_length,
        "admin.dead_letters": admin.dead_letters,
        "admin.job": lambda: admin.job(job.id),
        "admin.workers": admin.workers,
        "admin.throughput": admin.throughput,
        "admin.memory_used": admin.memory_used,
        "admin.leader": admin.leader,
        "admin.crons": admin.crons,
        "admin.concurrency": admin.concurrency,
        "admin.requeue": lambda: admin.requeue([job.id]),
        "admin.requeue_all": admin.requeue_all,
        "admin.purge_dead": admin.purge_dead,
        "admin.jobs": lambda: admin.jobs("queued"),
        "admin.dead_letter_page": admin.dead_letter_page,
        "admin.find_job": lambda: admin.find_job(job.id),
        "admin.make_due": lambda: admin.make_due([job.id]),
    }


async def _outcomes(pool: asyncjobs.Pool, job: asyncjobs.Job[Any]) -> dict[str, str]:
    return {name: await _outcome(call) for name, call in _every_call(pool, job).items()}


def _not_closed(outcomes: dict[str, str]) -> dict[str, str]:
    return {name: did for name, did in outcomes.items() if did != "PoolClosed"}


# -- 1. a closed pool ----------------------------------------------------------------------

@pytest.mark.on_cluster
async def test_every_call_of_a_closed_pool_raises_pool_closed(backend: Backend) -> None:
    """Was: after ``await pool.close()`` every call worked as before (redis-py opened the
    closed client's connections again); ``job.result()`` waited on.
    Expected: each call of the pool, of a job handle and of ``pool.admin`` raises
    ``PoolClosed`` (one line), at once."""
    pool = await backend.pool()
    try:
        job = await pool.enqueue(double, 21)
        await pool.close()
        assert _not_closed(await _outcomes(pool, job)) == {}
    finally:
        await _tidy(pool)


async def test_a_closed_pool_opens_no_connection(fresh_redis: RedisServer) -> None:
    """Was: the calls after ``close()`` each reached the server on a new connection.
    Expected: once the pool is closed, the server sees no connection from it again, whatever
    is called (and a result wait's pub/sub connection went with the close)."""
    admin = Redis.from_url(fresh_redis.url)
    pool = await asyncjobs.create_pool(fresh_redis.url, prefix="closed")
    job = await pool.enqueue(double, 21)
    waiting = asyncio.create_task(job.result(timeout=60))
    try:
        await _subscribed(admin, "closed", 1)
        await pool.close()
        with pytest.raises(PoolClosed):
            async with asyncio.timeout(PROMPT_S):
                await waiting

        async def only_admin() -> bool:
            return int((await admin.info("clients"))["connected_clients"]) == 1

        await _until(only_admin, "the pool's connections closed")
        before = int((await admin.info("stats"))["total_connections_received"])
        outcomes = await _outcomes(pool, job)
        after = int((await admin.info("stats"))["total_connections_received"])
        assert (_not_closed(outcomes), after - before) == ({}, 0)
        assert int((await admin.info("clients"))["connected_clients"]) == 1
    finally:
        await _tidy(pool, waiting)
        await admin.aclose()


async def test_closing_twice_or_at_once_is_harmless_and_the_pool_stays_closed(
    backend: Backend,
) -> None:
    """Was: a pool closed twice (and by two tasks at once, and by ``async with`` after an
    explicit close) was usable again.
    Expected: every close returns quietly, and the pool stays closed."""
    async with backend.pool() as pool:
        job = await pool.enqueue(double, 1)
        await pool.close()
        await pool.close()
        with anyio.fail_after(5):
            await asyncio.gather(pool.close(), pool.close(), pool.close())
    try:
        await pool.close()
        with pytest.raises(PoolClosed):
            await pool.enqueue(double, 2)
        with pytest.raises(PoolClosed):
            await job.status()
    finally:
        await _tidy(pool)


async def test_the_pool_of_async_with_create_pool_is_closed_after_the_block(
    backend: Backend,
) -> None:
    """Was: the pool of ``async with create_pool(...) as pool`` kept working after the
    block (its client reopened).
    Expected: ``PoolClosed`` after the block."""
    async with backend.pool() as pool:
        job = await pool.enqueue(double, 1)
    try:
        with pytest.raises(PoolClosed, match="closed"):
            await pool.enqueue(double, 2)
        with pytest.raises(PoolClosed):
            await job.info()
    finally:
        await _tidy(pool)


async def test_a_pool_on_a_users_client_closes_without_closing_the_client(
    backend: Backend,
) -> None:
    """Was: a ``Pool`` built on the caller's own client (``owns_client=False``) went on
    working after ``close()``, and a result wait on it went on waiting.
    Expected: the pool is closed (``PoolClosed``, the wait ended at once, its pub/sub
    subscription gone) while the caller's client is left open and working."""
    user = _admin(backend)
    admin = _admin(backend)
    pool = asyncjobs.Pool(user, prefix=backend.prefix, owns_client=False)
    job = await pool.enqueue(double, 1)
    waiting = asyncio.create_task(job.result(timeout=60))
    try:
        await _subscribed(admin, backend.prefix, 1)
        await pool.close()
        with pytest.raises(PoolClosed):
            async with asyncio.timeout(PROMPT_S):
                await waiting
        await _none_subscribed(admin, backend.prefix)
        assert _not_closed(await _outcomes(pool, job)) == {}
        assert await user.ping()
        assert await user.exists(pool.keys("default").job(job.id)) == 1
    finally:
        await _tidy(None, waiting)
        await pool.close()
        await user.aclose()
        await admin.aclose()


async def test_a_close_cuts_an_enqueue_many_waiting_for_room_short(backend: Backend) -> None:
    """Was: an ``enqueue_many`` waiting for room in a full queue (``wait_for_room``) when
    the pool closed went on polling the queue, on reopened connections, for the whole wait.
    Expected: it ends with ``PoolClosed`` at once."""
    pool = await backend.pool()
    await pool.admin.set_max_length("default", 1)
    await pool.enqueue(double, 0)
    first_write = asyncio.Event()
    write_jobs = pool.write_jobs

    async def written(*args: Any, **kwargs: Any) -> dict[int, str]:
        try:
            replies: dict[int, str] = await write_jobs(*args, **kwargs)
            return replies
        finally:
            first_write.set()

    pool.write_jobs = written
    adding = asyncio.create_task(pool.enqueue_many(
        [asyncjobs.call(double, i) for i in range(3)], wait_for_room=30))
    try:
        with anyio.fail_after(5):
            await first_write.wait()
        assert not adding.done()  # refused for now: waiting for room
        await pool.close()
        with pytest.raises(PoolClosed):
            async with asyncio.timeout(PROMPT_S):
                await adding
    finally:
        await _tidy(pool, adding)


async def test_a_close_during_an_enqueue_many_under_way(fresh_redis: RedisServer) -> None:
    """Was: an ``enqueue_many`` whose first command was under way when the pool closed
    went on after the close: redis-py sent the cut command again on a new connection, then
    the pool sent the jobs; that connection stayed open after the pool was closed.
    Expected: ``close()`` returns at once; the enqueue ends with ``PoolClosed`` once its
    command under way has its reply, sends nothing more (no job is written), and no
    connection of the pool is left open."""
    admin = Redis.from_url(fresh_redis.url)
    pool = await asyncjobs.create_pool(fresh_redis.url, prefix="cut")
    await admin.client_pause(10_000, all=False)  # writes wait; reads go on
    adding = asyncio.create_task(pool.enqueue_many(
        [asyncjobs.call(double, i) for i in range(100)]))
    try:
        async def held() -> bool:
            return any("b" in c["flags"] for c in await admin.client_list())

        await _until(held, "the enqueue's first write waiting in Redis")
        with anyio.fail_after(PROMPT_S):
            await pool.close()
        await admin.client_unpause()
        with pytest.raises(PoolClosed):
            async with asyncio.timeout(5):
                await adding

        async def only_admin() -> bool:
            return int((await admin.info("clients"))["connected_clients"]) == 1

        await _until(only_admin, "the pool's connections closed")
        keys = pool.keys("default")
        assert await admin.exists(keys.stream) == 0
        assert [k async for k in admin.scan_iter(match=f"{keys.job_prefix}*")] == []
    finally:
        await admin.client_unpause()
        await _tidy(pool, adding)
        await admin.aclose()


async def test_a_close_cuts_a_call_whose_connection_is_still_being_made() -> None:
    """Was: with redis-py 8.2, a result wait whose connection was in its handshake when the
    pool closed read that socket for ever (the close did not reach it); with 8.1 a call so
    cut connected again and waited out the pool's timeout.
    Expected: against a server that accepts connections and never answers, every call
    under way ends with ``PoolClosed`` as soon as the pool closes, enqueues and a result
    wait (its subscribe) alike, and a caller's own cancellation, sent just before the
    close, stays a cancellation."""
    accepted: list[asyncio.StreamWriter] = []
    heard = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(4096):
            heard.set()  # a handshake came in: never answered

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = await asyncjobs.create_pool(f"redis://127.0.0.1:{port}/0", check=False)
    calls = [asyncio.create_task(pool.enqueue(double, i)) for i in range(3)]
    calls.append(asyncio.create_task(pool.job("never-there").result(timeout=60)))
    own = asyncio.create_task(pool.enqueue(double, 99))
    try:
        async with asyncio.timeout(5):
            await heard.wait()
            while len(accepted) < 5:  # the enqueues' connections and the subscribe's
                await asyncio.sleep(0.01)
        own.cancel()  # the caller's own cancellation, then the close's
        with anyio.fail_after(PROMPT_S):
            await pool.close()
        done, _ = await asyncio.wait([*calls, own], timeout=PROMPT_S)
        assert len(done) == 5, "a call under way outlived the close"
        assert [type(c.exception()).__name__ for c in calls] == ["PoolClosed"] * 4
        assert own.cancelled()
        assert [c.cancelling() for c in calls] == [0] * 4  # the close's cancel taken back
        with pytest.raises(PoolClosed):
            await pool.enqueue(double, 100)
    finally:
        await _tidy(pool, *calls, own)
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()


# -- 2. a result wait when the pool closes -------------------------------------------------

@pytest.mark.on_cluster
@pytest.mark.parametrize("waits", [1, 200])
async def test_result_waits_end_with_pool_closed_soon_after_close(backend: Backend,
                                                                  waits: int) -> None:
    """Was: a ``job.result(timeout=60)`` waiting when the pool closed went on waiting (it
    re-read the record every 5 s, on reopened connections) until its timeout.
    Expected: ``close()`` returns promptly, and each wait ends with ``PoolClosed`` well
    under a second after it."""
    admin = _admin(backend)
    pool = await backend.pool()
    jobs = await pool.enqueue_many(asyncjobs.call("never_run") for _ in range(waits))
    tasks = [asyncio.create_task(job.result(timeout=60)) for job in jobs]
    try:
        await _subscribed(admin, backend.prefix, waits)
        began = time.monotonic()
        with anyio.fail_after(PROMPT_S):
            await pool.close()
        done, _ = await asyncio.wait(tasks, timeout=PROMPT_S)
        late = time.monotonic() - began
        outcomes = {type(t.exception()).__name__ for t in done}
        assert (len(done), outcomes) == (waits, {"PoolClosed"}), late
        assert late < PROMPT_S
    finally:
        await _tidy(pool, *tasks)
        await admin.aclose()


@pytest.mark.on_cluster
@pytest.mark.parametrize("own_client", [True, False], ids=["own client", "users client"])
async def test_a_close_while_result_waits_subscribe_ends_every_wait(
    backend: Backend, own_client: bool,
) -> None:
    """Was: result waits that were still subscribing (their first pub/sub connection
    opening, or the waiter's lock held) when another task closed the pool went on
    waiting; a subscription finished after the close stayed.
    Expected: whatever step each wait had reached when ``close()`` ran (swept: the close
    comes after 0, 2, 4... turns of the loop), ``close()`` returns, every wait ends with
    ``PoolClosed`` and no subscription is left."""
    admin = _admin(backend)
    user = _admin(backend)

    async def close_after(turns: int, pool: asyncjobs.Pool) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)  # one turn of the loop: a step, not a wait for time
        await pool.close()

    try:
        for turns in range(0, 24, 2):
            pool = (await backend.pool(check=False) if own_client else
                    asyncjobs.Pool(user, prefix=backend.prefix, owns_client=False))
            jobs = await pool.enqueue_many(asyncjobs.call("never_run") for _ in range(20))
            tasks = [asyncio.create_task(job.result(timeout=60)) for job in jobs]
            closer = asyncio.create_task(close_after(turns, pool))
            try:
                done, _ = await asyncio.wait([*tasks, closer], timeout=2 * PROMPT_S)
                assert closer in done, f"close() hung (after {turns} turns)"
                outcomes = {type(t.exception()).__name__ for t in tasks if t in done}
                assert (len(done), outcomes) == (len(tasks) + 1, {"PoolClosed"}), turns
                await _none_subscribed(admin, backend.prefix)
            finally:
                await _tidy(None, *tasks, closer)
                await (pool.client.aclose() if own_client else pool.close())
        # the caller's client is left open, and working
        assert await asyncio.gather(*(user.ping() for _ in range(10))) == [True] * 10
    finally:
        await admin.aclose()
        await user.aclose()


async def test_a_close_while_the_first_pubsub_connection_opens(
    backend: Backend, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was: a close that came while a result wait opened the pool's pub/sub connection
    left that wait waiting, and the connection, opened after the close, subscribed.
    Expected: ``close()`` does not wait for the opening; the wait ends with ``PoolClosed``
    once the opening returns, and what it opened is closed, not subscribed."""
    entered, gate = asyncio.Event(), asyncio.Event()
    async def held_open(client: Any) -> Any:
        entered.set()
        await gate.wait()
        return await real_pubsub_for(client)

    monkeypatch.setattr(waiter_module, "pubsub_for", held_open)
    user = _admin(backend)
    admin = _admin(backend)
    pool = asyncjobs.Pool(user, prefix=backend.prefix, owns_client=False)
    job = await pool.enqueue("never_run")
    waiting = asyncio.create_task(job.result(timeout=60))
    try:
        with anyio.fail_after(5):
            await entered.wait()
        with anyio.fail_after(PROMPT_S):
            await pool.close()
        gate.set()
        with pytest.raises(PoolClosed):
            async with asyncio.timeout(PROMPT_S):
                await waiting
        assert await user.ping()
        await _none_subscribed(admin, backend.prefix)
    finally:
        gate.set()
        await _tidy(None, waiting)
        await pool.close()
        await user.aclose()
        await admin.aclose()


# -- 3. a job hash without a state -----------------------------------------------------------

DAMAGED = {
    "no state field": {"j": b"not a spec", "a": b"1"},
    "a state of garbage bytes": {"s": b"\xff\xfe\x00garbage", "a": b"1"},
    "an empty state": {"s": b""},
}


@pytest.mark.on_cluster
@pytest.mark.parametrize("fields", list(DAMAGED.values()), ids=list(DAMAGED))
async def test_a_damaged_job_hash_is_corrupt_for_every_reader(backend: Backend,
                                                              fields: dict[str, bytes]) -> None:
    """Was: a job hash without a state field was ``JobNotFound`` for ``status()``,
    ``result()`` and ``abort()`` but ``CorruptJob`` for ``info()``.
    Expected: a hash that exists but whose state cannot be read is ``CorruptJob`` for all
    four (a state of garbage bytes already was); ``JobNotFound`` only for no hash at all."""
    async with backend.pool() as pool:
        job = pool.job("hand-made")  # not an id of new_job_ids: it has no shared hash
        await pool.client.hset(pool.keys("default").job(job.id), mapping=fields)
        outcomes = {name: await _outcome(call) for name, call in [
            ("status", job.status), ("info", job.info),
            ("result", lambda: job.result(timeout=1)), ("abort", job.abort)]}
        assert outcomes == dict.fromkeys(outcomes, "CorruptJob")
        missing = pool.job("never-enqueued")
        outcomes = {name: await _outcome(call) for name, call in [
            ("status", missing.status), ("info", missing.info),
            ("result", lambda: missing.result(timeout=1)), ("abort", missing.abort)]}
        assert outcomes == dict.fromkeys(outcomes, "JobNotFound")


async def test_a_stray_hash_beside_a_kept_result_reads_as_the_kept_record(
    backend: Backend,
) -> None:
    """Was: a complete job whose result is kept in its shared hash (``kept.py``), with a
    hash without a state in its own key beside it, was ``COMPLETE`` for ``status()``,
    ``result()`` and ``abort()`` (as final.lua and abort.lua read it) but ``CorruptJob`` for
    ``info()``.
    Expected: all four read the kept record: a state-less hash is no record."""
    async with backend.pool() as pool:
        job = await pool.enqueue(double, 21)
        await backend.run(backend.worker([double], burst=True))
        keys = pool.keys("default")
        shared = keys.kept(job.id)
        assert shared is not None and await pool.client.hexists(shared, job.id)
        await pool.client.hset(keys.job(job.id), "p", b"stray")
        assert await job.status() is JobState.COMPLETE
        assert await job.result(timeout=1) == 42
        assert await job.abort() is False
        info = await job.info()
        assert (info.state, info.result) == (JobState.COMPLETE, 42)


async def test_a_missing_job_stays_not_found_when_its_hash_comes_in_between(
    backend: Backend, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A guard on the fix of ``test_a_damaged_job_hash_is_corrupt_for_every_reader`` (not a
    gap of the old code: it passes there): a second look tells a missing job from a
    state-less hash, and a job enqueued between the two looks is never called corrupt."""
    async with backend.pool() as pool:
        job = pool.job("late-one")
        key = pool.keys("default").job(job.id)
        call = pool.call
        looks = 0

        async def counted(make: Callable[[], Awaitable[Any]]) -> Any:
            nonlocal looks
            reply = await call(make)
            looks += 1
            if looks == 1:  # the job is enqueued right after the first look
                await pool.client.hset(key, mapping={"s": "queued"})
            return reply

        monkeypatch.setattr(pool, "call", counted)
        assert await _outcome(job.status) in {"returned", "JobNotFound"}


# -- what uses a pool: the test harness, the dashboard, the outbox relay ------------------------


async def test_the_harness_reads_nothing_through_a_closed_pool() -> None:
    """``Harness.jobs()`` and ``make_due()`` read the pool's client directly: after the pool
    closed they raise ``PoolClosed`` rather than connect again."""
    harness = Harness()
    await harness.pool.enqueue("t", 1)
    assert len(await harness.jobs()) == 1
    await harness.pool.close()
    with pytest.raises(asyncjobs.PoolClosed):
        await harness.jobs()
    with pytest.raises(asyncjobs.PoolClosed):
        await harness.make_due()


async def test_a_dashboard_started_again_opens_a_new_pool(fresh_redis: RedisServer) -> None:
    """The dashboard made from a URL closes its pool at shutdown; started again (a server
    that restarts its app), it opens a new one instead of failing on the closed one."""
    import httpx

    from asyncjobs.dashboard import create_app

    app = create_app(redis_url=fresh_redis.url, prefix=f"t{time.monotonic_ns()}")
    for _ in range(2):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                reply = await http.get("/")
            assert reply.status_code == 200, reply.text[-300:]


async def test_an_outbox_relay_on_a_closed_pool_stops_with_one_line(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A relay whose pool was closed under it (the app's shutdown closed it first) stops
    with one line instead of logging a traceback and retrying for ever."""
    from .test_outbox import database

    async with database("sqlite", tmp_path) as db:
        harness = Harness()
        await harness.pool.close()
        with caplog.at_level("WARNING", "asyncjobs"):
            await asyncio.wait_for(db.relay().run(pool=harness.pool), 10)
    lines = [r for r in caplog.records if r.name.startswith("asyncjobs")]
    assert [r.getMessage() for r in lines] == ["outbox relay stops: its pool was closed"]
    assert not any(r.exc_info for r in lines)


async def test_the_workers_pool_is_closed_when_the_worker_stops(backend: Backend) -> None:
    """``ctx.pool`` kept by task code past the worker's run (an abandoned body, a global)
    raises ``PoolClosed`` instead of reconnecting the worker's closed client."""
    kept: list[asyncjobs.Pool] = []

    @asyncjobs.task(name="keeps_pool")
    async def keeps_pool(ctx: Context) -> None:
        kept.append(ctx.pool)

    async with backend.pool() as pool:
        await pool.enqueue(keeps_pool)
    await backend.run(backend.worker([keeps_pool], burst=True))
    assert len(kept) == 1 and kept[0].closed
    with pytest.raises(PoolClosed):
        await kept[0].enqueue(keeps_pool)
