"""When the leader repairs its queue's waiting jobs: the decisions, without I/O or a clock.

A job waiting for a due time (a delay, a retry, a rate or concurrency limit) is in two places:
its record says ``scheduled`` and its level's delayed set holds its id. A job waiting for a
worker is too: its record says ``queued`` and names its entry in its level's stream. The
scheduler reads only the sets and the workers only the streams, so a set or stream deleted,
trimmed or acknowledged by hand would leave those records waiting for ever. The leader
therefore scans the queue's job records now and then (reschedule.lua: one SCAN step of
``STEP_COUNT`` per call, its cursor kept here) and puts back what a set or stream lost.

A pass is a SCAN of the whole keyspace of the queue's node, whatever the queue holds, so it
is rare:

- every ``EVERY_S`` (5 minutes) of leadership, which bounds how long any lost job waits;
- sooner on a *hint*: a job the leader saw at the head of a delayed set left it without the
  leader promoting it, before its due time (the head moved past it, or the set emptied) or
  at its due time (the promotion found nothing). Aborts, concurrency waiters let go early
  and another scheduler's promotion look the same, so hinted passes are at least
  ``HINT_GAP_S`` apart;
- and any pass waits at least ``DUTY`` times the previous pass's duration after it, so on a
  large keyspace the repair takes at most about 1/``DUTY`` of the leader's time.

The idle cost: one call every 5 minutes per queue (a small keyspace is one step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._redis.values import Orphan

EVERY_S = 300.0
"""A leader's passes are at most this far apart (from its first leadership on)."""
HINT_GAP_S = 60.0
"""A hinted pass starts at least this long after the previous pass ended."""
DUTY = 100.0
"""A pass starts at least this many times the previous one's duration after it ended."""
STEP_COUNT = 500
"""SCAN COUNT of one step: the keys one call looks at, about."""


def lost(watched_ms: int, head_ms: int | None, now_ms: int, handled: int) -> bool:
    """Whether the member due at ``watched_ms``, which the leader saw at the head of a
    delayed set, left it without the leader promoting it, judged after a promotion at
    ``now_ms`` (Redis clock) that handled ``handled`` jobs and left ``head_ms`` (None: the
    set is empty) at the head. While the head is no later than the watched member, it may
    still be there (an earlier job came in ahead of it): not lost yet."""
    if head_ms is not None and head_ms <= watched_ms:
        return False
    return now_ms < watched_ms or handled == 0


@dataclass
class Repair:
    """One scheduler's repair of its queue's delayed sets (the module docstring says when it
    runs). Times are the caller's monotonic seconds, due times Redis milliseconds."""

    cursor: str | None = None
    """The SCAN cursor of the pass under way, None between passes."""
    hinted: bool = False
    """A hint came since the last pass began."""
    restored: int = 0
    """Scheduled jobs put back by the pass under way (or the last one)."""
    requeued: int = 0
    """Queued jobs put back in their stream by the pass under way (or the last one)."""
    confirmed: frozenset[Orphan] = frozenset()
    """Running jobs whose entry no reclaim will take over, found as they are by the last
    pass and the one before it (their worker may then be checked: see ``orphaned``)."""
    _found: set[Orphan] = field(default_factory=set)
    _previous: frozenset[Orphan] = frozenset()
    _began: float = 0.0
    _ended: float | None = None
    _took_s: float = 0.0
    _periodic_at: float | None = None
    _watched: dict[str, int] = field(default_factory=dict)
    """Per level: the due time (ms) of the member seen at the head of its set, until it is
    due."""

    def lead(self, now: float) -> None:
        """This scheduler (again) leads: forget what it watched (others acted meanwhile);
        its first leadership starts the periodic passes' clock."""
        self._watched.clear()
        if self._periodic_at is None:
            self._periodic_at = now + EVERY_S

    def promoted(self, level: str, head_ms: int | None, now_ms: int, handled: int) -> bool:
        """Note a promotion of ``level`` (see ``lost``); True if it hints that the set lost
        a member (a pass is then due, within ``HINT_GAP_S``)."""
        watched = self._watched.get(level)
        hint = watched is not None and lost(watched, head_ms, now_ms, handled)
        self.hinted = self.hinted or hint
        if watched is not None and not hint and now_ms < watched:
            return hint  # still watching it: not due yet, and maybe behind an earlier head
        if head_ms is None:
            self._watched.pop(level, None)
        else:
            self._watched[level] = head_ms
        return hint

    def _earliest(self) -> float:
        if self._ended is None:
            return -math.inf
        return self._ended + max(HINT_GAP_S, DUTY * self._took_s)

    def next_at(self) -> float:
        """When the next step is due (monotonic; -inf: now, inf: not before a hint)."""
        if self.cursor is not None:
            return -math.inf
        periodic = math.inf if self._periodic_at is None else self._periodic_at
        return min(periodic, self._earliest() if self.hinted else math.inf)

    def begin(self, now: float) -> str:
        """Start a pass (if none is under way); the cursor to step from."""
        if self.cursor is None:
            self.cursor, self._began, self.hinted = "0", now, False
            self.restored = self.requeued = 0
        return self.cursor

    def orphaned(self, found: Iterable[Orphan]) -> None:
        """Note the orphaned running jobs a step found. A job is ``confirmed`` once two
        passes in a row found it unchanged (same worker, attempts and entry): a pass starts
        at least ``HINT_GAP_S`` after the previous one ended, far longer than a live
        worker's heartbeat key outlives a missed beat."""
        self._found.update(found)

    def stepped(self, cursor: str, restored: int, now: float, requeued: int = 0) -> bool:
        """Note a step's reply (``restored`` scheduled and ``requeued`` queued jobs put
        back); True when the pass is over."""
        self.restored += restored
        self.requeued += requeued
        if cursor != "0":
            self.cursor = cursor
            return False
        self.confirmed = self._previous & self._found
        self._previous, self._found = frozenset(self._found), set()
        self.cursor, self._ended, self._took_s = None, now, now - self._began
        self._periodic_at = now + max(EVERY_S, DUTY * self._took_s)
        return True
