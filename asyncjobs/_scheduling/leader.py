"""A Redis lease: at most one holder at a time, checked by token.

Acquire with ``SET NX PX`` and a random token; renew with a compare-and-expire script;
release with compare-and-delete. The holder counts its lease from the moment it *sent* the
request and trusts it for only 80% of the TTL, so a renewal that fails or comes late stops
it acting before anyone else can acquire the lease.
"""

from __future__ import annotations

import secrets
import time

from redis.asyncio import Redis

from .._redis import scripts as s

_TRUST = 0.8


class Lease:
    """One process's claim on a lease key."""

    def __init__(self, client: Redis, key: str, ttl_s: float, holder: str = "",
                 vacated: tuple[str, bytes] | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError("lease TTL must be > 0")
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
        """Seconds until the current holder's lease expires (0 if none). A key without an
        expiry is no lease anybody holds (every holder sets one): it is removed, so that a
        stray key can never keep the queue without a scheduler."""
        ms = await self.client.pttl(self.key)
        if ms == -1:
            await s.load(s.LEASE_CLEAR)(self.client, [self.key], [])
            return 0.0
        return max(0.0, ms / 1000) if ms and ms > 0 else 0.0
