"""Redis refusing the client itself, not a command's keys or the server's state for now: a
wrong or missing password, an ACL user without a command (a key, a channel) asyncjobs
uses, a database number the server does not have. No retry can help: they are
configuration errors, to fix in the URL or in the user's ACL.

Contract:

- Every connection asyncjobs opens (``transport.Tuned``) raises, in place of redis-py's
  error, the ``RedisAccessDenied`` (a ``ConfigurationError``) that ``denial`` returns for
  it; ``denial`` is a pure function of the error and of who and where the connection is.
  So a pool's calls, a worker's start, every command and the outbox relay name what to fix,
  in one line, at once: the commands exit 2 (a configuration error), as for a bad URL.
- ``CommandDenied`` (``NOPERM``) is also redis-py's ``NoPermissionError``, a
  ``ResponseError``: code that tells a refused command apart from an outage
  (``refusals.refused``, the dashboard's 403, a worker's per-queue reads, the relay's
  "the batch waits") sees it as before; only its text is ours, whatever redis-py's
  pipeline adds to an error's arguments.
- ``LoginRefused`` (``WRONGPASS``, ``NOAUTH``) is no ``redis.ConnectionError``: Redis was
  reached, so it is not an outage to retry for seconds ("Redis unavailable").
- ``NoSuchDatabase`` (``SELECT`` of the URL's database: "DB index is out of range") is
  no redis-py error either.
- Any other error: ``denial`` returns None and the error goes on as redis-py raised it.
"""

from __future__ import annotations

import re

from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from .._text import clean, safe_str
from ..exceptions import ConfigurationError

README = "see the README, Running Redis for asyncjobs"


class RedisAccessDenied(ConfigurationError):
    """Redis refused the URL's credentials, its user's permissions, or its database
    number: no retry helps; fix the URL or the user's ACL."""


class CommandDenied(RedisAccessDenied, NoPermissionError):
    """The URL's Redis user may not run a command (or use a key, a channel) asyncjobs
    needs (``NOPERM``). Also redis-py's ``NoPermissionError``."""

    def __init__(self, message: str, reply: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply

    def __str__(self) -> str:  # redis-py's pipeline rewrites args[0] ("Command # 1 ...")
        return self.message


class LoginRefused(RedisAccessDenied):
    """Redis refused the URL's password or user (``WRONGPASS``), or wants a password
    the URL does not give (``NOAUTH``)."""


class NoSuchDatabase(RedisAccessDenied):
    """Redis has no database of the number the URL names (``SELECT``: out of range)."""


_COMMAND = re.compile(r"no permissions to run the '([^']{1,200})' command")
_ACCESS = re.compile(r"no permissions to access (?:one of )?the (key|channel)s?\b")
_NO_DATABASE = ("DB index is out of range", "invalid DB index")


def denial(exc: BaseException, *, user: str | None, password: bool, db: int | str | None,
           where: str) -> RedisAccessDenied | None:
    """The ``RedisAccessDenied`` for redis-py's ``exc``, raised on a connection of
    ``user`` (None: the default user) with or without a ``password``, to database ``db``
    of the server at ``where`` (``host:port`` or a socket's path); None when ``exc`` is no
    such refusal. Pure."""
    if isinstance(exc, RedisAccessDenied):
        return None  # already ours
    if isinstance(exc, NoPermissionError):
        return permission_denied(user, safe_str(exc, 300))
    if isinstance(exc, AuthenticationError):
        return login_refused(user, password, safe_str(exc, 300), where)
    if isinstance(exc, ResponseError) and str(exc).startswith(_NO_DATABASE):
        return NoSuchDatabase(
            f"Redis has no database of the number the URL names ({clean(str(db))}, on "
            f"{where}): {safe_str(exc, 200)}; Redis has databases 0 to its 'databases' "
            "setting less one (16 by default: 0 to 15)")
    return None


def permission_denied(user: str | None, reply: str) -> CommandDenied:
    """``NOPERM``: which command (key, channel) the user may not use, and the grant."""
    name = clean(user or "default")
    text = clean(reply)
    command = _COMMAND.search(text)
    if command:
        cmd = command.group(1)
        return CommandDenied(
            f"Redis user {name!r} may not run {cmd.replace('|', ' ').upper()}, which "
            f"asyncjobs needs: grant it (ACL SETUSER {name} +{cmd.lower()}) or use a user "
            f"that may ({README})", text)
    access = _ACCESS.search(text)
    if access and access.group(1) == "key":
        return CommandDenied(
            f"Redis user {name!r} may not use the keys asyncjobs needs: grant it the "
            f"prefix's keys (ACL SETUSER {name} '~<prefix>:*') ({README})", text)
    if access:
        return CommandDenied(
            f"Redis user {name!r} may not use the pub/sub channels asyncjobs needs: grant "
            f"it the prefix's channels (ACL SETUSER {name} '&<prefix>:*') ({README})", text)
    return CommandDenied(f"Redis refused user {name!r} a command asyncjobs needs: {text} "
                         f"({README})", text)


def login_refused(user: str | None, password: bool, reply: str, where: str) -> LoginRefused:
    """``WRONGPASS`` / ``NOAUTH``: authentication failed, or a password is needed."""
    text = clean(reply)
    if not password and ("NOAUTH" in text or "Authentication required" in text
                         or "must be called with the client already authenticated" in text):
        return LoginRefused(
            f"Redis at {where} needs a password and the URL gives none: put it in the URL "
            "(redis://:PASSWORD@host:port/0, or redis://USER:PASSWORD@host:port/0 for an "
            "ACL user)")
    who = f"user {clean(user)!r}" if user else "the default user"
    if password:
        return LoginRefused(
            f"Redis at {where} refused the URL's password for {who} (authentication "
            f"failed: wrong password, or the user is disabled): {text}")
    return LoginRefused(f"Redis at {where} refused to authenticate {who}: {text}")
