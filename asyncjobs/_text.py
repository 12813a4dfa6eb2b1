"""Text from untrusted places (job ids, task names, error messages, anything read from Redis
or raised by a task), made safe to show: no call here ever raises, and nothing returned can
move a terminal's cursor, change its colours or start a new log line.

- ``safe_str(obj)``: ``str(obj)``, or ``repr(obj)`` when that raises, or a placeholder;
  optionally cut to a length. Exceptions whose ``__str__`` raises are user code too.
- ``clean(text)``: control characters (C0, DEL, C1: newlines, escape sequences, carriage
  returns) written as visible escapes (``\\n``, ``\\x1b``), so one value is one line.
- ``first_line(value, limit)``: the first line of an error (or any text) that is not blank,
  cut and ``clean``: what a log line or a message in parentheses shows of an error.
- ``class_name(kind)``: a class's ``module.qualname`` (or ``__name__``), with ``?`` for a part
  it cannot read: a metaclass's ``__getattribute__`` is user code too.
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
        text = _exact(str(obj))
    except BaseException:  # a hostile __str__ may raise anything
        try:
            text = _exact(repr(obj))
        except BaseException:
            text = f"<unprintable {class_name(type(obj))}>"
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit]}... ({cut} more characters)"
    return text


def first_line(value: object, limit: int = 300) -> str:
    """The first line of ``value`` that is not blank, cut at ``limit`` characters and then
    ``clean``, never raising: what a log line or a message in parentheses shows of an error.

    ``value`` is an exception (its message) or any text or object: its text is ``safe_str``'s
    (an exception whose ``__str__`` raises gives its ``repr``). Lines end where
    ``str.splitlines`` ends them (``\\n``, ``\\r``, ``\\x85``, ``\\u2028``...); blank lines
    before the first words are skipped. The cut comes first (an escape is never cut in
    half), so the line returned may be longer than ``limit`` by its escapes. Text that is
    empty or blank is ``""``; an exception of no text is named by its class
    (``ResponseError``): Redis may answer an error of no text (a script's
    ``redis.error_reply("")``), and ``str(exc).splitlines()[0]`` raised ``IndexError``."""
    for line in safe_str(value).splitlines():
        if line and not line.isspace():
            return clean(line[:max(0, limit)])
    # (not isinstance: it reads a non-exception's own __class__, which may raise)
    if issubclass(type(value), BaseException):
        return class_name(type(value), "__name__")
    return ""


def _exact(text: str) -> str:
    """``text`` as a plain ``str``: ``__str__`` may return a subclass of str, whose own
    ``__len__``, slicing or formatting would run its code (and may raise)."""
    return text if type(text) is str else str.__str__(text)


def class_name(kind: type, part: str = "") -> str:
    """``module.qualname`` of a class (with ``part``: only that attribute, ``__name__`` or
    ``__qualname__``), never raising: a part that cannot be read (a metaclass whose
    ``__getattribute__`` raises) or that is not text reads ``?``."""
    if part:
        return _part(kind, part)
    return f"{_part(kind, '__module__')}.{_part(kind, '__qualname__')}"


def _part(kind: type, attribute: str) -> str:
    try:
        value = getattr(kind, attribute)
    except BaseException:  # a metaclass's code, which may raise anything
        return "?"
    # (not isinstance: it reads a non-str's own __class__, which may raise)
    return _exact(value) if issubclass(type(value), str) else "?"
