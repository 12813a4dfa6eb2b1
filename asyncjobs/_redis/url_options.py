"""The options a Redis URL may carry (its query: ``?socket_timeout=5&client_name=api``),
checked before redis-py sees them.

redis-py converts a few options' values (``int``, ``float``) and passes every other option to
the connection as it is: an option it does not know (``?ssl=bogus`` on ``redis://``) failed
on the first command with a ``TypeError``; a value it only checks on connect
(``?ssl_cert_reqs=bogus``, ``?protocol=9``, ``?ssl_min_version=99``, a client name with a
space) failed on every connect, which looked like an outage and was retried for ever; and
some were taken without a word (``?socket_timeout=nan``, ``?socket_keepalive=maybe``: true).
``check_option`` refuses each with a ``ValueError`` in one line that names the option.

``kind`` is what the URL names: ``tcp`` (``redis://``), ``tls`` (``rediss://``), ``unix``,
``cluster``, ``cluster-tls`` (``rediss+cluster://``) or ``sentinel``.
"""

from __future__ import annotations

import codecs
import math
import ssl
from collections.abc import Callable
from urllib.parse import parse_qsl

from redis.asyncio.connection import parse_ssl_verify_flags

from .._text import clean

_TRUE = frozenset({"1", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "f", "false", "n", "no"})  # redis-py's false strings, any case
_CERT_REQS = ("none", "optional", "required")
_SHOWN_CHARS = 40
_TLS = frozenset({"tls", "cluster-tls"})
_CLUSTER = frozenset({"cluster", "cluster-tls"})
_NOT_UNIX = frozenset({"host", "port", "socket_keepalive"})
_NOT_CLUSTER = frozenset({"retry_on_timeout", "ssl_ca_path", "ssl_password"})  # redis-py's

Check = Callable[[str], str | None]
"""Checks a value: None if it is good, else what is expected ("a whole number, 0 or more")."""


def check_query(query: str, kind: str) -> None:
    """Check every option of a URL's ``query`` (options with no value are left out, as
    redis-py leaves them out); raises ``ValueError`` naming the first bad one."""
    for name, value in parse_qsl(query):
        check_option(name, value, kind)


def check_option(name: str, value: str, kind: str) -> None:
    """Refuse, with a ``ValueError`` in one line naming it, an option a URL of ``kind`` cannot
    have, or a value it cannot take."""
    misplaced = _misplaced(name, kind)
    if misplaced:
        raise ValueError(f"the option {_shown(name)} {misplaced}")
    expected = _CHECKS[name](value)
    if expected:
        raise ValueError(f"Invalid value for {_shown(name)} in the Redis URL: "
                         f"{_shown(value)} ({expected})")


def _misplaced(name: str, kind: str) -> str:
    """Why a URL of ``kind`` cannot have the option ``name`` ('' if it can)."""
    if name not in _CHECKS:
        return ("is not a Redis URL option (redis-py's are socket_timeout, "
                "socket_connect_timeout, client_name, health_check_interval, ssl_ca_certs...)")
    if name == "ssl" and kind not in _CLUSTER:
        return "is not a Redis URL option: use rediss:// for TLS"
    if name.startswith("ssl") and name != "ssl" and kind not in _TLS:
        return "needs TLS: use rediss:// (rediss+cluster:// for a cluster)"
    if name in _NOT_UNIX and kind == "unix":
        return "does not apply to a unix socket"
    if name in _NOT_CLUSTER and kind in _CLUSTER:
        return "does not apply to a Redis Cluster"
    return ""


def _shown(text: str) -> str:
    if len(text) > _SHOWN_CHARS:
        return f"{clean(text[:_SHOWN_CHARS])!r}..."
    return repr(clean(text))


def _anything(_: str) -> str | None:
    return None


def _flag(value: str) -> str | None:
    if value.lower() in _TRUE | _FALSE:
        return None
    return "true or false (also 1/0, yes/no)"


def _whole(low: int, high: int | None = None) -> Check:
    expected = (f"a whole number, {low} or more" if high is None else
                f"a whole number from {low} to {high}")

    def check(value: str) -> str | None:
        try:
            number = int(value)
        except ValueError:
            return expected
        return None if low <= number and (high is None or number <= high) else expected

    return check


def _seconds(value: str) -> str | None:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    return None if math.isfinite(seconds) and seconds > 0 else "a number of seconds above 0"


def _client_name(value: str) -> str | None:
    """Redis refuses a name with a space, a newline or any character outside '!'..'~'."""
    if all("!" <= char <= "~" for char in value):
        return None
    return "no spaces, newlines or special characters"


def _encoding(value: str) -> str | None:
    try:
        codecs.lookup(value)
    except LookupError:
        return "a text encoding Python knows, such as utf-8"
    return None


def _encoding_errors(value: str) -> str | None:
    try:
        codecs.lookup_error(value)
    except LookupError:
        return "an error handler Python knows: strict, replace, ignore..."
    return None


def _raw_bytes(value: str) -> str | None:
    if value.lower() in _FALSE:
        return None
    return "asyncjobs reads raw bytes: false or leave it out"


def _protocol(value: str) -> str | None:
    return None if value in ("2", "3") else "2 or 3"


def _cert_reqs(value: str) -> str | None:
    return None if value in _CERT_REQS else "none, optional or required"


def _tls_version(value: str) -> str | None:
    try:
        ssl.TLSVersion(int(value))
    except ValueError:
        return "a TLS version's number: " + ", ".join(
            f"{v.value} ({v.name})" for v in ssl.TLSVersion if v.value > 0)
    return None


def _ciphers(value: str) -> str | None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(value)
    except ssl.SSLError:
        return "an OpenSSL cipher list this Python's OpenSSL knows"
    return None


def _verify_flags(value: str) -> str | None:
    try:
        parse_ssl_verify_flags(value)  # type: ignore[no-untyped-call]
    except ValueError:
        return "names of ssl.VerifyFlags, such as VERIFY_X509_STRICT"
    return None


_CHECKS: dict[str, Check] = {
    "db": _whole(0),
    "username": _anything,
    "password": _anything,
    "host": _anything,
    "port": _whole(1, 65535),
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "socket_keepalive": _flag,
    "socket_read_size": _whole(1),
    "retry_on_timeout": _flag,
    "health_check_interval": _whole(0),
    "max_connections": _whole(1),  # asyncjobs sets the pool's own: accepted, not used
    "timeout": _seconds,  # the same
    "client_name": _client_name,
    "lib_name": _client_name,
    "lib_version": _client_name,
    "encoding": _encoding,
    "encoding_errors": _encoding_errors,
    "decode_responses": _raw_bytes,
    "protocol": _protocol,
    "legacy_responses": _flag,
    "ssl": _flag,
    "ssl_keyfile": _anything,
    "ssl_certfile": _anything,
    "ssl_password": _anything,
    "ssl_ca_certs": _anything,
    "ssl_ca_data": _anything,
    "ssl_ca_path": _anything,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _flag,
    "ssl_min_version": _tls_version,
    "ssl_ciphers": _ciphers,
    "ssl_include_verify_flags": _verify_flags,
    "ssl_exclude_verify_flags": _verify_flags,
}
