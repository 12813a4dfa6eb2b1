"""Routing: priority levels within a queue and the order a worker serves its queues in.
All pure (no Redis, no clock).

**Levels.** A job has one of three priorities: ``high``, ``normal`` (the default) or
``low``. Each level of a queue is a queue of its own in Redis: ``emails@high``, ``emails``
and ``emails@low``, whose keys share the hash tag ``{emails}`` (one Cluster slot, so one
script can take from all three). A worker serving ``emails`` serves its three levels, and
takes from them in one script call, strictly in level order: a ``normal`` job starts only
when no ``high`` job waits, FIFO within a level. Delayed jobs and retries stay at their
level (each level has its own delayed set).

**Queue order.** A worker serving several queues either serves them *strictly* in the order
given (a free slot always goes to the first queue with work) or by *weight* (``critical=6,
default=3, bulk=1``: with work everywhere, six of every ten slots go to ``critical``; no
queue with a weight starves). Strict is the default for a list of names: the order the
names are written in is read as the order of importance, as in Sidekiq's and Celery's
worker options; weights are opt-in, given as a mapping (or ``-q name=weight``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .exceptions import ConfigurationError

Priority = Literal["high", "normal", "low"]
"""A job's priority within its queue."""

LEVELS: tuple[Priority, ...] = ("high", "normal", "low")
"""The levels, highest first (the order a worker takes them in)."""

SEPARATOR = "@"
"""Between a queue's name and its level, in the name of a level's queue."""

MAX_WEIGHT = 1000
"""The largest weight a queue may have."""

_WEIGHTED = re.compile(r"(.+)=\s*(\d{1,4})\s*")


def check_queue(name: object) -> str:
    """``name`` if it is a queue name whose levels' names are valid too, else a one-line
    ``ConfigurationError``."""
    from ._redis.keys import check_name  # keys.py reads this module's names

    if not isinstance(name, str):
        raise ConfigurationError(f"a queue name must be a str, not {type(name).__name__}")
    try:
        for served in (name, *members(name)):
            check_name("queue name", served)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return str.__str__(name)  # a str subclass's text: its __format__ named other keys


def split_level(name: str) -> tuple[str, Priority]:
    """A queue name's base queue and level: ``emails@high`` -> (``emails``, ``high``);
    any other name is a ``normal`` level of its own (a name with ``@`` followed by anything
    but ``high`` or ``low`` is an ordinary queue name)."""
    base, sep, level = name.rpartition(SEPARATOR)
    if sep and base and level in ("high", "low"):
        return base, level  # type: ignore[return-value]
    return name, "normal"


def level_queue(queue: str, priority: str | None) -> str:
    """The queue a job of ``priority`` on ``queue`` goes to; a ``ConfigurationError`` for a
    priority that is not a level, or one that contradicts a level already in the name."""
    check_queue(queue)
    if priority is None:
        return queue
    check_priority(priority)
    base, level = split_level(queue)
    if level != "normal" and priority != level:
        raise ConfigurationError(
            f"queue {queue!r} is the {level} level of {base!r}: priority {priority!r} "
            "contradicts it")
    return base if priority == "normal" else f"{base}{SEPARATOR}{priority}"


def check_priority(priority: object) -> Priority:
    """``priority`` if it names a level, else a one-line ``ConfigurationError``."""
    if priority not in LEVELS:
        raise ConfigurationError(
            f"priority must be one of {', '.join(LEVELS)}, not {priority!r:.60}")
    return priority


def members(queue: str) -> tuple[str, ...]:
    """The queues a worker serving ``queue`` takes from, in order: its three levels, or
    only the named level when the name is a level's (``emails@high``)."""
    base, level = split_level(queue)
    if level != "normal":
        return (queue,)
    return (f"{base}{SEPARATOR}high", base, f"{base}{SEPARATOR}low")


def parse_queues(queues: Sequence[str] | Mapping[str, int] | str
                 ) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """A worker's queues as given (a name, a list in strict order, or a mapping name ->
    weight) -> (names, weights or None for strict order). ``name=weight`` items in a list
    (the CLI's ``-q critical=6``) make it weighted; every queue then needs a weight."""
    if isinstance(queues, str):
        queues = (queues,)
    if isinstance(queues, Mapping):
        pairs: list[tuple[str, object]] = [(str(n), w) for n, w in queues.items()]
        return _weighted(pairs)
    items = list(queues)
    if not items:
        raise ConfigurationError("a worker needs at least one queue")
    given: list[object] = list(items)
    for q in given:
        if not isinstance(q, str):
            check_queue(q)  # raises: a name must be a str
    found = [_WEIGHTED.fullmatch(q) for q in items]
    for q, m in zip(items, found, strict=True):
        if m is None and "=" in q:  # in a list, '=' gives a weight: never part of a name
            raise ConfigurationError(
                f"queue {q!r:.60}: name=weight takes a whole number from 1 to {MAX_WEIGHT} "
                "(a queue whose name holds '=' is given in a mapping)")
    if not any(found):
        names = tuple(items)
        check_unique(names)
        return names, None
    if not all(found):
        plain = [q for q, m in zip(items, found, strict=True) if m is None]
        raise ConfigurationError(
            f"give every queue a weight or none: {', '.join(map(repr, plain[:5]))} "
            "has none (e.g. critical=6 default=3 bulk=1)")
    return _weighted([(m.group(1).strip(), int(m.group(2)))
                      for m in found if m is not None])


def describe_order(queues: Sequence[str], weights: Sequence[int] | None) -> str:
    """How a worker serves its queues, in one phrase: ``a=6, b=1 (weighted)`` or
    ``a > b (strict order)``; each with its levels."""
    if weights is None:
        return f"{' > '.join(queues)} (strict order)" if len(queues) > 1 else queues[0]
    pairs = ", ".join(f"{q}={w}" for q, w in zip(queues, weights, strict=True))
    return f"{pairs} (weighted)"


def _weighted(pairs: Sequence[tuple[str, object]]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if not pairs:
        raise ConfigurationError("a worker needs at least one queue")
    for name, weight in pairs:
        if isinstance(weight, bool) or not isinstance(weight, int) \
                or not 1 <= weight <= MAX_WEIGHT:
            raise ConfigurationError(
                f"queue {name!r}: a weight must be a whole number from 1 to {MAX_WEIGHT}, "
                f"not {weight!r:.40}")
    names = tuple(name for name, _ in pairs)
    check_unique(names)
    return names, tuple(int(w) for _, w in pairs)  # type: ignore[call-overload]


def check_unique(names: Sequence[str]) -> None:
    """A ``ConfigurationError`` if a name is not a valid queue name, or two of ``names``
    serve one queue (level) twice."""
    served: dict[str, str] = {}
    for name in names:
        check_queue(name)
        for member in members(name):
            if member in served:
                raise ConfigurationError(
                    f"queue {member!r} is served twice (by {served[member]!r} and {name!r})")
            served[member] = name


@dataclass
class WeightedOrder:
    """Smooth weighted round robin over queues, counted in jobs: with work everywhere,
    queue *i* gets ``weights[i] / sum(weights)`` of the jobs, spread evenly (batches of one
    slot at 6,3,1 give ``a b a c a b a a b a``-like runs, never ten of one in a row when
    another is due); a batch goes to the queue with the most credit first."""

    weights: tuple[int, ...]

    def __post_init__(self) -> None:
        self._current = [0] * len(self.weights)
        self._total = sum(self.weights)

    def rank(self, slots: int) -> list[int]:
        """The order to ask the queues in for a batch of ``slots`` free slots: each queue is
        credited its weight's share of them, most credit first (ties by position). Charge
        each with what it gave (``charge``), so that over many batches of any sizes each
        queue with work gets its weight's share of the jobs, and a batch usually goes to one
        queue (one round trip) rather than being split."""
        for i, weight in enumerate(self.weights):
            self._current[i] += weight * slots
        return sorted(range(len(self.weights)), key=lambda i: (-self._current[i], i))

    def charge(self, i: int, jobs: int, dry: bool = False) -> None:
        """Queue ``i`` gave ``jobs`` jobs of a batch ``rank`` ordered; ``dry``: it had no
        more (or was not asked: known to have none). A queue without work banks no credit,
        so it cannot crowd the others out for long when work comes back."""
        # A queue owes at most one batch: one that took the jobs others had no work for
        # is not crowded out for as long when they come back.
        self._current[i] = max(self._current[i] - self._total * jobs, -self._total * jobs)
        if dry:
            self._current[i] = min(self._current[i], 0)

