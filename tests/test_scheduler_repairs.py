"""The scheduler under operator faults, piece by piece (the end-to-end cases are in
``test_operator_faults.py``): its lease given up while Redis refuses commands for now, a
stray lease key removed."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from asyncjobs._redis.keys import Keys
from asyncjobs._redis.store import QueueStore
from asyncjobs._scheduling.leader import Lease
from asyncjobs._scheduling.scheduler import Scheduler

from .conftest import Backend


def scheduler(client: Any = None) -> Scheduler:
    """A scheduler of queue ``default`` on ``client`` (never used by the tests that pass
    none), leading."""
    store = QueueStore(client, Keys("t", "default"))
    rt: Any = SimpleNamespace(stores={"default": store}, client=client, consumer="me",
                              config=SimpleNamespace(lease_ttl_s=5.0, burst=False))
    found = Scheduler(rt, "default", ["default"], [], asyncio.Event())
    found.lease._granted(time.monotonic())
    assert found.lease.held
    return found


@pytest.mark.parametrize("error", [
    ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or "
                  "SHUTDOWN NOSAVE."),
    ReadOnlyError("You can't write against a read only replica."),
    ResponseError("LOADING Redis is loading the dataset in memory"),
    RedisConnectionError("Connection reset by peer"),
], ids=["BUSY", "READONLY", "LOADING", "outage"])
@pytest.mark.asyncio
async def test_release_at_shutdown_survives_redis_refusing_commands_for_now(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """SIGTERM while another client's script keeps Redis busy: the BUSY reply to the lease's
    release escaped Scheduler.release (it caught outages only) and crashed the worker's
    shutdown. The lease is dropped (it expires on its own) and the shutdown goes on."""
    async def refused(self: Lease) -> None:
        raise error

    monkeypatch.setattr(Lease, "release", refused)
    found = scheduler()
    await found.release()
    assert not found.lease.held


@pytest.mark.asyncio
async def test_release_at_shutdown_still_raises_what_is_not_for_now(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything else (a bug, a refusal no retry helps) is not hidden."""
    async def refused(self: Lease) -> None:
        raise ResponseError("NOPERM this user has no permissions to run the 'evalsha' command")

    monkeypatch.setattr(Lease, "release", refused)
    found = scheduler()
    with pytest.raises(ResponseError, match="NOPERM"):
        await found.release()
    assert not found.lease.held


@pytest.mark.parametrize("ttl_s", [0, -1, 3600.001, 7200])
def test_no_lease_is_longer_than_an_hour(ttl_s: float) -> None:
    """lease_clear.lua removes a lease expiring more than an hour ahead: no holder may set
    one."""
    with pytest.raises(ValueError, match="lease TTL"):
        Lease(None, "k", ttl_s)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_stray_lease_is_removed_by_whoever_fails_to_take_it_and_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A value no holder writes, with an expiry: the process that fails to take the lease
    removes it (one line in the log) and takes it next; a holder's lease is left alone,
    whoever holds it, and its time left is returned."""
    client = backend.factory(max_connections=2, socket_timeout=None)
    key = f"{backend.prefix}:lease"
    try:
        mine, theirs = Lease(client, key, 5.0, "me"), Lease(client, key, 5.0, "them")
        assert await theirs.acquire()
        assert not await mine.acquire()
        assert 4.0 < await mine.remaining_s() <= 5.0
        assert await client.get(key) == theirs.token.encode()
        await client.set(key, "stray-script-value", ex=3600)
        assert not await mine.acquire()
        with caplog.at_level(logging.WARNING, "asyncjobs.scheduler"):
            assert await mine.remaining_s() == 0.0
        assert [r.getMessage() for r in caplog.records] == [
            f"removed the lease {key}, which no holder wrote: not a holder's value"]
        assert await mine.acquire()
        assert not await theirs.renew(), "the old holder finds it lost"
        assert await mine.renew()
    finally:
        await client.delete(key)
        await client.aclose()
