"""The scheduler under operator faults, piece by piece (the end-to-end cases are in
``test_operator_faults.py``): its lease given up while Redis refuses commands for now."""

from __future__ import annotations

import asyncio
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

pytestmark = pytest.mark.asyncio


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
