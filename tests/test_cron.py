"""Table tests for the pure schedule logic in asyncjobs._scheduling.cron (no Redis, no clock,
no sleeping).

Expected instants are worked out by hand from the cron and DST rules and written as literals:
Europe/Berlin springs forward on 2026-03-29 at 01:00Z (02:00 CET -> 03:00 CEST) and falls back
on 2026-10-25 at 01:00Z (03:00 CEST -> 02:00 CET); America/New_York springs forward on
2026-03-08 at 07:00Z (02:00 EST -> 03:00 EDT) and falls back on 2026-11-01 at 06:00Z
(02:00 EDT -> 01:00 EST). 2026-11-21 is a Saturday.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs._scheduling.cron import (
    CURSOR_AHEAD_MAX_MS,
    DROPPED_CAP,
    FIRE_CAP,
    MIN_GRACE,
    CatchUp,
    CronExpr,
    Every,
    Schedule,
    TickPlan,
    next_fire,
    plan_ticks,
    read_cursor,
    tick_id,
)

BERLIN = ZoneInfo("Europe/Berlin")
SKIP, LATEST, ALL = CatchUp.SKIP, CatchUp.LATEST, CatchUp.ALL


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def berlin(
    year: int, month: int, day: int, hour: int, minute: int, second: int = 0, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, fold=fold, tzinfo=BERLIN)


def walk(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """The first `count` ticks after `start`, by repeated next_after."""
    ticks = [schedule.next_after(start)]
    while len(ticks) < count:
        ticks.append(schedule.next_after(ticks[-1]))
    return ticks


# --- CronExpr.next_after ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "zone", "moment", "expected"),
    [
        ("*/5 * * * *", "UTC", utc(2026, 11, 21, 14, 52, 30), utc(2026, 11, 21, 14, 55)),
        ("*/5 * * * *", "UTC", utc(2026, 11, 21, 14, 55), utc(2026, 11, 21, 15, 0)),
        ("0 9-17/4 * * 1-5", "UTC", utc(2026, 11, 21, 12), utc(2026, 11, 23, 9)),
        ("0 9-17/4 * * 1-5", "UTC", utc(2026, 11, 23, 9), utc(2026, 11, 23, 13)),
        ("15,45 8 1,15 * *", "UTC", utc(2026, 11, 21), utc(2026, 12, 1, 8, 15)),
        ("0 6 * * sun", "UTC", utc(2026, 11, 21), utc(2026, 11, 22, 6)),
        ("*/10 * * * * *", "UTC", utc(2026, 11, 21, 14, 52, 3, 500_000),
         utc(2026, 11, 21, 14, 52, 10)),
        ("30 0 12 * * *", "UTC", utc(2026, 11, 21, 12, 0, 30), utc(2026, 11, 22, 12, 0, 30)),
        ("0 9 * * *", "Europe/Berlin", utc(2026, 11, 21, 12), utc(2026, 11, 22, 8)),
        ("0 9 * * *", "Europe/Berlin", utc(2026, 7, 1), utc(2026, 7, 1, 7)),
        ("30 18 * * MON-FRI", "America/New_York", utc(2026, 11, 21), utc(2026, 11, 23, 23, 30)),
        ("0 0 * * *", "Asia/Kolkata", utc(2026, 11, 21), utc(2026, 11, 21, 18, 30)),
        ("*/5 * * * *", "UTC", berlin(2026, 11, 21, 15, 52, 30),
         utc(2026, 11, 21, 14, 55)),
    ],
    ids=[
        "utc-step", "utc-step-strictly-after", "step-over-range-weekend", "step-over-range-next",
        "lists", "day-name", "six-field-step-subsecond-moment", "six-field-daily",
        "berlin-winter", "berlin-summer", "new-york-weekdays", "kolkata-half-hour",
        "moment-in-other-zone",
    ],
)
def test_cron_next_after(expression: str, zone: str, moment: datetime, expected: datetime) -> None:
    fire = CronExpr(expression, zone).next_after(moment)
    assert fire == expected
    assert fire.tzinfo is UTC


# --- DST: walks of three ticks around each transition -----------------------------------------

DST_WALKS = {
    # Fixed minute and hour, 5 fields (Debian cron): the skipped 02:30 fires at the end of the
    # gap; the repeated 02:30 fires once, at its first (summer time) occurrence.
    "berlin-daily-0230-spring": ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27, 12),
        [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]),
    "berlin-daily-0230-fall": ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 23, 12),
        [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]),
    "berlin-hourly-spring": ("0 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 30),
        [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)]),
    "berlin-hourly-fall": ("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 30),
        [utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)]),
    "berlin-15min-spring": ("*/15 * * * *", "Europe/Berlin", utc(2026, 3, 29, 0, 40),
        [utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 15)]),
    "berlin-15min-fall": ("*/15 * * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 40),
        [utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 1, 0), utc(2026, 10, 25, 1, 15)]),
    # Six fields: no Debian quirk; a wall time that does not exist never fires, one that
    # occurs twice fires twice.
    "berlin-six-field-0230-spring": ("0 30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12),
        [utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30), utc(2026, 4, 1, 0, 30)]),
    "berlin-six-field-0230-fall": ("0 30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12),
        [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30), utc(2026, 10, 26, 1, 30)]),
    "ny-daily-0230-spring": ("30 2 * * *", "America/New_York", utc(2026, 3, 6, 12),
        [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]),
    "ny-daily-0230-fall": ("30 2 * * *", "America/New_York", utc(2026, 10, 30, 12),
        [utc(2026, 10, 31, 6, 30), utc(2026, 11, 1, 7, 30), utc(2026, 11, 2, 7, 30)]),
    "ny-daily-0130-fall": ("30 1 * * *", "America/New_York", utc(2026, 10, 30, 12),
        [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]),
    "ny-hourly-spring": ("0 * * * *", "America/New_York", utc(2026, 3, 8, 5, 30),
        [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)]),
    "ny-hourly-fall": ("0 * * * *", "America/New_York", utc(2026, 11, 1, 4, 30),
        [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)]),
    "ny-15min-spring": ("*/15 * * * *", "America/New_York", utc(2026, 3, 8, 6, 40),
        [utc(2026, 3, 8, 6, 45), utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 7, 15)]),
    "ny-15min-fall": ("*/15 * * * *", "America/New_York", utc(2026, 11, 1, 5, 40),
        [utc(2026, 11, 1, 5, 45), utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 6, 15)]),
}


@pytest.mark.parametrize(
    ("expression", "zone", "start", "expected"), DST_WALKS.values(), ids=DST_WALKS.keys()
)
def test_cron_dst_walk(
    expression: str, zone: str, start: datetime, expected: list[datetime]
) -> None:
    assert walk(CronExpr(expression, zone), start, 3) == expected


@pytest.mark.parametrize(
    ("expression", "moment", "expected"),
    [
        # 02:10 CET is in the second pass of the repeated hour; 02:30 CEST already happened.
        ("30 2 * * *", utc(2026, 10, 25, 1, 10), utc(2026, 10, 26, 1, 30)),
        ("30 2 * * *", berlin(2026, 10, 25, 2, 10, fold=1), utc(2026, 10, 26, 1, 30)),
        ("30 2 * * *", berlin(2026, 10, 25, 2, 10, fold=0), utc(2026, 10, 25, 0, 30)),
        ("*/15 * * * *", berlin(2026, 10, 25, 2, 50, fold=1), utc(2026, 10, 25, 2)),
    ],
    ids=[
        "daily-second-pass-utc", "daily-second-pass-fold1", "daily-first-pass-fold0", "15min-fold1"
    ],
)
def test_cron_next_after_in_repeated_hour(
    expression: str, moment: datetime, expected: datetime
) -> None:
    assert CronExpr(expression, "Europe/Berlin").next_after(moment) == expected


@pytest.mark.parametrize(
    ("expression", "moment", "expected"),
    [
        ("30 2 * * *", utc(2026, 3, 29, 1, 0, 1), utc(2026, 3, 29, 1, 0)),
        ("30 2 * * *", utc(2026, 3, 29, 1, 0), utc(2026, 3, 28, 1, 30)),
        ("30 2 * * *", utc(2026, 10, 25, 1, 40), utc(2026, 10, 25, 0, 30)),
        ("30 2 * * *", utc(2026, 10, 26, 1, 30), utc(2026, 10, 25, 0, 30)),
        ("*/15 * * * *", utc(2026, 10, 25, 1, 5), utc(2026, 10, 25, 1, 0)),
        ("*/15 * * * *", utc(2026, 10, 25, 1, 0), utc(2026, 10, 25, 0, 45)),
        ("0 * * * *", utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 0)),
        ("0 * * * *", utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 0, 0)),
        # 02:10 CET (second pass): the last tick is 02:45 CEST, not the 02:00 a wall-clock
        # walk back from 02:10 would find.
        ("0,15,30,45 2 * * *", utc(2026, 10, 25, 1, 10), utc(2026, 10, 25, 0, 45)),
        # 03:35:35 CET, given in Berlin time: the look-back must be real time, not wall time.
        ("0 * * * *", berlin(2026, 10, 25, 3, 35, 35), utc(2026, 10, 25, 2)),
    ],
    ids=[
        "daily-gap-fire", "daily-strictly-before", "daily-fall-back-repeated-hour",
        "daily-fall-back-day-after", "15min-second-pass", "15min-across-fall-back",
        "hourly-after-gap", "hourly-across-gap", "fixed-quarters-second-pass",
        "moment-in-berlin-time",
    ],
)
def test_cron_previous_before_berlin(expression: str, moment: datetime, expected: datetime) -> None:
    fire = CronExpr(expression, "Europe/Berlin").previous_before(moment)
    assert fire == expected
    assert fire is not None and fire.tzinfo is UTC


# --- Every --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "moment", "expected"),
    [
        (Every(30), utc(2026, 11, 21, 14, 52, 10), utc(2026, 11, 21, 14, 52, 30)),
        (Every(30), utc(2026, 11, 21, 14, 52, 30), utc(2026, 11, 21, 14, 53)),
        (Every(timedelta(minutes=7)), utc(2026, 11, 21, 14, 52), utc(2026, 11, 21, 14, 53)),
        (Every(timedelta(minutes=7)), utc(2026, 11, 21, 14, 53), utc(2026, 11, 21, 15, 0)),
        (Every(timedelta(hours=1), anchor=utc(2026, 1, 1, 0, 17)), utc(2026, 11, 21, 14, 52),
         utc(2026, 11, 21, 15, 17)),
        (Every(timedelta(hours=1), anchor=berlin(2026, 1, 1, 1, 17)),
         utc(2026, 11, 21, 14, 52), utc(2026, 11, 21, 15, 17)),
        (Every(timedelta(hours=1), anchor=utc(2026, 1, 1, 0, 17)), utc(2025, 12, 31, 22),
         utc(2025, 12, 31, 22, 17)),
        (Every(0.25), utc(2026, 11, 21, 14, 52, 0, 300_000), utc(2026, 11, 21, 14, 52, 0, 500_000)),
        (Every(timedelta(milliseconds=1)), utc(2026, 11, 21, 14, 52, 0, 500),
         utc(2026, 11, 21, 14, 52, 0, 1000)),
        (Every(0.1), utc(2026, 11, 21, 14, 52, 0, 999_999), utc(2026, 11, 21, 14, 52, 1)),
        (Every(1.5), utc(2026, 11, 21, 14, 52), utc(2026, 11, 21, 14, 52, 1, 500_000)),
        (Every(30), berlin(2026, 11, 21, 15, 52, 10), utc(2026, 11, 21, 14, 52, 30)),
    ],
    ids=[
        "30s", "30s-strictly-after", "7min-epoch-aligned", "7min-next", "anchored-hourly",
        "anchor-in-other-zone", "before-anchor", "quarter-second", "one-millisecond",
        "float-tenth-no-drift", "float-1.5s-epoch-aligned", "moment-in-other-zone",
    ],
)
def test_every_next_after(schedule: Every, moment: datetime, expected: datetime) -> None:
    fire = schedule.next_after(moment)
    assert fire == expected
    assert fire.tzinfo is UTC


@pytest.mark.parametrize(
    ("schedule", "moment", "expected"),
    [
        (Every(30), utc(2026, 11, 21, 14, 52, 30), utc(2026, 11, 21, 14, 52)),
        (Every(30), utc(2026, 11, 21, 14, 52, 30, 1), utc(2026, 11, 21, 14, 52, 30)),
        (Every(timedelta(minutes=7)), utc(2026, 11, 21, 14, 53), utc(2026, 11, 21, 14, 46)),
        (Every(timedelta(hours=1), anchor=utc(2026, 1, 1, 0, 17)), utc(2025, 12, 31, 22),
         utc(2025, 12, 31, 21, 17)),
    ],
    ids=["on-tick-strictly-before", "just-after-tick", "7min", "before-anchor"],
)
def test_every_previous_before(schedule: Every, moment: datetime, expected: datetime) -> None:
    assert schedule.previous_before(moment) == expected


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (utc(2026, 11, 21, 14), [utc(2026, 11, 21, 14, m) for m in (4, 11, 18, 25, 32)]),
        (utc(2026, 11, 21, 14, 20, 0, 500_000), [utc(2026, 11, 21, 14, m) for m in (25, 32, 39)]),
        (utc(2026, 11, 21, 14, 25), [utc(2026, 11, 21, 14, m) for m in (32, 39)]),
    ],
    ids=["from-14:00", "from-14:20:00.5", "from-a-tick"],
)
def test_every_same_ticks_from_any_start(start: datetime, expected: list[datetime]) -> None:
    assert walk(Every(timedelta(minutes=7)), start, len(expected)) == expected


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (Every(30), "every 30s"),
        (Every(0.25), "every 0.25s"),
        (Every(timedelta(milliseconds=1)), "every 0.001s"),
        (Every(timedelta(hours=1), anchor=utc(2026, 1, 1, 0, 17)),
         "every 3600s from 2026-01-01T00:17:00Z"),
        (CronExpr("*/5 * * * *", "Europe/Berlin"), "cron '*/5 * * * *' Europe/Berlin"),
        (CronExpr("0 3 * * *"), "cron '0 3 * * *' UTC"),
        (CronExpr("0 3 * * *", ZoneInfo("America/New_York")), "cron '0 3 * * *' America/New_York"),
    ],
    ids=["every-30s", "every-subsecond", "every-1ms", "every-anchored", "cron-berlin",
         "cron-default-utc", "cron-zoneinfo"],
)
def test_describe(schedule: Schedule, expected: str) -> None:
    assert schedule.describe() == expected


def test_every_normalises_interval() -> None:
    assert Every(30) == Every(timedelta(seconds=30))
    assert Every(30).interval == timedelta(seconds=30)
    assert Every(1.001).interval == timedelta(microseconds=1_001_000)
    assert Every(1, anchor=berlin(2026, 1, 1, 1, 0)).anchor == utc(2026, 1, 1)


# --- plan_ticks ------------------------------------------------------------------------------

MINUTELY = Every(60)
NOW = utc(2026, 11, 21, 14, 52, 30)
S30 = timedelta(seconds=30)


def hm(hour: int, minute: int) -> datetime:
    return utc(2026, 11, 21, hour, minute)


PLANS = {
    # name: (schedule, cursor, now, policy, grace, max_catch_up, expected plan)
    "never-evaluated": (MINUTELY, None, NOW, ALL, S30, 3, TickPlan((), NOW, 0)),
    "nothing-due": (MINUTELY, hm(14, 52), NOW, SKIP, S30, 3, TickPlan((), hm(14, 52), 0)),
    "cursor-ahead-of-now": (MINUTELY, hm(14, 55), NOW, ALL, S30, 3, TickPlan((), hm(14, 55), 0)),
    "one-on-time": (MINUTELY, hm(14, 52), utc(2026, 11, 21, 14, 53, 5), SKIP, S30, 3,
                    TickPlan((hm(14, 53),), hm(14, 53), 0)),
    "late-wake-all-on-time": (MINUTELY, hm(14, 50), utc(2026, 11, 21, 14, 53, 5), SKIP,
                              timedelta(minutes=5), 3,
                              TickPlan((hm(14, 51), hm(14, 52), hm(14, 53)), hm(14, 53), 0)),
    # Candidates 14:41..14:45, all older than now - grace = 14:45:20.
    "missed-skip": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 45, 50), SKIP, S30, 3,
                    TickPlan((), hm(14, 45), 5)),
    "missed-latest": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 45, 50), LATEST, S30, 3,
                      TickPlan((hm(14, 45),), hm(14, 45), 4)),
    "missed-all-capped": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 45, 50), ALL, S30, 3,
                          TickPlan((hm(14, 43), hm(14, 44), hm(14, 45)), hm(14, 45), 2)),
    "missed-all-within-cap": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 45, 50), ALL, S30, 10,
                              TickPlan(tuple(hm(14, m) for m in range(41, 46)), hm(14, 45), 0)),
    # Candidates 14:41..14:46; 14:46 is on time (>= 14:45:40), 14:41..14:45 are missed.
    "mixed-skip": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 46, 10), SKIP, S30, 3,
                   TickPlan((hm(14, 46),), hm(14, 46), 5)),
    "mixed-latest": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 46, 10), LATEST, S30, 3,
                     TickPlan((hm(14, 46),), hm(14, 46), 5)),
    "mixed-all-capped": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 46, 10), ALL, S30, 3,
                         TickPlan((hm(14, 43), hm(14, 44), hm(14, 45), hm(14, 46)), hm(14, 46), 2)),
    "mixed-all-within-cap": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 46, 10), ALL, S30, 10,
                             TickPlan(tuple(hm(14, m) for m in range(41, 47)), hm(14, 46), 0)),
    # now - grace == 14:45:00 exactly: the 14:45 tick is on time.
    "grace-boundary-on-time": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 45, 30), SKIP, S30, 3,
                               TickPlan((hm(14, 45),), hm(14, 45), 4)),
    "grace-boundary-plus-1us": (MINUTELY, hm(14, 40), utc(2026, 11, 21, 14, 45, 30, 1), SKIP, S30,
                                3, TickPlan((), hm(14, 45), 5)),
    "zero-grace-tick-at-now": (MINUTELY, hm(14, 40), hm(14, 45), SKIP, timedelta(0), 3,
                               TickPlan((hm(14, 45),), hm(14, 45), 4)),
    # 15-minute cron, 5 candidates 10:15..11:15, all missed (now - grace = 11:19).
    "cron-missed-latest": (CronExpr("*/15 * * * *"), utc(2026, 11, 21, 10),
                           utc(2026, 11, 21, 11, 20), LATEST, timedelta(minutes=1), 3,
                           TickPlan((utc(2026, 11, 21, 11, 15),), utc(2026, 11, 21, 11, 15), 4)),
    "cron-missed-all": (CronExpr("*/15 * * * *"), utc(2026, 11, 21, 10), utc(2026, 11, 21, 11, 20),
                        ALL, timedelta(minutes=1), 2,
                        TickPlan((utc(2026, 11, 21, 11), utc(2026, 11, 21, 11, 15)),
                                 utc(2026, 11, 21, 11, 15), 3)),
    # The Berlin 02:30 job fires at 03:00 CEST (01:00Z) on the spring-forward day.
    "cron-berlin-spring-forward": (CronExpr("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 1, 30),
                                   utc(2026, 3, 29, 1, 0, 10), SKIP, timedelta(minutes=1), 3,
                                   TickPlan((utc(2026, 3, 29, 1),), utc(2026, 3, 29, 1), 0)),
}


@pytest.mark.parametrize(
    ("schedule", "cursor", "now", "policy", "grace", "max_catch_up", "expected"),
    PLANS.values(),
    ids=PLANS.keys(),
)
def test_plan_ticks(
    schedule: Schedule,
    cursor: datetime | None,
    now: datetime,
    policy: CatchUp,
    grace: timedelta,
    max_catch_up: int,
    expected: TickPlan,
) -> None:
    plan = plan_ticks(schedule, cursor, now, policy=policy, grace=grace, max_catch_up=max_catch_up)
    assert plan == expected
    assert all(tick.tzinfo is UTC for tick in plan.fire)
    assert plan.cursor.tzinfo is UTC


def test_cron_previous_before_chatham_fall_back() -> None:
    # Pacific/Chatham falls back at 03:45 +13:45 (14:00Z) on 2026-04-05; cronsim's own
    # backward walk never returns from 03:15 +13:45 for this expression.
    schedule = CronExpr("0 30 2 * * *", "Pacific/Chatham")
    assert schedule.previous_before(utc(2026, 4, 4, 13, 30)) == utc(2026, 4, 4, 12, 45)


def test_plan_ticks_grace_is_real_time_for_aware_now() -> None:
    # now = 02:30 CET on the fall-back day (01:30Z); now - grace = 00:45Z, not 01:45 CEST.
    plan = plan_ticks(
        Every(timedelta(minutes=15)), utc(2026, 10, 25, 0, 0), berlin(2026, 10, 25, 2, 30, fold=1),
        policy=SKIP, grace=timedelta(minutes=45), max_catch_up=1,
    )
    on_time = tuple(utc(2026, 10, 25, h, m) for h, m in ((0, 45), (1, 0), (1, 15), (1, 30)))
    assert plan == TickPlan(on_time, utc(2026, 10, 25, 1, 30), 2)


def test_plan_ticks_returns_utc_for_other_zones() -> None:
    now = berlin(2026, 11, 21, 15, 53, 5)
    plan = plan_ticks(MINUTELY, None, now, policy=SKIP, grace=S30, max_catch_up=1)
    assert plan.cursor == utc(2026, 11, 21, 14, 53, 5)
    assert plan.cursor.tzinfo is UTC


def test_dropped_cap_is_pinned() -> None:
    assert DROPPED_CAP == 1000


OLD_CURSOR = utc(2026, 10, 22, 14, 52, 30)  # 30 days before NOW_OLD, 2,591,995 ticks missed
NOW_OLD = utc(2026, 11, 21, 14, 52, 30, 500_000)
ON_TIME_5S = tuple(utc(2026, 11, 21, 14, 52, s) for s in range(26, 31))  # >= 14:52:25.5


@pytest.mark.parametrize(
    "schedule", [Every(1), CronExpr("* * * * * *")], ids=["every-1s", "cron-1s"]
)
@pytest.mark.parametrize(
    ("policy", "expected_fire"),
    [
        (SKIP, ON_TIME_5S),
        (LATEST, ON_TIME_5S),
        (ALL, tuple(utc(2026, 11, 21, 14, 52, s) for s in (23, 24, 25)) + ON_TIME_5S),
    ],
    ids=["skip", "latest", "all"],
)
def test_plan_ticks_thirty_day_old_cursor(
    schedule: Schedule, policy: CatchUp, expected_fire: tuple[datetime, ...]
) -> None:
    plan = plan_ticks(
        schedule, OLD_CURSOR, NOW_OLD, policy=policy, grace=timedelta(seconds=5), max_catch_up=3
    )
    assert plan == TickPlan(expected_fire, utc(2026, 11, 21, 14, 52, 30), 1000)


def test_one_plan_fires_at_most_fire_cap_on_time_ticks_and_the_next_plans_the_rest() -> None:
    """A 1 ms schedule with a day's grace, its leader back after an hour: 3.6 million ticks
    are on time. One plan listed them all (hundreds of MB, then 3.6 million enqueues before
    the cursor moved); now each plan takes the next FIRE_CAP, in order, none twice."""
    fast = Every(timedelta(milliseconds=1))
    cursor, now = NOW - timedelta(hours=1), NOW
    fired: list[datetime] = []
    for _ in range(3):
        plan = plan_ticks(fast, cursor, now, policy=SKIP, grace=timedelta(days=1),
                          max_catch_up=1)
        assert len(plan.fire) == FIRE_CAP and plan.cursor == plan.fire[-1]
        assert plan.dropped == 0
        assert plan.fire[0] == cursor + timedelta(milliseconds=1)
        fired += plan.fire
        cursor = plan.cursor
    assert len(set(fired)) == 3 * FIRE_CAP
    assert next_fire(fast, cursor, now) > now  # the scheduler plans again at the next tick
    last = plan_ticks(fast, NOW - timedelta(milliseconds=5), now, policy=SKIP,
                      grace=timedelta(days=1), max_catch_up=1)
    assert len(last.fire) == 5 and last.cursor == now  # under the cap: all of them


# --- next_fire ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "cursor", "now", "expected"),
    [
        (MINUTELY, None, NOW, hm(14, 53)),
        (MINUTELY, hm(14, 40), NOW, hm(14, 53)),
        (MINUTELY, hm(14, 53), NOW, hm(14, 54)),
        (MINUTELY, hm(14, 53), hm(14, 53), hm(14, 54)),
        (CronExpr("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 1, 30), utc(2026, 3, 28, 12),
         utc(2026, 3, 29, 1)),
    ],
    ids=["no-cursor", "old-cursor", "cursor-ahead-of-now", "cursor-equals-now", "berlin-spring"],
)
def test_next_fire(
    schedule: Schedule, cursor: datetime | None, now: datetime, expected: datetime
) -> None:
    assert next_fire(schedule, cursor, now) == expected


# --- tick_id -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fire", "expected"),
    [
        (utc(2026, 11, 21, 14, 52), "cron:cleanup:2026-11-21T14:52:00Z"),
        (utc(2026, 11, 21, 14, 52, 0, 250_000), "cron:cleanup:2026-11-21T14:52:00.250Z"),
        (utc(2026, 11, 21, 14, 52, 0, 1000), "cron:cleanup:2026-11-21T14:52:00.001Z"),
        (utc(2026, 11, 21, 14, 52, 0, 500), "cron:cleanup:2026-11-21T14:52:00.000500Z"),
        (berlin(2026, 11, 21, 15, 52), "cron:cleanup:2026-11-21T14:52:00Z"),
    ],
    ids=["whole-second", "milliseconds", "one-millisecond", "microseconds", "converted-to-utc"],
)
def test_tick_id(fire: datetime, expected: str) -> None:
    assert tick_id("cleanup", fire) == expected


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CronExpr("61 * * * *"), "invalid cron expression '61 * * * *'"),
        (lambda: CronExpr("* * *"), "invalid cron expression '* * *'"),
        (lambda: CronExpr("@daily"), "invalid cron expression '@daily'"),
        (lambda: CronExpr("0 0 31 2 *"), "invalid cron expression '0 0 31 2 *'"),
        (lambda: CronExpr("* * * * *", "Mars/Olympus"), "unknown timezone 'Mars/Olympus'"),
        (lambda: CronExpr("* * * * *", "../etc/passwd"), "unknown timezone '../etc/passwd'"),
        (lambda: Every(0), "interval must be > 0"),
        (lambda: Every(-5), "interval must be > 0"),
        (lambda: Every(timedelta(0)), "interval must be > 0"),
        (lambda: Every(0.0005), "interval must be at least 0.001 s"),
        (lambda: Every(float("nan")), "interval must be a finite number"),
        (lambda: Every(1, anchor=datetime(2026, 1, 1)), "anchor must be a timezone-aware"),
        (lambda: CronExpr("* * * * *").next_after(datetime(2026, 1, 1)), "moment must be"),
        (lambda: Every(1).previous_before(datetime(2026, 1, 1)), "moment must be"),
        (lambda: plan_ticks(MINUTELY, None, datetime(2026, 1, 1), policy=SKIP, grace=S30,
                            max_catch_up=1), "now must be a timezone-aware"),
        (lambda: plan_ticks(MINUTELY, datetime(2026, 1, 1), NOW, policy=SKIP, grace=S30,
                            max_catch_up=1), "cursor must be a timezone-aware"),
        (lambda: plan_ticks(MINUTELY, None, NOW, policy=SKIP, grace=-S30, max_catch_up=1),
         "grace must be >= 0"),
        (lambda: plan_ticks(MINUTELY, None, NOW, policy=ALL, grace=S30, max_catch_up=0),
         "max_catch_up must be 1 to 10,000"),
        (lambda: plan_ticks(MINUTELY, None, NOW, policy=ALL, grace=S30, max_catch_up=10**9),
         "max_catch_up must be 1 to 10,000"),
        (lambda: next_fire(MINUTELY, datetime(2026, 1, 1), NOW), "cursor must be"),
        (lambda: tick_id("cleanup", datetime(2026, 1, 1)), "fire must be a timezone-aware"),
    ],
    ids=[
        "minute-out-of-range", "too-few-fields", "macro", "impossible-date", "unknown-zone",
        "zone-path", "zero-interval", "negative-interval", "zero-timedelta", "below-1ms", "nan",
        "naive-anchor", "naive-cron-moment", "naive-every-moment", "naive-now", "naive-cursor",
        "negative-grace", "zero-max-catch-up", "huge-max-catch-up", "naive-next-fire-cursor",
        "naive-tick",
    ],
)
def test_validation(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


# -- the cursor as the cron hash holds it -------------------------------------------------------

NOW_MS = 1_795_276_503_766


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None),
    (b"1795276503000", 1_795_276_503_000),
    (b"0", 0),
    (b"0001795276503000", 1_795_276_503_000),
    (str(NOW_MS + CURSOR_AHEAD_MAX_MS).encode(), NOW_MS + CURSOR_AHEAD_MAX_MS),  # skew
    ("1795276503000", 1_795_276_503_000),
])
def test_read_cursor_takes_whole_ms_up_to_a_minute_ahead(raw: bytes | str | None,
                                                         expected: int | None) -> None:
    assert read_cursor(raw, NOW_MS) == (expected, "")


@pytest.mark.parametrize(("raw", "why"), [
    (b"abc", "is not a time in ms"), (b"1.5", "is not a time in ms"),
    (b"-1", "is not a time in ms"), (b"", "is not a time in ms"),
    (b" 12", "is not a time in ms"), (b"0x10", "is not a time in ms"),
    (b"1e12", "is not a time in ms"), (b"\xff\xfe", "is not a time in ms"),
    ("\u0661\u0662", "is not a time in ms"),  # digits, but not ASCII ones
    (b"99999999999999999", "is not a time in ms"),  # beyond any year a datetime holds
    (b"253402300799999", "ahead of Redis's clock"),  # the last ms of year 9999
    (str(NOW_MS + CURSOR_AHEAD_MAX_MS + 1).encode(), "ahead of Redis's clock"),
])
def test_read_cursor_refuses_what_no_leader_wrote(raw: bytes | str, why: str) -> None:
    ms, found = read_cursor(raw, NOW_MS)
    assert ms is None and why in found and "\n" not in found


@given(raw=st.one_of(st.binary(max_size=20), st.text(max_size=20),
                     st.integers(-(10**17), 10**17).map(lambda n: str(n).encode())),
       now_ms=st.integers(0, 2**53))
def test_read_cursor_never_raises_and_what_it_takes_plans(raw: bytes | str, now_ms: int) -> None:
    """Whatever the hash holds: a cursor it takes is a datetime the planner can use at
    ``now_ms``, and one it refuses comes with a reason."""
    ms, why = read_cursor(raw, now_ms)
    assert (ms is None) == bool(why)
    if ms is not None and now_ms + CURSOR_AHEAD_MAX_MS < 253_402_214_400_000:  # < 9999-12-31
        cursor = datetime.fromtimestamp(ms / 1000, tz=UTC)
        plan_ticks(MINUTELY, cursor, max(cursor, datetime.fromtimestamp(now_ms / 1000, tz=UTC)),
                   policy=SKIP, grace=S30, max_catch_up=1)


def test_a_grace_under_a_second_is_refused_where_the_cron_job_is_declared() -> None:
    import asyncjobs

    @asyncjobs.task(name="graceful")
    async def graceful(ctx: asyncjobs.Context) -> None:
        return None

    for grace in (0, 0.5, timedelta(milliseconds=999)):
        with pytest.raises(ValueError, match="grace must be at least 1 s") as caught:
            asyncjobs.cron(graceful, every=5, grace=grace)
        assert "\n" not in str(caught.value)
    assert asyncjobs.cron(graceful, every=5, grace=1).grace == MIN_GRACE
