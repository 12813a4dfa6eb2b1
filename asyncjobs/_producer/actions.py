"""What ``pool.admin`` changes: dead letters requeued (by id, or all of them) or purged,
scheduled jobs made due now, a queue's maximum length set. ``Admin`` (``admin``), which
reads, inherits these from ``Actions``.

Bulk dead-letter work (``requeue_all``, ``purge_dead``) walks the dead-letter stream in
pages of 1,000 by entry id, one pipelined round trip of script calls per page, so memory
stays bounded however many letters there are. It visits the letters there were when it
started: a requeued job that is dead-lettered again at once waits for the next run.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._redis import scripts as s
from .._redis.pubsub import publish
from .._redis.values import MAX_LENGTH_MOST
from ..exceptions import ConfigurationError
from .cursor import after
from .deadletters import (
    REPLIES,
    DeadLetter,
    RequeueReport,
    Tally,
    dead_letter,
    not_requeueable,
    text,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .pool import Pool

_PAGE = 1_000

OnProgress = Callable[[int, int], None]
"""Called after each page of a bulk operation with (letters handled so far, letters there
were when it started)."""


class Actions:
    """The changes ``Admin`` makes (a mixin: ``Admin`` gives it ``pool``, ``client`` and
    ``_pipe``, the round trip its reads use too)."""

    pool: Pool
    client: Redis

    if TYPE_CHECKING:
        async def _pipe(self, build: Callable[[Any], object],
                        errors: bool = True) -> list[Any]: ...

    async def requeue(self, job_ids: Sequence[str], queue: str | None = None) -> dict[str, str]:
        """Requeue dead-lettered jobs by id (same id, history kept); per id: the outcome
        ('queued', 'missing', 'already queued' for a job that waits already, or the
        state of another job that is not dead). An id given twice is requeued once.
        Pipelined, 1,000 jobs per round trip."""
        name = queue or self.pool.default_queue
        job_ids = list(dict.fromkeys(job_ids))
        outcome: dict[str, str] = {}
        for start in range(0, len(job_ids), _PAGE):
            chunk = job_ids[start : start + _PAGE]
            outcome.update(zip(chunk, await self._requeue_page(name, chunk), strict=True))
        return outcome

    async def requeue_all(self, queue: str | None = None, *,
                          on_progress: OnProgress | None = None) -> RequeueReport:
        """Requeue every dead-lettered job that has a record; count the letters left.

        A letter is requeued when its job is still dead-lettered as that letter; a letter
        of a job that was requeued or dead-lettered again since is left, as the reasons say.
        """
        name = queue or self.pool.default_queue
        tally = Tally()
        total, pages = await self._pages(name, on_progress)
        async for page in pages:
            await self._requeue_letters(name, page, tally)
            if on_progress is not None:
                on_progress(tally.handled, total)
        return tally.report()

    async def _requeue_letters(self, queue: str, page: list[DeadLetter], tally: Tally) -> None:
        keys, ready = self.pool.keys(queue), []
        named = [d for d in page if d.job_id]
        records = await self._pipe(
            lambda p: [p.hmget(keys.job(d.job_id), ["s", "de"]) for d in named], errors=False)
        for letter, record in zip(named, records, strict=True):
            why = not_requeueable(letter, record)
            if why:
                tally.left_over(letter, why)
            else:
                ready.append(letter)
        # The check above only spares the scripts letters that cannot be requeued: each
        # script checks again, in the step that requeues, that the job is still
        # dead-lettered as its letter (anyone may have requeued it since, another
        # requeue_all included, and it may have been dead-lettered again).
        replies = await self._requeue_page(queue, [d.job_id for d in ready],
                                           [d.entry for d in ready])
        for letter, reply in zip(ready, replies, strict=True):
            if reply == "requeued":
                tally.requeued()
            else:
                tally.left_over(letter, REPLIES.get(reply) or
                                f"job is {reply.removeprefix('already ')}")
        for letter in page:
            if not letter.job_id:
                tally.left_over(letter, "no job id")

    async def _requeue_page(self, queue: str, job_ids: Sequence[str],
                            letters: Sequence[str] | None = None) -> list[str]:
        """requeue.lua for each job; with ``letters`` (one per job: the dead-letter entry
        it is requeued from), a job is requeued only while still dead-lettered as its
        letter ('requeued'; 'stale' when dead-lettered again since)."""
        if not job_ids:
            return []
        keys, script = self.pool.keys(queue), s.load(s.REQUEUE)
        calls: list[s.Call] = [
            (script, [keys.job(i), keys.stream, keys.dead],
             [i] if letters is None else [i, letters[n]])
            for n, i in enumerate(job_ids)]
        replies = await self.pool.call(lambda: s.run_pipelined(self.client, calls))
        return [text(r) for r in replies]

    async def purge_dead(self, queue: str | None = None, *,
                         on_progress: OnProgress | None = None) -> int:
        """Delete every dead letter and the records of those dead jobs; returns how many.
        A job requeued meanwhile keeps its record (checked and deleted in one step)."""
        name = queue or self.pool.default_queue
        store = self.pool.store(name)
        deleted = handled = 0
        total, pages = await self._pages(name, on_progress)
        async for page in pages:
            pairs = [(d.entry, d.job_id) for d in page]
            deleted += await self.pool.call(functools.partial(store.purge_dead, pairs))
            handled += len(page)
            if on_progress is not None:
                on_progress(handled, total)
        return deleted

    async def _pages(self, queue: str, on_progress: OnProgress | None
                     ) -> tuple[int, AsyncIterator[list[DeadLetter]]]:
        """How many letters there are, and those letters a page at a time, oldest first."""
        dead = self.pool.keys(queue).dead
        total, newest = await self._pipe(lambda p: p.xlen(dead).xrevrange(dead, count=1))
        if on_progress is not None:
            on_progress(0, int(total))
        return int(total), self._walk(dead, text(newest[0][0]) if newest else None)

    async def _walk(self, dead: str, end: str | None) -> AsyncIterator[list[DeadLetter]]:
        start: str | None = "-"
        while end is not None and start is not None:
            rows = await self.pool.call(functools.partial(
                self.client.xrange, dead, min=start, max=end, count=_PAGE))
            if not rows:
                return
            # Exclusive: the letters just handled may still be there (not requeued).
            start = after(text(rows[-1][0]))
            yield [dead_letter(entry, fields) for entry, fields in rows]

    async def make_due(self, job_ids: Sequence[str], queue: str | None = None) -> list[str]:
        """Make scheduled jobs due now (a delay or a retry's backoff cut short) and wake
        the queue's scheduler; returns the ids that were waiting in the delayed set."""
        keys = self.pool.keys(queue or self.pool.default_queue)
        if not job_ids:
            return []
        changed = await self._pipe(
            lambda p: [p.zadd(keys.delayed, {i: 0}, xx=True, ch=True) for i in job_ids],
            errors=False)
        moved = [i for i, n in zip(job_ids, changed, strict=True) if n == 1]
        if moved:
            await self.pool.call(lambda: publish(self.client, keys.wake_channel, 0))
        return moved

    async def set_max_length(self, queue: str, most: int | None) -> None:
        """Give ``queue`` a maximum length (backpressure), or take it away with None.

        The queue's length is every job it holds: waiting, in flight and delayed (retries
        included). An enqueue that would take it past ``most`` is refused with
        ``QueueFull`` (or waits for room, see ``create_pool(wait_for_room=...)``); nothing
        already in the queue is ever dropped, so lowering the maximum below the length only
        refuses new jobs until workers have drained it. Stored in Redis with the queue, so
        every producer enforces the same maximum from its next enqueue. Retries, delayed
        jobs coming due and cron ticks are never refused; nor are dead-letter requeues.
        ``ConfigurationError`` for anything but a whole number from 1 to 10**12."""
        keys = self.pool.keys(queue)
        if most is None:
            await self.pool.call(lambda: self.client.hdel(keys.settings, "max_length"))
            return
        if isinstance(most, bool) or not isinstance(most, int) or not (
                0 < most <= MAX_LENGTH_MOST):
            raise ConfigurationError(
                f"a queue's maximum length must be a whole number from 1 to 10**12 (or None "
                f"for no maximum), not {most!r}")
        await self._pipe(lambda p: p.hset(keys.settings, "max_length", most)
                         .sadd(self.pool.global_keys.queues, queue))
