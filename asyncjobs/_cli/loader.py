"""What the command line is given, turned into values: the worker's import path, Redis URLs,
queue names, durations and JSON arguments.

Every check raises ``ConfigurationError`` with one line that says what is wrong and what to
do; as an option callback (``callback(check)``) it is a usage error instead, which the CLI
prints as ``asyncjobs: error: ...`` with exit 2. Nothing here talks to Redis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from .._durations import to_seconds
from .._redis.cluster import CLUSTER_SCHEMES
from .._redis.connection import check_url, shown_url
from .._redis.keys import check_name
from .._redis.sentinel import SENTINEL_SCHEME
from ..exceptions import ConfigurationError
from .target import load as load

T = TypeVar("T")
V = TypeVar("V")

URL_SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME, *CLUSTER_SCHEMES)
_SHOWN_CHARS = 40  # of a bad argument, in an error message


def redis_url(url: str) -> str:
    """``url`` if it is a Redis URL redis-py can use (scheme, host, port, db, options), a
    Sentinel URL (``redis+sentinel://host:26379,host2:26379/service/db``) or a Redis
    Cluster URL (``redis+cluster://host:7000,host2:7001``)."""
    if not url.lower().startswith(URL_SCHEMES):
        raise ConfigurationError(
            f"{shown(shown_url(url))} is not a Redis URL: use redis://host:port/db, "
            "rediss://host:port/db for TLS, unix:///path/to/redis.sock, "
            "redis+sentinel://host:26379,host2:26379/service/db, or "
            "redis+cluster://host:7000,host2:7001"
        )
    try:
        check_url(url)
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {shown(shown_url(url))}: {exc}") from exc
    return url


def name(kind: str, value: str) -> str:
    """A queue name or key prefix: 1-200 characters, no braces, no whitespace."""
    try:
        return check_name(kind, value)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc  # it shows the name with repr()


def seconds(value: float, what: str) -> float:
    """A duration option: a finite number of seconds, 0 or more."""
    try:
        found = to_seconds(value, what)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from exc
    assert found is not None
    return found


def json_value(text: str, what: str) -> Any:
    """``text`` parsed as JSON, for ``--arg`` and ``--kwarg``.

    ``NaN``, ``Infinity`` and ``-Infinity`` (Python's JSON) are taken: a job's arguments are
    msgpack floats, which carry them exactly to the task. A number written out that is too
    large for a float (``1e999``) is refused: Python would read it as infinity, which is
    not what was written."""
    try:
        return json.loads(text, parse_float=lambda number: _finite(number, what, text),
                          parse_int=lambda number: _integer(number, what, text))
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{what} {shown(text)} is not JSON ({exc.msg}); quote strings: --arg '\"text\"'"
        ) from None
    except RecursionError:
        raise ConfigurationError(
            f"{what} {shown(text)} is nested too deeply to be a job argument"
        ) from None


def _finite(number: str, what: str, text: str) -> float:
    """A JSON number of ``text`` as a float; ``ConfigurationError`` when it is beyond a
    float's range."""
    value = float(number)
    if math.isinf(value):
        meant = "-Infinity" if value < 0 else "Infinity"
        raise ConfigurationError(
            f"{what} {shown(text)}: the number {shown(number)} is beyond a float's range "
            f"(it would be {meant}; write {meant} if that is meant)")
    return value


def _integer(number: str, what: str, text: str) -> int:
    """A JSON integer of ``text``; ``ConfigurationError`` past Python's limit on the digits
    it reads as an integer (4,300: ``int()`` raises ``ValueError``)."""
    try:
        return int(number)
    except ValueError:
        raise ConfigurationError(
            f"{what} {shown(text)}: the integer has {len(number.lstrip('-'))} digits, more "
            "than Python reads as a number; pass it as a string") from None


def keyword(text: str) -> tuple[str, Any]:
    """``name=JSON`` (a ``--kwarg``) as a name and a value; the name must be a Python
    identifier (a task's parameter name: ``1x`` or ``x `` could never match one)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigurationError(f"--kwarg {shown(text)}: expected name=JSON")
    if not key.isidentifier():
        raise ConfigurationError(
            f"--kwarg {shown(text)}: {shown(key)} is not a Python identifier, so no task "
            "parameter has that name")
    return key, json_value(value, f"--kwarg {key}")


def keywords(texts: list[str]) -> dict[str, Any]:
    """Every ``--kwarg`` as a dict; a name given twice is refused, as Python refuses a
    repeated keyword argument (the last one would silently win)."""
    found: dict[str, Any] = {}
    for text in texts:
        key, value = keyword(text)
        if key in found:
            raise ConfigurationError(f"--kwarg {key} is given twice")
        found[key] = value
    return found


def shown(text: str) -> str:
    """``text`` quoted for an error line (``repr``: one line), cut when long."""
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"
    return repr(text)


def callback(check: Callable[[V], T]) -> Callable[[V | None], T | None]:
    """An option callback: ``check`` the value (None passes); a bad one is a usage error."""

    def checked(value: V | None) -> T | None:
        if value is None:
            return None
        try:
            return check(value)
        except ConfigurationError as exc:
            raise typer.BadParameter(str(exc)) from None

    return checked


def seconds_option(what: str) -> Callable[[float | None], float | None]:
    """The callback of a duration option."""
    return callback(lambda value: seconds(value, what))


def _queue_name(value: str) -> str:
    return name("queue name", value)


def _queue_names(values: list[str]) -> list[str]:
    return [name("queue name", v) for v in values]


def _prefix(value: str) -> str:
    return name("prefix", value)


queue_option = callback(_queue_name)
queues_option = callback(_queue_names)
prefix_option = callback(_prefix)
