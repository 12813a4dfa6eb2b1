"""Schedules (cron expressions, fixed intervals) and the pure decision of which ticks to fire.

A *schedule* maps any instant to the next and the previous *tick* (fire time). Ticks are aware
datetimes in UTC that every worker computes identically, so a tick's job id (`tick_id`) is the
same everywhere and enqueueing it with `SET NX` runs it at most once.

The scheduler keeps a *cursor* per cron job: the last tick already handled, persisted by the
caller. Each time it wakes at `now`, the candidate ticks are those with `cursor < t <= now`.
A candidate with `t >= now - grace` is *on time* and always fires: a leader that woke a little
late, or a failover shorter than `grace`, loses nothing. An older candidate is *missed* (no
worker was there to fire it) and the `CatchUp` policy decides its fate:

- `SKIP`: fire no missed tick.
- `LATEST`: fire the most recent missed tick, unless an on-time tick fires anyway.
- `ALL`: fire the missed ticks, at most `max_catch_up` of them (the most recent ones).

Either way the cursor moves to the latest candidate, so each tick is decided once. A cursor of
`None` means the job was never evaluated: nothing fires and the cursor becomes `now`.
One plan fires at most `FIRE_CAP` on-time ticks (a fast schedule with a long grace after an
outage): the cursor then stops at the last of them, and the next plans fire the rest while
they are on time. `max_catch_up` is at most `MAX_CATCH_UP`, so no plan holds more than both.
Nothing here reads the clock, sleeps or talks to Redis; `now` is always an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

# zoneinfo and cronsim are imported by the functions that use them: a worker with no cron
# expression never loads them (with sysconfig, which zoneinfo imports, about 0.35 MiB of RSS).

DROPPED_CAP = 1000
"""`TickPlan.dropped` saturates here: dropped ticks are counted one by one up to this many."""

FIRE_CAP = 10_000
"""The most on-time ticks one plan fires (the rest, still on time, go to the next plans)."""

MAX_CATCH_UP = 10_000
"""The largest `max_catch_up`: missed ticks one plan may fire under `CatchUp.ALL`."""

CURSOR_AHEAD_MAX_MS = 60_000
"""How far ahead of Redis's clock a cursor may be (`read_cursor`). Every leader reads the time
from Redis, so a cursor further ahead was left by a Redis clock stepped back, or written by
hand: trusted, it would stop the cron job until that time."""

MIN_GRACE = timedelta(seconds=1)
"""The shortest `grace`: the leader wakes a moment after each tick, and a tick later than
`grace` counts as missed, so a shorter one would drop ticks fired on time."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_MIN_INTERVAL_US = 1000
_LOOKBACK_S = 50 * 366 * 86400


class Schedule(Protocol):
    """A deterministic series of ticks: aware datetimes in UTC."""

    def next_after(self, moment: datetime) -> datetime:
        """Return the first tick strictly after the aware datetime `moment`, in UTC."""

    def previous_before(self, moment: datetime) -> datetime | None:
        """Return the last tick strictly before `moment` in UTC, or None if there is none."""

    def describe(self) -> str:
        """Return a short description, e.g. "cron '*/5 * * * *' Europe/Berlin"."""


@dataclass(frozen=True)
class CronExpr:
    """A cron expression evaluated in a timezone (an IANA name or a `ZoneInfo`), via cronsim.

    Five fields ("min hour dom mon dow") tick on whole minutes; six fields put seconds first.
    A bad expression or an unknown timezone raises `ValueError` at construction.

    Daylight saving time follows cronsim, which mimics Debian cron for five-field expressions
    whose minute and hour fields are both fixed (neither starts with `*`), e.g. `30 2 * * *`:
    a time in the skipped hour fires when the gap ends (Berlin, 2026-03-29: 03:00 CEST), and
    a time in the repeated hour fires once, on its first pass (2026-10-25: 02:30 CEST only).
    Every other expression (a wildcard minute or hour, or six fields) matches the wall clock
    as it really passes: a wall time that does not exist never fires, one that occurs twice
    fires twice. So `0 * * * *` and `*/15 * * * *` keep firing every real hour or quarter
    across both changes, while `0 30 2 * * *` skips the spring day and fires twice in autumn.
    """

    expression: str
    timezone: str | ZoneInfo = "UTC"
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from cronsim import CronSim, CronSimError

        zone = _zone_info(self.timezone)
        object.__setattr__(self, "timezone", zone)
        # cronsim takes a faster path, with identical results, for datetime.UTC.
        object.__setattr__(self, "_zone", UTC if zone.key == "UTC" else zone)
        try:
            CronSim(self.expression, _EPOCH)
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {self.expression!r}: {exc}") from exc

    def next_after(self, moment: datetime) -> datetime:
        """Return the first fire time strictly after `moment`, in UTC."""
        from cronsim import CronSim

        moment = _as_utc(moment, "moment")
        # cronsim walks local wall time and ignores `fold`: from the second pass of a repeated
        # hour it can yield ticks of the first pass, which lie before `moment`. Skip those.
        for tick in CronSim(self.expression, moment.astimezone(self._zone)):
            if (fire := tick.astimezone(UTC)) > moment:
                return fire
        raise ValueError(f"cron {self.expression!r} has no fire time after {moment}")

    def previous_before(self, moment: datetime) -> datetime | None:
        """Return the last fire time strictly before `moment` in UTC, or None (50 years back).

        This searches the forward series rather than walking cronsim backwards, a walk that
        can step over ticks of a repeated hour, or loop forever around a DST change that is
        not on the hour (Pacific/Chatham). Fire times are whole seconds, so searching to the
        second is exact; it costs about 2 * log2(seconds to that fire time) `next_after` calls.
        """
        moment = _as_utc(moment, "moment")
        back = 1  # widen the look-back until a tick falls inside it...
        while (found := self.next_after(moment - timedelta(seconds=back))) >= moment:
            if back > _LOOKBACK_S:
                return None
            back *= 4
        low, high = back // 4, back  # ...then narrow it to the shortest one that has a tick
        while high - low > 1:
            middle = (low + high) // 2
            if (tick := self.next_after(moment - timedelta(seconds=middle))) < moment:
                high, found = middle, tick
            else:
                low = middle
        return found

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
        object.__setattr__(self, "anchor", _as_utc(self.anchor, "anchor"))
        object.__setattr__(self, "interval", timedelta(microseconds=interval_us))
        object.__setattr__(self, "_interval_us", interval_us)

    def next_after(self, moment: datetime) -> datetime:
        """Return the first tick strictly after `moment`, in UTC."""
        elapsed_us = (_as_utc(moment, "moment") - self.anchor) // _ONE_US
        return self._tick(elapsed_us // self._interval_us + 1)

    def previous_before(self, moment: datetime) -> datetime:
        """Return the last tick strictly before `moment`, in UTC."""
        elapsed_us = (_as_utc(moment, "moment") - self.anchor) // _ONE_US
        return self._tick(-(-elapsed_us // self._interval_us) - 1)

    def describe(self) -> str:
        """Return e.g. "every 30s", or "every 0.25s from 2026-01-01T00:00:00.100Z"."""
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
    """The outcome of `plan_ticks`: ticks to enqueue now (UTC, ascending), the cursor to
    persist, and how many missed ticks the policy did not fire (saturating at `DROPPED_CAP`)."""

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
    """Decide which ticks in `(cursor, now]` to fire, and the new cursor (module docstring).

    The work does not grow with the age of the cursor: on-time ticks (a `grace` window) are
    listed, missed ones are found walking back from `now - grace` (one, or `max_catch_up` for
    `ALL`), and older missed ticks are counted forward from the cursor up to `DROPPED_CAP`.
    """
    now = _as_utc(now, "now")
    policy = CatchUp(policy)
    if grace < timedelta(0):
        raise ValueError(f"grace must be >= 0, got {grace!r}")
    if not 1 <= max_catch_up <= MAX_CATCH_UP:
        raise ValueError(f"max_catch_up must be 1 to {MAX_CATCH_UP:,}, got {max_catch_up!r}")
    if cursor is None:
        return TickPlan(fire=(), cursor=now, dropped=0)
    cursor = _as_utc(cursor, "cursor")
    boundary = now - grace
    on_time = _ticks_through(schedule, max(cursor, boundary - _ONE_US), now, FIRE_CAP)
    limit = max_catch_up if policy is CatchUp.ALL else 1
    missed = _latest_missed(schedule, cursor, boundary, limit)
    catch_up = policy is CatchUp.ALL or (policy is CatchUp.LATEST and not on_time)
    caught_up = missed if catch_up else []
    dropped = len(missed) - len(caught_up)
    if len(missed) == limit:  # older missed ticks may exist: count them, up to the cap
        older = _ticks_through(schedule, cursor, missed[0] - _ONE_US, DROPPED_CAP - dropped)
        dropped += len(older)
    latest = (on_time or missed or [cursor])[-1]
    return TickPlan(fire=(*caught_up, *on_time), cursor=latest, dropped=dropped)


def next_fire(schedule: Schedule, cursor: datetime | None, now: datetime) -> datetime:
    """Return when the scheduler should next wake for this job: the first tick strictly after
    `max(cursor, now)`, or after `now` when there is no cursor. After `plan_ticks` the cursor
    is at most `now`; one ahead of `now` (clock skew between leaders) wins."""
    now = _as_utc(now, "now")
    if cursor is not None:
        now = max(now, _as_utc(cursor, "cursor"))
    return schedule.next_after(now)


def tick_id(name: str, fire: datetime) -> str:
    """Return the deterministic job id of a tick, e.g. `cron:cleanup:2026-11-21T14:52:00Z`.

    The time is UTC with a `Z` suffix; milliseconds appear only when non-zero, microseconds
    only when the tick is not on a whole millisecond (so ids never collide).
    """
    return f"cron:{name}:{_iso_z(_as_utc(fire, 'fire'))}"


def read_cursor(raw: bytes | str | None, now_ms: int) -> tuple[int | None, str]:
    """A cron job's cursor as the cron hash holds it: ``(ms, "")`` to plan from; ``(None,
    "")`` when there is none (the job's first evaluation); ``(None, why)`` when it cannot be
    used: not a whole number of ms, before 1970, or more than `CURSOR_AHEAD_MAX_MS` ahead of
    ``now_ms`` (Redis's clock). The caller resets such a cursor to now."""
    if raw is None:
        return None, ""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if not (0 < len(text) <= 16 and text.isascii() and text.isdigit()):
        return None, f"is not a time in ms ({text[:40]!r})"
    ms = int(text)
    if ms > now_ms + CURSOR_AHEAD_MAX_MS:
        return None, (f"is {(ms - now_ms) / 1000:,.0f} s ahead of Redis's clock (the clock "
                      "was stepped back, or the cursor was written by hand)")
    return ms, ""


def _ticks_through(
    schedule: Schedule, after: datetime, until: datetime, limit: int | None = None
) -> list[datetime]:
    """The ticks `t` with `after < t <= until`, ascending; only the first `limit` if given."""
    ticks: list[datetime] = []
    tick = schedule.next_after(after)
    while tick <= until and (limit is None or len(ticks) < limit):
        ticks.append(tick)
        tick = schedule.next_after(tick)
    return ticks


def _latest_missed(
    schedule: Schedule, cursor: datetime, boundary: datetime, limit: int
) -> list[datetime]:
    """The `limit` latest ticks `t` with `cursor < t < boundary`, ascending."""
    if schedule.next_after(cursor) >= boundary:
        return []  # nothing missed, the usual case: spare the backward search
    ticks: list[datetime] = []
    while len(ticks) < limit:
        tick = schedule.previous_before(ticks[-1] if ticks else boundary)
        if tick is None or tick <= cursor:
            break
        ticks.append(tick)
    return ticks[::-1]


def _zone_info(timezone: str | ZoneInfo) -> ZoneInfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


def _as_utc(moment: datetime, name: str) -> datetime:
    """`moment` in UTC (so arithmetic on it is real time, not wall time); naive is an error."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def _iso_z(moment: datetime) -> str:
    micros = moment.microsecond
    precision = "microseconds" if micros % 1000 else "milliseconds" if micros else "seconds"
    return f"{moment.replace(tzinfo=None).isoformat(timespec=precision)}Z"


def schedule_record(schedule: Schedule) -> dict[str, Any]:
    """A schedule as plain data (the worker registry publishes it; ``schedule_from`` reads
    it back, so a dashboard can compute the next run without the worker's code)."""
    if isinstance(schedule, CronExpr):
        return {"cron": schedule.expression, "timezone": str(schedule.timezone)}
    if isinstance(schedule, Every):
        return {"every_us": _to_microseconds(schedule.interval),
                "anchor": _iso_z(schedule.anchor)}
    return {}


def schedule_from(record: Any) -> Schedule | None:
    """The schedule of a ``schedule_record``; None for anything else (never raises)."""
    try:
        if isinstance(record.get("cron"), str):
            return CronExpr(record["cron"], str(record.get("timezone") or "UTC"))
        if isinstance(record.get("every_us"), int):
            anchor = datetime.fromisoformat(str(record.get("anchor", "")).replace("Z", "+00:00"))
            return Every(timedelta(microseconds=record["every_us"]), anchor)
    except Exception:
        return None
    return None
