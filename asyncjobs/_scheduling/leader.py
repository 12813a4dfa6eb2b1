"""A Redis lease: at most one holder at a time, checked by token.

Acquire with ``SET NX PX`` and a random token; renew with a compare-and-expire script;
release with compare-and-delete. The holder counts its lease from the moment it *sent* the
request and trusts it for only 80% of the TTL, so a renewal that fails or comes late stops
it acting before anyone else can acquire the lease.

A process that fails to take the lease learns when it expires (``remaining_s``) and removes
it at once if no holder can have written it (lease_clear.lua): no expiry, a value that is not
a holder's token, or an expiry longer than ``MAX_TTL_S``. A holder's lease is never removed
by anyone else, so two holders never act at once through it.
"""

from __future__ import annotations

import logging
import secrets
import time

from redis.asyncio import Redis

from .._redis import scripts as s
from .._redis.values import reply_text

log = logging.getLogger("asyncjobs.scheduler")

_TRUST = 0.8

MAX_TTL_S = 3600.0
"""The longest lease TTL (the longest claim timeout too): no holder sets a longer expiry, so
a lease key expiring later than this was written by something else and is removed."""


class Lease:
    """One process's claim on a lease key."""

    def __init__(self, client: Redis, key: str, ttl_s: float, holder: str = "",
                 vacated: tuple[str, bytes] | None = None) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"lease TTL must be > 0 and at most {MAX_TTL_S:g} s, got {ttl_s!r}")
        self.client = client
        self.key = key
        self.ttl_s = ttl_s
        self.vacated = vacated
        """(channel, message) published when this holder releases the lease, if any."""
        self.token = f"{holder}|{secrets.token_hex(16)}"
        """The lease's value: who holds it (a worker's name, for people), then a random
        part that makes it this holder's alone."""
        self.renew_at = 0.0
        self._valid_until = 0.0

    @property
    def held(self) -> bool:
        """True while this process may act as the holder."""
        return time.monotonic() < self._valid_until

    def _granted(self, sent_at: float) -> None:
        self._valid_until = sent_at + self.ttl_s * _TRUST
        self.renew_at = sent_at + self.ttl_s / 3

    def drop(self) -> None:
        """Stop acting as the holder at once (the key itself expires on its own)."""
        self._valid_until = 0.0

    async def acquire(self) -> bool:
        """Try to take the lease; True if this process now holds it."""
        sent = time.monotonic()
        ok = await self.client.set(self.key, self.token, nx=True, px=int(self.ttl_s * 1000))
        if ok:
            self._granted(sent)
        return bool(ok)

    async def renew(self) -> bool:
        """Extend the lease if still ours; on any failure, stop holding it."""
        sent = time.monotonic()
        self_ms = int(self.ttl_s * 1000)
        try:
            ok = await s.load(s.LEASE_RENEW)(self.client, [self.key], [self.token, self_ms])
        except BaseException:
            self.drop()
            raise
        if ok:
            self._granted(sent)
        else:
            self.drop()
        return bool(ok)

    async def release(self) -> None:
        """Give the lease up if still ours, so another process can take it at once."""
        self.drop()
        channel, message = self.vacated or ("", b"")
        await s.load(s.LEASE_RELEASE)(self.client, [self.key], [self.token, channel, message])

    async def remaining_s(self) -> float:
        """Seconds until the current holder's lease expires (0 if none). A key no holder can
        have written (no expiry, not a holder's token, an expiry past ``MAX_TTL_S``) is
        removed, in one atomic step with the read, and logged: a stray key never keeps the
        lease from every process until it expires."""
        ms, why = await s.load(s.LEASE_CLEAR)(self.client, [self.key],
                                              [int(MAX_TTL_S * 1000)])
        if why:
            log.warning("removed the lease %s, which no holder wrote: %s", self.key,
                        reply_text(why))
        return max(0.0, int(ms) / 1000)
