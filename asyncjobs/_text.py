"""Text from untrusted places (job ids, task names, error messages, anything read from Redis
or raised by a task), made safe to show: no call here ever raises, and nothing returned can
move a terminal's cursor, change its colours or start a new log line.

- ``safe_str(obj)``: ``str(obj)``, or ``repr(obj)`` when that raises, or a placeholder;
  optionally cut to a length. Exceptions whose ``__str__`` raises are user code too.
- ``clean(text)``: control characters (C0, DEL, C1: newlines, escape sequences, carriage
  returns) written as visible escapes (``\\n``, ``\\x1b``), so one value is one line.
"""

from __future__ import annotations

_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES = {c: _NAMED.get(c, f"\\x{c:02x}") for c in _CONTROLS}
_ESCAPES[ord("\\")] = "\\\\"  # so an escape written by us cannot be forged by the input
_TABLE = str.maketrans(_ESCAPES)
_NEEDS = frozenset(chr(c) for c in _ESCAPES)


def clean(text: str) -> str:
    """``text`` on one line, every control character escaped (``\\n``, ``\\x1b``...)."""
    if _NEEDS.isdisjoint(text):
        return text
    return text.translate(_TABLE)


def safe_str(obj: object, limit: int | None = None) -> str:
    """``str(obj)``, never raising: falls back to ``repr``, then to a placeholder naming
    the type. With ``limit``, text longer than that is cut and marked."""
    try:
        text = str(obj)
    except BaseException:  # a hostile __str__ may raise anything
        try:
            text = repr(obj)
        except BaseException:
            text = f"<unprintable {_type_name(obj)}>"
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit]}... ({cut} more characters)"
    return text


def _type_name(obj: object) -> str:
    kind = type(obj)
    try:
        return f"{kind.__module__}.{kind.__qualname__}"
    except BaseException:
        return "object"
