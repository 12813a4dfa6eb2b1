"""Quickstart: two tasks, a worker, and a producer.

Run everything in one process (needs a Redis at $ASYNCJOBS_REDIS_URL, default
redis://localhost:6379/0):

    python examples/quickstart.py

Or run the worker on its own, as in production, and enqueue from anywhere:

    asyncjobs worker examples.quickstart:worker
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncjobs
from asyncjobs import Context


@asyncjobs.task(timeout=30, max_tries=5)
async def send_welcome_email(ctx: Context, user_id: int, address: str) -> str:
    # ctx.state is what the lifespan yielded: share clients and pools there.
    mailer = ctx.state["mailer"]
    await asyncio.sleep(0.1)  # pretend to talk to an email API
    return f"{mailer} sent welcome mail #{ctx.job_id[:8]} to user {user_id} <{address}>"


@asyncjobs.task
async def resize_avatar(ctx: Context, user_id: int, size: int = 256) -> dict[str, int]:
    await asyncio.sleep(0.05)
    return {"user_id": user_id, "size": size}


@contextlib.asynccontextmanager
async def lifespan(worker: asyncjobs.Worker) -> AsyncIterator[dict[str, str]]:
    # Open shared resources once per worker process (HTTP clients, DB pools...).
    yield {"mailer": "smtp-client"}


worker = asyncjobs.Worker([send_welcome_email, resize_avatar], lifespan=lifespan)


async def main() -> None:
    async with asyncjobs.create_pool() as pool:
        # Arguments are checked by mypy against the task's signature.
        mail = await pool.enqueue(send_welcome_email, 42, "ada@example.com")
        avatar = await pool.enqueue(resize_avatar.options(job_id="avatar:42"), 42, size=128)
        print("enqueued", mail.id, avatar.id, await mail.status())

        # Run a worker in this process until the queue is empty (burst mode).
        await worker.configure(burst=True).run()

        print(await mail.result(timeout=10))
        print(await avatar.result(timeout=10))


if __name__ == "__main__":
    asyncio.run(main())
