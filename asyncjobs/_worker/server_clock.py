"""A Redis server's clock as this process forecasts it: the last reading, and this
process's monotonic clock since the reading was sent. A reading past the forecast by more
than a margin is the server's clock stepping forward (an NTP step), which would make live
entries look idle (``reclaimer``) and live concurrency leases look expired (``limiter``)."""

from __future__ import annotations


class ServerClock:
    """The last time a Redis server's clock was read, against this process's monotonic
    clock when the read was sent (so the read's own latency never counts as a step)."""

    def __init__(self) -> None:
        self.server_ms: int | None = None
        self.sent_at = 0.0

    def latest_ms(self, now: float, margin_ms: int) -> int:
        """The latest time the server's clock may read at monotonic time ``now`` without
        having stepped forward: 0 (any time is past it) before the first reading."""
        if self.server_ms is None:
            return 0
        return self.server_ms + round((now - self.sent_at) * 1000) + margin_ms

    def read(self, server_ms: int, sent_at: float) -> int | None:
        """Record a reading; returns how far (ms) it is past the previous one's forecast
        (None for the first reading)."""
        before = None if self.server_ms is None else self.latest_ms(sent_at, 0)
        self.server_ms, self.sent_at = server_ms, sent_at
        return None if before is None else server_ms - before
