"""The public API as a user writes it, checked by ``mypy --strict`` (see tests/test_typing.py).

Never run. Lines ending in ``# type: ignore[code]`` MUST be type errors: with
``warn_unused_ignores`` (on under --strict) mypy fails if one of them ever type-checks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, assert_type

import asyncjobs


@asyncjobs.task
async def send(ctx: asyncjobs.Context, user_id: int, note: str = "") -> str:
    return f"{ctx.job_id}: {user_id} {note}"


@asyncjobs.task(queue="reports", timeout=timedelta(minutes=5), max_tries=1)
async def build_report(ctx: asyncjobs.Context, name: str) -> dict[str, int]:
    return {name: ctx.attempt}


async def plain(ctx: asyncjobs.Context, count: int) -> list[int]:
    return list(range(count))


def add(ctx: asyncjobs.Context, a: int, b: int) -> int:
    return a + b


async def produce(pool: asyncjobs.Pool) -> None:
    job = await pool.enqueue(send, 1)
    assert_type(job, asyncjobs.Job[str])
    assert_type(await job.result(), str)
    assert_type(await job.result(timeout=2.5), str)

    with_options = await pool.enqueue(send.options(job_id="x", delay=5), 1, note="hi")
    assert_type(with_options, asyncjobs.Job[str])

    by_name = await pool.enqueue("send", 1)
    assert_type(by_name, asyncjobs.Job[Any])
    assert_type(await by_name.result(), Any)

    report = await pool.enqueue(build_report, "daily")
    assert_type(await report.result(), dict[str, int])

    undecorated = await pool.enqueue(plain, 3)
    assert_type(undecorated, asyncjobs.Job[list[int]])

    sync = await pool.enqueue(add, 1, b=2)
    assert_type(sync, asyncjobs.Job[int])

    ref = asyncjobs.task_ref("send", queue="emails")
    assert_type(asyncjobs.call(ref, "anything", goes=True), asyncjobs.Call[Any])
    # Enqueueing a task_ref is typed Any (not Job[Any]): its Any parameters match several
    # overloads with different return types. Annotating keeps the rest of the code checked.
    ref_job: asyncjobs.Job[Any] = await pool.enqueue(ref, "anything", goes=True)
    assert_type(await ref_job.result(), Any)

    one = asyncjobs.call(send, 2)
    assert_type(one, asyncjobs.Call[str])
    assert_type(asyncjobs.call(add, 1, 2), asyncjobs.Call[int])
    jobs = await pool.enqueue_many([one, asyncjobs.call("send", 3)])
    assert_type(jobs, list[asyncjobs.Job[Any]])

    assert_type(await pool.job("x").status(), asyncjobs.JobState)
    info = await job.info()
    assert_type(info.error, asyncjobs.ErrorInfo | None)


async def mistakes(pool: asyncjobs.Pool) -> None:
    """Each line is a type error; the ignore comments pin the error code."""
    await pool.enqueue(send, "one")  # type: ignore[call-overload]
    await pool.enqueue(send)  # type: ignore[call-overload]
    await pool.enqueue(send, 1, nope="x")  # type: ignore[call-arg]
    await pool.enqueue(send.options(job_id="x"), user_id="1")  # type: ignore[call-overload]
    await pool.enqueue(plain, "3")  # type: ignore[call-overload]
    await pool.enqueue(add, 1)  # type: ignore[call-overload]
    asyncjobs.call(send, "x")  # type: ignore[call-overload]
    asyncjobs.call(add, 1, 2, 3)  # type: ignore[call-overload]
    send.options(jobid="x")  # type: ignore[call-arg]
    text: int = await (await pool.enqueue(send, 1)).result()  # type: ignore[assignment]
    del text
