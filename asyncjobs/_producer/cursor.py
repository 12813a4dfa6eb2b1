"""Page cursors of the listings (``Admin.jobs``, ``Admin.dead_letters``, the dashboard):
opaque text a client hands back to resume a listing, checked so that any change to one is a
``ValueError`` with one line, never a traceback or a read somewhere unintended; and the
checks of the values a cursor carries (stream entry ids, page sizes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from .._options import check_count

MAX_LIMIT = 500
"""The most rows one page may hold."""
MAX_SCAN = 1_000_000
"""The most entries one listing call may be told to read."""

_LONGEST_CURSOR = 8192
"""A scheduled job's cursor holds its id: up to 1,024 characters, 4 KiB of UTF-8."""
ENTRY = re.compile(r"\d{1,20}-\d{1,20}", re.ASCII)
"""A stream entry id, as a cursor may carry one."""


def encode_cursor(kind: str, *parts: str) -> str:
    """An opaque cursor: base64url of ``kind|part|...`` and a checksum of it. Not a secret
    (a forged cursor can only start a listing somewhere else); the checksum makes any
    change to one a ``ValueError``."""
    raw = "|".join((kind, *parts)).encode()
    return base64.urlsafe_b64encode(_digest(raw) + raw).decode().rstrip("=")


def _digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=6, person=b"asyncjobs-cur").digest()


def decode_cursor(cursor: str, kind: str, count: int) -> list[str]:
    """The parts of a cursor made by ``encode_cursor(kind, ...)``; ``ValueError`` if it was
    made for another listing or altered."""
    raw = _checked(cursor)
    found, _, rest = (raw or "").partition("|")
    parts = rest.split("|", count - 1) if count else []
    if raw is None or found != kind or len(parts) != count:
        raise ValueError("invalid cursor: it was not made by this listing")
    return parts


def _checked(cursor: str) -> str | None:
    """A cursor's text if it is exactly what ``encode_cursor`` made, else None."""
    if not isinstance(cursor, str) or len(cursor) > _LONGEST_CURSOR:
        return None
    try:
        blob = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        raw = blob[6:].decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    same = base64.urlsafe_b64encode(blob).decode().rstrip("=") == cursor
    return raw if same and hmac.compare_digest(blob[:6], _digest(blob[6:])) else None


def entry_id(value: str) -> str:
    """A stream entry id from a cursor, checked: both parts under 2**64, as Redis takes them,
    and not ``0-0``, which no entry has (XADD refuses it; Redis refuses a range ending before
    it). A cursor is checksummed, not signed: anyone can make one."""
    if not ENTRY.fullmatch(value) or max(entry_key(value)) >= 2**64 or \
            entry_key(value) == (0, 0):
        raise ValueError("invalid cursor: it was not made by this listing")
    return value


LAST_ENTRY = f"{2**64 - 1}-{2**64 - 1}"
"""The largest stream entry id Redis allows (XADD takes it, written by hand): no id follows."""


def after(entry: str) -> str | None:
    """The exclusive range start just past ``entry``, or None when no id can follow it
    (``LAST_ENTRY``: Redis refuses a range from past it)."""
    return None if entry == LAST_ENTRY else f"({entry}"


def entry_key(entry: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (milliseconds, sequence)."""
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


def check_limit(limit: int) -> int:
    """A page size, a whole number between 1 and ``MAX_LIMIT``; ``ValueError`` otherwise."""
    return check_count("limit", limit, MAX_LIMIT)


def check_scan(scan: int) -> int:
    """How many entries one call may read, a whole number from 1 to ``MAX_SCAN``
    (``ValueError`` otherwise): NaN passed a bare ``< 1`` and made an empty last page."""
    return check_count("scan", scan, MAX_SCAN)

