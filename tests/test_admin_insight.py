"""Outcomes per minute, the scheduler's leader and the cron jobs, as ``Admin`` reports them
(the dashboard's charts and cron page read these)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import asyncjobs
from asyncjobs import Context

from .conftest import Backend, running

pytestmark = [pytest.mark.asyncio, pytest.mark.on_cluster]


@asyncjobs.task(max_tries=1)
async def maybe(ctx: Context, ok: bool) -> str:
    if not ok:
        raise ValueError("no")
    return "yes"


async def test_outcomes_are_counted_per_minute(backend: Backend, pool: asyncjobs.Pool) -> None:
    for ok in (True, True, True, False):
        await pool.enqueue(maybe, ok)
    expired = await pool.enqueue(maybe.options(delay=0.05, expires=0.01), True)
    await asyncio.sleep(0.1)
    await backend.run(backend.worker([maybe], burst=True))
    assert (await expired.info()).state is asyncjobs.JobState.EXPIRED
    minutes = await pool.admin.throughput(minutes=60)
    assert len(minutes) == 60
    assert [m.minute for m in minutes] == sorted(m.minute for m in minutes)
    assert minutes[-1].minute - minutes[0].minute == timedelta(minutes=59)
    total: dict[str, int] = {}
    for minute in minutes[-2:]:  # the run may straddle a minute boundary
        for name, n in minute.counts.items():
            total[name] = total.get(name, 0) + n
    assert total == {"complete": 3, "failed": 1, "expired": 1}
    assert sum(sum(m.counts.values()) for m in minutes[:-2]) == 0
    assert minutes[-1].failure_rate in (None, 0.25) or minutes[-2].failure_rate == 0.25


async def test_garbage_minute_counters_are_shown_as_absent(pool: asyncjobs.Pool) -> None:
    keys = pool.keys("default")
    seconds, _ = await pool.client.time()
    await pool.client.hset(keys.minute(int(seconds) // 60), mapping={"complete": "lots",
                                                                     "failed": "2"})
    minutes = await pool.admin.throughput(minutes=1)
    assert minutes[-1].counts == {"failed": 2}


# Python's int() refuses both: '²' passes str.isdigit(), 5,000 digits pass Python's limit.
UNREADABLE = ["lots", "\u00b2", "9" * 5000, "-3", "1.5", ""]


@pytest.mark.parametrize("garbage", UNREADABLE)
async def test_unreadable_numbers_are_shown_as_absent_never_raised(
        pool: asyncjobs.Pool, garbage: str) -> None:
    """A stats counter, a minute counter, a maximum length or a limit written by hand that
    is not a number: every view leaves it out (the README: the admin views never raise on
    what they read)."""
    keys = pool.keys("default")
    await pool.enqueue("anything")
    seconds, _ = await pool.client.time()
    await pool.client.hset(keys.minute(int(seconds) // 60),
                           mapping={"complete": garbage, "failed": "2"})
    await pool.client.hset(keys.stats, mapping={"complete": garbage, "failed": "2"})
    await pool.client.hset(keys.settings, "max_length", garbage)
    await pool.client.hset(keys.concurrency_limits, mapping={"5:limit:": garbage})
    assert (await pool.admin.throughput(minutes=1))[-1].counts == {"failed": 2}
    stats = await pool.admin.queue_stats()
    assert stats.counters.get("complete") is None and stats.counters["failed"] == 2
    assert stats.max_length is None and await pool.admin.max_length() is None
    assert await pool.admin.concurrency() == []


@pytest.mark.parametrize("cursor", [*UNREADABLE, "9" * 30, "999999999999999"])
async def test_an_unreadable_cron_cursor_is_no_last_tick(cursor: str) -> None:
    """``crons()``'s reading of a cursor: garbage, or a time no datetime can hold (a 15-
    and a 30-digit number of ms: past the year 9999), is a job whose last tick is
    unknown."""
    from asyncjobs._producer.insight import cron_infos

    record = {"name": "hourly", "queue": "q", "schedule": "every 3600s",
              "every_us": 3_600_000_000, "anchor": "1970-01-01T00:00:00Z"}
    [info] = cron_infos("q", [[record]], {b"hourly": cursor.encode()}, 1_700_000_000_000)
    assert info.last_tick is None and info.next_tick is not None


async def test_crons_with_a_registry_of_the_wrong_type_lists_none(pool: asyncjobs.Pool) -> None:
    await pool.client.set(pool.global_keys.workers, "not a sorted set")
    assert await pool.admin.crons() == []


async def test_the_leader_and_the_cron_jobs(backend: Backend, pool: asyncjobs.Pool) -> None:
    worker = backend.worker([maybe], cron=[asyncjobs.cron(maybe, every=3600, args=[True]),
                                           asyncjobs.cron(maybe, "0 8 * * *", name="daily",
                                                          args=[True], timezone="Europe/Paris",
                                                          catch_up="skip")])
    async with running(backend, worker):
        for _ in range(100):
            if await pool.admin.leader() == worker.name:
                break
            await asyncio.sleep(0.05)
        assert await pool.admin.leader() == worker.name
        # The leader's first pass writes each new cron job's cursor (and a heartbeat): up
        # to 10 s for it under load, rather than a fixed pause (0.2 s was once too short).
        for _ in range(200):
            crons = {c.name: c for c in await pool.admin.crons()}
            if all(c.last_tick is not None for c in crons.values()) and len(crons) == 2:
                break
            await asyncio.sleep(0.05)
    assert set(crons) == {"maybe", "daily"}
    hourly, daily = crons["maybe"], crons["daily"]
    assert hourly.schedule == "every 3600s" and hourly.workers == 1
    # A new cron job starts its cursor at "now" (no tick is due yet): the next tick is the
    # next whole hour (intervals are anchored at the epoch).
    assert hourly.last_tick is not None and hourly.next_tick is not None
    assert timedelta(0) < hourly.next_tick - hourly.last_tick <= timedelta(hours=1)
    assert (hourly.next_tick.minute, hourly.next_tick.second) == (0, 0)
    assert hourly.last_job_id is None
    assert daily.schedule == "cron '0 8 * * *' Europe/Paris"
    assert daily.next_tick is not None and daily.next_tick.astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Paris")).hour == 8
    assert await pool.admin.leader() is None  # released at shutdown
