"""A queue whose keys Redis will not read as asyncjobs wrote them (overwritten by hand, or by
another program on the same prefix): what is wrong, in one line, so that views of many
queues (the dashboard's overview, ``asyncjobs info`` and ``check``) show that queue as
damaged and go on with the others. Pure: decides from the exception alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import ResponseError

from .._text import clean, safe_str


@dataclass(frozen=True)
class DamagedQueue:
    """A queue whose numbers cannot be read, and why."""

    queue: str
    problem: str


def wrong_type(exc: BaseException) -> str | None:
    """What is wrong, when ``exc`` is Redis refusing a command on a key of the wrong type
    (a queue's key overwritten by hand, or by another program on the same prefix), or a
    range of a stream from an entry id it cannot go past (``bad_range``)."""
    if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
        return f"a key of this queue holds the wrong type: {clean(str(exc))}"
    if bad_range(exc):
        return ("a stream of this queue cannot be read on from one of its entry ids (the "
                f"largest Redis allows, written by hand): {clean(safe_str(exc, 300))}")
    return None


_RANGE_REPLIES = ("invalid stream id", "invalid start id for the interval",
                  "invalid end id for the interval")


def bad_range(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a stream range from an entry id: one no id can
    follow (18446744073709551615-18446744073709551615, which XADD takes) or precede
    (``0-0``), or no entry id at all (a forged cursor's 20 digits past 2**64)."""
    text = str(exc).lower() if isinstance(exc, ResponseError) else ""
    return any(reply in text for reply in _RANGE_REPLIES)
