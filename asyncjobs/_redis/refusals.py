"""Redis refusing a command whatever the command or its keys: an ACL that forbids it
(``NOPERM``), or a server that cannot serve it now (``READONLY`` after a failover,
``LOADING``, ``BUSY`` running a script, ``MISCONF`` with a failing disk, ``OOM``...).

redis-py takes some codes off the reply and raises a class instead (``ReadOnlyError``'s
text is "You can't write against a read only replica."), and rewrites an error inside a
pipeline as "Command # 1 (XLEN ...) of pipeline caused error: ('BUSY ...',)":
``reply_code`` finds the code and the reply's text either way.
"""

from __future__ import annotations

from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from .._text import clean, safe_str

NOT_NOW = frozenset({"READONLY", "LOADING", "BUSY", "MISCONF", "OOM", "NOREPLICAS",
                     "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"})
"""Codes by which Redis refuses any command for now: try again later."""
_STRIPPED = ((NoPermissionError, "NOPERM"), (ReadOnlyError, "READONLY"),
             (OutOfMemoryError, "OOM"), (BusyLoadingError, "LOADING"))


def reply_code(exc: BaseException) -> tuple[str, str]:
    """The code of a Redis error reply (``BUSY``, ``NOPERM``... or its first word) and its
    text, on one line and at most 300 characters."""
    text = safe_str(exc).rpartition("of pipeline caused error: ")[2].strip("()',\" ")
    for kind, code in _STRIPPED:
        if isinstance(exc, kind):
            return code, clean(safe_str(text, 300))
    return text.split(" ", 1)[0], clean(safe_str(text, 300))


def refused(exc: BaseException) -> bool:
    """True when ``exc`` is Redis refusing a command whatever its keys (``NOPERM``, or a
    code of ``NOT_NOW``), not a reply about the data of a key (``WRONGTYPE``)."""
    if not isinstance(exc, ResponseError | BusyLoadingError):
        return False
    code = reply_code(exc)[0]
    return code == "NOPERM" or code in NOT_NOW


def not_now(exc: BaseException) -> bool:
    """True when ``exc`` is Redis refusing any command for now (a code of ``NOT_NOW``:
    a replica after a failover, a busy script...): the same call may succeed later."""
    return isinstance(exc, ResponseError | BusyLoadingError) and reply_code(exc)[0] in NOT_NOW


def corrupt_key(exc: BaseException) -> str:
    """The reason, when a script refused to run because a queue's key holds the wrong type
    (``check_type`` in the scripts' prelude); '' for any other error."""
    if isinstance(exc, ResponseError):
        text = str(exc)
        at = text.find("ASYNCJOBS_CORRUPT ")
        if at >= 0:
            return text[at + len("ASYNCJOBS_CORRUPT "):].split("\n", 1)[0]
    return ""
