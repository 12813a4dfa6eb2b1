"""Every tunable of a worker, validated, and the intervals derived from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._durations import to_seconds
from .._options import check_whole
from .._redis.keys import check_name
from .._redis.values import DeadLetterLimits
from .._retry import RetryPolicy
from .._routing import check_unique, members, parse_queues
from ..exceptions import ConfigurationError


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Every tunable of a worker, in seconds unless the name says otherwise."""

    queues: tuple[str, ...] = ("default",)
    """The queues as given, in order; each is served with its priority levels."""
    weights: tuple[int, ...] | None = None
    """Each queue's weight (same order), or None to serve them strictly in order."""
    concurrency: int = 100
    sync_concurrency: int = 20
    job_timeout_s: float | None = 300.0
    result_ttl_s: float = 3600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    claim_timeout_s: float = 15.0
    max_deliveries: int = 5
    shutdown_grace_s: float = 30.0
    burst: bool = False
    prefix: str = "asyncjobs"
    lease_ttl_s: float = 5.0
    allow_eviction: bool = False
    """Run on a Redis whose eviction policy may delete jobs (refused otherwise)."""
    dead_letter_limit: int = 10_000
    """The most dead letters a queue keeps: beyond it the oldest go, with their records."""
    dead_letter_max_age_s: float = 180 * 24 * 3600.0
    """How long a dead letter (and its job's record) is kept."""
    block_ms: int = 2000
    heartbeat_every_s: float = 5.0
    redis_url: str | None = None

    def __post_init__(self) -> None:
        for queue in self.queues:
            check_name("queue name", queue)
        check_name("prefix", self.prefix)
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        check_unique(self.queues)
        if self.weights is not None:
            if len(self.weights) != len(self.queues):
                raise ConfigurationError("give every queue a weight or none")
            parse_queues(dict(zip(self.queues, self.weights, strict=True)))
        # (a float slipped through as NaN compares false with every bound: a NaN dead-letter
        # limit deleted every letter, a NaN max_deliveries never dead-lettered a poison job)
        for name in ("concurrency", "sync_concurrency", "max_deliveries", "dead_letter_limit",
                     "block_ms"):
            check_whole(name, getattr(self, name))
        for name in ("job_timeout_s", "result_ttl_s", "claim_timeout_s", "shutdown_grace_s",
                     "lease_ttl_s", "heartbeat_every_s", "dead_letter_max_age_s"):
            try:
                to_seconds(getattr(self, name), name.removesuffix("_s"))
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(str(exc)) from exc
        if self.dead_letter_max_age_s < 1.0:  # (it was raised to 1 s without a word)
            raise ConfigurationError("dead_letter_max_age must be at least 1 s (dead letters, "
                                     "and their jobs' records, are kept that long)")
        if not 0.1 <= self.heartbeat_every_s <= 3600:  # (0 spun: a beat after each beat)
            raise ConfigurationError("heartbeat_every must be between 0.1 s and 1 h")
        if not 1.0 <= self.claim_timeout_s <= 3600:
            raise ConfigurationError("claim_timeout must be between 1 s and 1 h")
        if not 0.1 <= self.lease_ttl_s <= 3600:  # (a longer lease is taken for a stray key)
            raise ConfigurationError("lease_ttl must be between 0.1 s and 1 h")

    @property
    def groups(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each queue served and the queues of its levels, highest first."""
        return tuple((q, members(q)) for q in self.queues)

    @property
    def served(self) -> tuple[str, ...]:
        """Every queue (level) this worker takes jobs from."""
        return tuple(m for _, levels in self.groups for m in levels)

    # A dead worker's last refresh is at most C/6 before it died; its entries are claimable
    # C/2 after that refresh; a scan runs at most C/4 after it is due, and a blocking read
    # (capped at C/4) can delay that check by C/4: so its jobs start again within C.

    @property
    def keepalive_every_s(self) -> float:
        """Held entries are refreshed this often: three times within the reclaim threshold."""
        return self.claim_timeout_s / 6

    @property
    def reclaim_idle_s(self) -> float:
        """Entries idle longer than this belong to a stopped worker."""
        return self.claim_timeout_s / 2

    @property
    def reclaim_every_s(self) -> float:
        """Reclaim scans are due this often (reads block at most this long too)."""
        return self.claim_timeout_s / 4

    @property
    def reclaim_hold_s(self) -> float:
        """After an outage, no reclaim for this long: live workers refresh their entries
        first (their first refresh comes within one keep-alive interval)."""
        return self.keepalive_every_s * 2 + 1.0

    @property
    def dead_letters(self) -> DeadLetterLimits:
        """The dead-letter limits, as the scripts take them."""
        return DeadLetterLimits(self.dead_letter_limit,
                                round(self.dead_letter_max_age_s * 1000))

    @property
    def read_batch(self) -> int:
        """The largest COUNT of one read."""
        return min(self.concurrency, 500)

