"""Every Redis key name, derived in one place. No I/O.

All keys of one queue carry the same hash tag, ``{<queue>}``, so they live in one
Redis Cluster slot and every Lua script touching them works on Cluster unchanged. A priority
level's queue (``emails@high``, see ``_routing``) shares its base queue's tag:
``<prefix>:{emails}@high:...``, so one script can take from every level of a queue. Keys that
span queues (``GlobalKeys``) are used alone, but for the worker registry, whose keys share
one slot (the sorted set's name is the hash tag of every worker's record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .._routing import SEPARATOR, split_level
from .kept import tag_of

GROUP = "asyncjobs"
"""The consumer group every worker of a queue reads through."""

ENDED_KEEP = 2000
"""Entries the ended index keeps (``index_ended`` in ``_prelude.lua`` says the same): each
holds at least one job, so at least the 2,000 latest ended jobs of a queue stay listed."""

_FORBIDDEN = set("{}") | {" ", "\n", "\r", "\t"}


def check_name(kind: str, name: str) -> str:
    """Validate a queue name or key prefix and return it: 1-200 characters of text that
    UTF-8 encodes (no lone surrogate: Redis could never be sent it), no braces and no
    whitespace."""
    if not name or any(ch in _FORBIDDEN for ch in name) or len(name) > 200:
        raise ValueError(
            f"invalid {kind} {name!r}: 1-200 characters, no braces and no whitespace"
        )
    try:
        name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"invalid {kind} {name!r}: not valid text (a lone surrogate, e.g. "
                         "bytes that are not UTF-8)") from None
    return str.__str__(name)  # a str subclass's text, whatever its __format__ says


def limit_name(task: str, key: str = "") -> str:
    """A concurrency limit's name inside its queue, ``<len(task)>:<task>:<key>``: the task
    name's length keeps any two (task, key) pairs apart; ``key`` is '' for the task-wide
    limit."""
    return f"{len(task)}:{task}:{key}"


def split_limit_name(name: str) -> tuple[str, str]:
    """(task, key) of a limit name; ('', name) when it is not one (written by hand)."""
    size, _, rest = name.partition(":")
    # at most 9 digits: Python refuses to read an int of thousands (ValueError)
    if (size.isascii() and size.isdigit() and len(size) < 10 and len(rest) > int(size)
            and rest[int(size)] == ":"):
        return rest[: int(size)], rest[int(size) + 1 :]
    return "", name


_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob pattern (SCAN MATCH) that matches it alone: its ``*``, ``?``,
    ``[``, ``]`` and ``\\`` escaped (a prefix or queue name may hold any of them)."""
    return text.translate(_GLOB_SPECIAL)


def job_pattern(levels: Sequence[Keys]) -> str:
    """A SCAN MATCH pattern that the job keys of these levels of one queue all match:
    exactly one level's, or for several every key of the queue with ``:job:`` in it (a
    caller checks each key against the levels' ``job_prefix``)."""
    if len(levels) == 1:
        return f"{glob_escape(levels[0].job_prefix)}*"
    return f"{glob_escape(levels[0].shared)}*:job:*"


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one queue under one prefix."""

    prefix: str
    queue: str
    base: str = field(init=False, repr=False)
    shared: str = field(init=False, repr=False)
    """The base of the keys every priority level of the queue shares (its limits)."""

    def __post_init__(self) -> None:
        check_name("prefix", self.prefix)
        check_name("queue name", self.queue)
        name, level = split_level(self.queue)
        suffix = "" if level == "normal" else f"{SEPARATOR}{level}"
        object.__setattr__(self, "base", f"{self.prefix}:{{{name}}}{suffix}")
        object.__setattr__(self, "shared", f"{self.prefix}:{{{name}}}")

    @property
    def stream(self) -> str:
        """The queue's stream: one entry per queued job, holding only its id."""
        return f"{self.base}:stream"

    @property
    def delayed(self) -> str:
        """Sorted set of job ids waiting for a due time (delays, retries), scored in ms."""
        return f"{self.base}:delayed"

    @property
    def dead(self) -> str:
        """The dead-letter stream: one entry per dead-lettered job, with its reason."""
        return f"{self.base}:dead"

    @property
    def ended(self) -> str:
        """The ended index: a stream capped near ``ENDED_KEEP`` entries, one per script call
        that ended jobs, fields job id -> ended-at ms (what lists complete / failed jobs)."""
        return f"{self.base}:ended"

    @property
    def job_prefix(self) -> str:
        """Prefix of job record keys; scripts build job keys from it."""
        return f"{self.base}:job:"

    def job(self, job_id: str) -> str:
        """The hash holding one job's record."""
        return f"{self.base}:job:{job_id}"

    def kept(self, job_id: str) -> str | None:
        """The hash that may hold the job's kept result once its own key is gone (see
        ``kept``); None for an id that never has one."""
        tag = tag_of(job_id)
        return None if tag is None else f"{self.base}:kept:{tag}"

    @property
    def stats(self) -> str:
        """Hash of counters: enqueued, complete, retry, failed (dead-lettered), expired,
        aborted."""
        return f"{self.base}:stats"

    @property
    def settings(self) -> str:
        """Hash of the queue's settings, shared by every producer and worker: ``max_length``
        (the most jobs waiting, running and delayed; enqueue.lua refuses new jobs past it)."""
        return f"{self.base}:settings"

    @property
    def waiting(self) -> str:
        """Sorted set of the ids of the jobs a ``Job.result()`` call waits for, scored with
        when each registration lapses: settles publish a job's end only while it is there."""
        return f"{self.base}:waiting"

    @property
    def minute_prefix(self) -> str:
        """Prefix of the per-minute outcome counters; scripts append the minute."""
        return f"{self.base}:minute:"

    def minute(self, minute: int) -> str:
        """Hash of one minute's outcomes (complete, failed, retry, expired, aborted), by
        minutes since the epoch (Redis clock); kept two hours."""
        return f"{self.base}:minute:{minute}"

    def rate(self, task: str, key: str = "") -> str:
        """A rate limit's theoretical arrival time (µs, Redis clock) for ``task`` and the
        job's rate key ('' for the task-wide limit); the task name's length keeps any two
        (task, key) pairs apart. Expires once that time has passed. One for all the
        queue's priority levels: the limit holds whatever the jobs' priorities."""
        return f"{self.shared}:rate:{len(task)}:{task}:{key}"

    @property
    def concurrency_prefix(self) -> str:
        """Prefix of the concurrency-limit lease sets; scripts append a limit's name
        (``limit_name``)."""
        return f"{self.shared}:conc:"

    @property
    def concurrency_wait_prefix(self) -> str:
        """Prefix of the sets of jobs waiting on a concurrency limit; scripts append a
        limit's name."""
        return f"{self.base}:concwait:"

    def concurrency(self, name: str) -> str:
        """Sorted set of the leases of one concurrency limit: job id -> lease expiry (ms,
        Redis clock). ``name`` is ``limit_name(task, key)``."""
        return f"{self.concurrency_prefix}{name}"

    def concurrency_wait(self, name: str) -> str:
        """Sorted set of the jobs deferred by one concurrency limit: job id -> when it
        started waiting (ms), oldest first: a released lease lets the oldest go."""
        return f"{self.concurrency_wait_prefix}{name}"

    @property
    def concurrency_limits(self) -> str:
        """Hash of the concurrency limits in use: limit name -> its N (what ``Admin``
        lists); a limit leaves it once nothing holds or waits on it."""
        return f"{self.shared}:conclimits"

    @property
    def leader(self) -> str:
        """The scheduler lease of this queue."""
        return f"{self.base}:leader"

    @property
    def cron(self) -> str:
        """Hash of cron cursors (name -> last tick ms) and last tick job ids."""
        return f"{self.base}:cron"

    def done_channel(self, job_id: str) -> str:
        """Pub/sub channel announcing that a job reached a final state."""
        return f"{self.base}:done:{job_id}"

    @property
    def abort_channel(self) -> str:
        """Pub/sub channel carrying ids of running jobs to cancel."""
        return f"{self.base}:abort"

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel that wakes the scheduler when an earlier due time arrives (the
        message: that due time, ms), or when the leader gave its lease up (``VACATED``)."""
        return f"{self.base}:wake"


VACATED = b"leader"
"""The message on a queue's wake channel that says its leader lease was given up: the
workers waiting for it try to take it at once."""


@dataclass(frozen=True, slots=True)
class GlobalKeys:
    """Keys shared by all queues of one prefix: the set of queue names, and the worker
    registry (one slot: see ``worker``)."""

    prefix: str

    @property
    def queues(self) -> str:
        """Set of known queue names."""
        return f"{self.prefix}:queues"

    @property
    def workers(self) -> str:
        """Sorted set: worker name -> last heartbeat (ms)."""
        return f"{self.prefix}:workers"

    def worker(self, name: str) -> str:
        """JSON describing one worker, expiring when its heartbeat stops. Its hash tag is
        the ``workers`` set's name, so both are in one Redis Cluster slot (the heartbeat
        writes both in one script)."""
        return f"{self.prefix}:worker:{{{self.workers}}}{name}"

    @property
    def claim_timeouts(self) -> str:
        """Sorted set: a claim timeout a live worker declares (ms) -> when that declaration
        lapses (ms); in the ``workers`` set's slot (the heartbeat writes it, beat.lua)."""
        return f"{self.prefix}:claims:{{{self.workers}}}"
