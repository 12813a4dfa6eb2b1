"""Dead letters as ``Admin`` reads and requeues them: one letter per stream entry, the
reasons a letter cannot be requeued, and the tally of a bulk requeue. No I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._model import from_ms

EXAMPLES = 20
"""How many of the letters left a ``RequeueReport`` names."""


def text(value: Any) -> str:
    """A reply (or a field) as text; bytes that are not UTF-8 are replaced, never raised."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def when(ms: Any) -> datetime | None:
    """The time of a value read from Redis (ms since the epoch, as text or a number); None
    when it is not one: garbage, or beyond the years a ``datetime`` can hold."""
    if isinstance(ms, (bytes, str)):
        value = text(ms)
        if not (value.isascii() and value.isdigit() and len(value) <= 15):
            return None
        ms = int(value)
    try:
        return from_ms(int(ms))
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of a queue's dead-letter stream."""

    entry: str
    job_id: str
    reason: str
    at: datetime | None
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class RequeueReport:
    """What ``Admin.requeue_all`` did."""

    requeued: int
    not_requeued: dict[str, int]
    """Letters left in the dead letters, by reason: 'no record' (purged, expired, or a
    letter written by hand), 'no job id', 'unreadable record' (the job key is not a hash),
    'job is <state>' (no longer dead-lettered), or 'stale letter (dead-lettered again since)'
    (dead-lettered again, as a newer letter)."""
    examples: dict[str, str]
    """Up to 20 of the letters left: job id (or '(entry <id>)') -> reason."""

    @property
    def left(self) -> int:
        """How many letters were not requeued."""
        return sum(self.not_requeued.values())


def dead_letter(entry: Any, raw: dict[Any, Any]) -> DeadLetter:
    """A dead-letter stream entry as a ``DeadLetter`` (any fields: never raises)."""
    fields = {text(k): text(v) for k, v in raw.items()}
    at = fields.get("t")
    return DeadLetter(
        entry=text(entry), job_id=fields.get("i", ""), reason=fields.get("r", ""),
        at=when(at) if at else None, fields=fields,
    )


class Tally:
    """Counts what ``requeue_all`` did, letter by letter, keeping a few examples."""

    def __init__(self) -> None:
        self.handled = self.done = 0
        self.left: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def requeued(self) -> None:
        self.handled += 1
        self.done += 1

    def left_over(self, letter: DeadLetter, reason: str) -> None:
        self.handled += 1
        self.left[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples[letter.job_id or f"(entry {letter.entry})"] = reason

    def report(self) -> RequeueReport:
        return RequeueReport(self.done, dict(self.left), self.examples)


STALE = "stale letter (dead-lettered again since)"

REPLIES = {"missing": "no record", "unreadable": "unreadable record", "stale": STALE}
"""requeue.lua's replies that are not a job state, as reasons."""


def not_requeueable(letter: DeadLetter, record: Any) -> str:
    """Why a letter cannot be requeued, from its job's record (state, letter id); '' if it
    can: the job is dead-lettered, as this letter (or as no letter in particular)."""
    if isinstance(record, Exception):
        return "unreadable record"
    state, entry = (None if v is None else text(v) for v in record)
    if state is None:
        return "no record"
    if state != "failed":
        return f"job is {state}"
    return "" if entry in (None, letter.entry) else STALE
