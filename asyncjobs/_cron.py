"""Schedules (cron expressions, fixed intervals) and the pure decision of which ticks to fire.

A *schedule* maps any instant to the next and the previous *tick* (fire time). Ticks are aware
datetimes in UTC, computed the same way by every worker, so a tick's job id (`tick_id`) is the
same everywhere and enqueueing it with `SET NX` runs it at most once.

The scheduler keeps a *cursor* per cron job: the last tick already handled, persisted by the
caller. Each time it wakes at `now`, the candidate ticks are those with `cursor < t <= now`.
A candidate with `t >= now - grace` is *on time* and is always fired: a leader that woke a little
late, or a failover shorter than `grace`, loses nothing. An older candidate is *missed*: no worker
was there to fire it, and the `CatchUp` policy decides what happens to it:

- `SKIP`: fire no missed tick.
- `LATEST`: fire the most recent missed tick, unless an on-time tick is fired anyway.
- `ALL`: fire the missed ticks, at most `max_catch_up` of them (the most recent ones).

Either way the cursor moves to the latest candidate, so a tick is considered once. A cursor of
`None` means the job was never evaluated: nothing fires and the cursor becomes `now`.

Nothing here reads the clock, sleeps or talks to Redis; `now` is always an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = [
    "DROPPED_CAP",
    "CatchUp",
    "CronExpr",
    "Every",
    "Schedule",
    "TickPlan",
    "next_fire",
    "plan_ticks",
    "tick_id",
]

DROPPED_CAP = 1000
"""`TickPlan.dropped` saturates here: counting stops after this many dropped ticks."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_MIN_INTERVAL_US = 1000


class Schedule(Protocol):
    """Something that yields ticks: aware datetimes in UTC, in a fixed, deterministic series."""

    def next_after(self, moment: datetime) -> datetime:
        """Return the first tick strictly after the aware datetime `moment`, in UTC."""
        ...

    def previous_before(self, moment: datetime) -> datetime | None:
        """Return the last tick strictly before `moment` in UTC, or None if there is none."""
        ...

    def describe(self) -> str:
        """Return a short human description, e.g. "cron '*/5 * * * *' Europe/Berlin"."""
        ...


@dataclass(frozen=True)
class CronExpr:
    """A cron expression evaluated in a timezone (an IANA name or a `ZoneInfo`), via cronsim.

    Five fields ("min hour dom mon dow") tick on whole minutes; six fields put seconds first.
    A bad expression or an unknown timezone raises `ValueError` at construction.

    Daylight saving time follows cronsim, which mimics Debian cron for five-field expressions
    whose minute and hour fields are both fixed (do not start with `*`), e.g. `30 2 * * *`:

    - spring forward: a time inside the skipped hour fires at the end of the gap (the 02:30
      Berlin job fires at 03:00 CEST on 2026-03-29);
    - fall back: a time inside the repeated hour fires once, at its first (summer time)
      occurrence (02:30 CEST on 2026-10-25, not again at 02:30 CET).

    Every other expression (a wildcard minute or hour, or six fields) matches the local wall
    clock as it really passes: a wall time that does not exist never fires, a wall time that
    occurs twice fires twice. So `0 * * * *` and `*/15 * * * *` keep firing every real hour
    or quarter hour across both transitions, while `0 30 2 * * *` does not fire on the spring
    forward day and fires twice on the fall back day.
    """

    expression: str
    timezone: str | ZoneInfo = "UTC"
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        zone = _zone_info(self.timezone)
        object.__setattr__(self, "timezone", zone)
        # cronsim takes a faster path, with identical results, for datetime.UTC.
        object.__setattr__(self, "_zone", UTC if zone.key == "UTC" else zone)
        try:
            CronSim(self.expression, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {self.expression!r}: {exc}") from exc

    def next_after(self, moment: datetime) -> datetime:
        """Return the first fire time strictly after `moment`, in UTC."""
        _require_aware(moment, "moment")
        # cronsim walks local wall time and forgets `fold`; in a repeated hour it can return
        # ticks from the first pass of that hour, which lie before `moment`: skip those.
        for tick in CronSim(self.expression, moment.astimezone(self._zone)):
            if (fire := tick.astimezone(UTC)) > moment:
                return fire
        raise ValueError(f"cron {self.expression!r} has no fire time after {moment.isoformat()}")

    def previous_before(self, moment: datetime) -> datetime | None:
        """Return the last fire time strictly before `moment` in UTC, or None (50 years back)."""
        _require_aware(moment, "moment")
        # cronsim's backward walk over local wall time can step over a tick of a repeated hour,
        # or return one its forward walk never yields. The forward series is the reference:
        # take the first candidate with a forward tick in [candidate, moment), then the last.
        for tick in CronSim(self.expression, moment.astimezone(self._zone), reverse=True):
            fire = self.next_after(tick.astimezone(UTC) - _ONE_US)
            if fire < moment:
                while (later := self.next_after(fire)) < moment:
                    fire = later
                return fire
        return None

    def describe(self) -> str:
        """Return e.g. "cron '*/5 * * * *' Europe/Berlin"."""
        return f"cron {self.expression!r} {self.timezone}"


@dataclass(frozen=True)
class Every:
    """Ticks at `anchor + k * interval` for every integer k.

    Every process derives the same ticks from the anchor (the Unix epoch by default), whatever
    `now` it starts from. `interval` is a timedelta or a number of seconds (rounded to the
    microsecond), at least 1 ms; all arithmetic is on integer microseconds, so nothing drifts.
    """

    interval: timedelta | float
    anchor: datetime = _EPOCH
    _interval_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        interval_us = _to_microseconds(self.interval)
        if interval_us <= 0:
            raise ValueError(f"interval must be > 0, got {self.interval!r}")
        if interval_us < _MIN_INTERVAL_US:
            raise ValueError(f"interval must be at least 0.001 s, got {self.interval!r}")
        _require_aware(self.anchor, "anchor")
        object.__setattr__(self, "interval", timedelta(microseconds=interval_us))
        object.__setattr__(self, "anchor", self.anchor.astimezone(UTC))
        object.__setattr__(self, "_interval_us", interval_us)

    def next_after(self, moment: datetime) -> datetime:
        """Return the first tick strictly after `moment`, in UTC."""
        _require_aware(moment, "moment")
        return self._tick((moment - self.anchor) // _ONE_US // self._interval_us + 1)

    def previous_before(self, moment: datetime) -> datetime:
        """Return the last tick strictly before `moment`, in UTC."""
        _require_aware(moment, "moment")
        return self._tick(-(-((moment - self.anchor) // _ONE_US) // self._interval_us) - 1)

    def describe(self) -> str:
        """Return e.g. "every 30s", or "every 0.25s from 2026-01-01T00:00:00.1Z"."""
        seconds, micros = divmod(self._interval_us, 1_000_000)
        text = f"every {seconds}{f'.{micros:06d}'.rstrip('0') if micros else ''}s"
        return text if self.anchor == _EPOCH else f"{text} from {_iso_z(self.anchor)}"

    def _tick(self, index: int) -> datetime:
        return self.anchor + timedelta(microseconds=index * self._interval_us)


class CatchUp(StrEnum):
    """What to do with missed ticks (older than `now - grace`); see the module docstring."""

    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


@dataclass(frozen=True)
class TickPlan:
    """The outcome of one `plan_ticks` call.

    `fire`: ticks to enqueue now, UTC, ascending. `cursor`: the cursor to persist.
    `dropped`: missed ticks the policy chose not to fire, saturating at `DROPPED_CAP`.
    """

    fire: tuple[datetime, ...]
    cursor: datetime
    dropped: int


def plan_ticks(
    schedule: Schedule,
    cursor: datetime | None,
    now: datetime,
    *,
    policy: CatchUp,
    grace: timedelta,
    max_catch_up: int,
) -> TickPlan:
    """Decide which ticks in `(cursor, now]` to fire, and the new cursor.

    On-time ticks (`t >= now - grace`) always fire; missed ones are handled by `policy`, as
    the module docstring explains. The work does not grow with the age of the cursor: missed
    ticks are found walking back from `now - grace`, and dropped ones are counted walking
    forward from the cursor only up to `DROPPED_CAP`. Only the on-time ticks (a window of
    `grace`) and the `max_catch_up` most recent missed ticks are enumerated.
    """
    _require_aware(now, "now")
    policy = CatchUp(policy)
    if grace < timedelta(0):
        raise ValueError(f"grace must be >= 0, got {grace!r}")
    if max_catch_up < 1:
        raise ValueError(f"max_catch_up must be >= 1, got {max_catch_up!r}")
    if cursor is None:
        return TickPlan(fire=(), cursor=now.astimezone(UTC), dropped=0)
    _require_aware(cursor, "cursor")
    cursor = cursor.astimezone(UTC)
    boundary = now - grace
    on_time = _ticks_through(schedule, max(cursor, boundary - _ONE_US), now)
    limit = max_catch_up if policy is CatchUp.ALL else 1
    missed = _missed_latest(schedule, cursor, boundary, limit)
    caught_up = missed if policy is CatchUp.ALL or (policy is CatchUp.LATEST and not on_time) else []
    dropped = len(missed) - len(caught_up)
    if len(missed) == limit:  # older missed ticks may exist: count them, up to the cap
        dropped += _count_between(schedule, cursor, missed[0], DROPPED_CAP - dropped)
    latest = (on_time or missed or [cursor])[-1]
    return TickPlan(fire=(*caught_up, *on_time), cursor=latest, dropped=dropped)


def next_fire(schedule: Schedule, cursor: datetime | None, now: datetime) -> datetime:
    """Return when the scheduler should next wake for this job.

    That is the first tick strictly after `max(cursor, now)` (after `now` when the cursor is
    None). After a `plan_ticks` at `now` the cursor is at most `now`, so this is simply the
    first tick after `now`; a cursor ahead of `now` (clock skew between leaders) wins.
    """
    _require_aware(now, "now")
    if cursor is not None:
        _require_aware(cursor, "cursor")
    return schedule.next_after(now if cursor is None else max(cursor, now))


def tick_id(name: str, fire: datetime) -> str:
    """Return the deterministic job id of a tick, e.g. `cron:cleanup:2026-11-21T14:52:00Z`.

    The time is UTC with a `Z` suffix; milliseconds appear only when non-zero, and
    microseconds only when the tick is not on a whole millisecond.
    """
    return f"cron:{name}:{_iso_z(fire)}"


def _ticks_through(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    """Every tick `t` with `after < t <= until`, ascending."""
    ticks: list[datetime] = []
    tick = schedule.next_after(after)
    while tick <= until:
        ticks.append(tick)
        tick = schedule.next_after(tick)
    return ticks


def _missed_latest(
    schedule: Schedule, cursor: datetime, boundary: datetime, limit: int
) -> list[datetime]:
    """The `limit` latest ticks `t` with `cursor < t < boundary`, ascending."""
    ticks: list[datetime] = []
    moment = boundary
    while len(ticks) < limit:
        tick = schedule.previous_before(moment)
        if tick is None or tick <= cursor:
            break
        ticks.append(tick)
        moment = tick
    return ticks[::-1]


def _count_between(schedule: Schedule, after: datetime, before: datetime, cap: int) -> int:
    """How many ticks `t` satisfy `after < t < before`, counting at most `cap`."""
    count = 0
    tick = schedule.next_after(after)
    while count < cap and tick < before:
        count += 1
        tick = schedule.next_after(tick)
    return count


def _zone_info(timezone: str | ZoneInfo) -> ZoneInfo:
    if isinstance(timezone, ZoneInfo):
        return timezone
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown timezone {timezone!r}") from exc


def _to_microseconds(interval: timedelta | float) -> int:
    if isinstance(interval, timedelta):
        return interval // _ONE_US
    if not math.isfinite(interval):
        raise ValueError(f"interval must be a finite number of seconds, got {interval!r}")
    return round(interval * 1_000_000)


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")


def _iso_z(moment: datetime) -> str:
    _require_aware(moment, "fire")
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    if utc.microsecond == 0:
        precision = "seconds"
    elif utc.microsecond % 1000 == 0:
        precision = "milliseconds"
    else:
        precision = "microseconds"
    return f"{utc.isoformat(timespec=precision)}Z"
