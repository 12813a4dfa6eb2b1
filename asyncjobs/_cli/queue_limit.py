"""``asyncjobs queue-limit``: show, set or clear a queue's maximum length (backpressure).

The maximum lives in Redis with the queue (``Admin.set_max_length``), so it takes effect for
every producer at its next enqueue; no producer or worker needs a restart. ``register(app)``
adds the command.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .._producer.opening import create_pool
from .._redis.values import MAX_LENGTH_MOST
from . import loader
from .options import AsJson, Prefix, RedisUrl
from .render import Command, safe, to_json


async def _limit(url: str | None, prefix: str, queue: str, most: int | None,
                 change: bool) -> dict[str, Any]:
    async with create_pool(url, prefix=prefix, allow_eviction=True) as pool:
        if change:
            await pool.admin.set_max_length(queue, most)
        stats = await pool.admin.queue_stats(queue)
    return {"queue": queue, "max_length": stats.max_length,
            "length": stats.waiting + stats.in_flight + stats.delayed,
            "refused": stats.counters.get("refused", 0)}


def queue_limit(
    queue: Annotated[str, typer.Argument(callback=loader.queue_option, help="The queue.",
                                         metavar="QUEUE", show_default=False)],
    most: Annotated[int | None, typer.Argument(
        min=1, max=MAX_LENGTH_MOST, metavar="MAX", show_default=False,
        help="The most jobs it may hold: waiting, in flight and delayed. Omit to show the "
             "current maximum.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Take the maximum away.")] = False,
    redis_url: RedisUrl = None,
    prefix: Prefix = "asyncjobs",
    as_json: AsJson = False,
) -> None:
    """Show, set or clear a queue's maximum length: enqueues past it raise QueueFull."""
    from ..cli import _run, fail

    if clear and most is not None:
        fail("give a maximum or --clear, not both", 2)
    shown = _run(_limit(redis_url, prefix, queue, most, clear or most is not None))
    if as_json:
        typer.echo(to_json(shown))
        return
    most_text = "no maximum" if shown["max_length"] is None else (
        f"max length {shown['max_length']}")
    typer.echo(f"queue {safe(queue)}: {most_text} ({shown['length']} job(s) in it, "
               f"{shown['refused']} refused so far)")


def register(app: typer.Typer) -> None:
    """Add ``queue-limit`` to the ``asyncjobs`` command."""
    app.command("queue-limit", cls=Command)(queue_limit)
