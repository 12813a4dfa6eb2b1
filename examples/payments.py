"""Charging a card from a background job without ever charging twice.

Delivery is at-least-once: after a crash (or a lost connection) a job can run again even
though its first run already reached the payment gateway. Two ids make that harmless:

- the job id: enqueue with ``job_id=f"charge:{order_id}"``, so double-clicks and client
  retries of the checkout request enqueue one job, not several;
- the idempotency key sent to the gateway: derived from the job id, identical on every
  attempt and every redelivery, so the gateway charges once and returns the same charge.

Retries are for transient failures only: a declined card is final (``dont_retry_on``).

    python examples/payments.py       # needs Redis at $ASYNCJOBS_REDIS_URL (default localhost)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

import asyncjobs
from asyncjobs import Context


class GatewayUnavailable(Exception):
    """A transient failure: worth retrying."""


class CardDeclined(Exception):
    """A final answer: retrying would not help."""


class FakeGateway:
    """Stands in for a payment API that honours idempotency keys (as Stripe's does)."""

    def __init__(self) -> None:
        self.charges: dict[str, str] = {}
        self.calls = 0

    async def charge(self, cents: int, card: str, idempotency_key: str) -> str:
        self.calls += 1
        if idempotency_key in self.charges:  # a repeat: the same charge, not a new one
            return self.charges[idempotency_key]
        if card.endswith("0002"):
            raise CardDeclined(f"card ending {card[-4:]} was declined")
        charge_id = f"ch_{secrets.token_hex(4)}"
        self.charges[idempotency_key] = charge_id
        if self.calls == 1:  # the first call goes through, then the reply is "lost"
            raise GatewayUnavailable("connection reset after the charge was made")
        return charge_id


@asyncjobs.task(max_tries=5, backoff=0.05, retry_on=(GatewayUnavailable,),
                dont_retry_on=(CardDeclined,))
async def charge_order(ctx: Context, order_id: int, cents: int, card: str) -> str:
    gateway: FakeGateway = ctx.state["gateway"]
    # Same key on every attempt and every redelivery of this job: charged at most once.
    return await gateway.charge(cents, card, idempotency_key=f"asyncjobs:{ctx.job_id}")


GATEWAY = FakeGateway()


@contextlib.asynccontextmanager
async def lifespan(worker: asyncjobs.Worker) -> AsyncIterator[dict[str, FakeGateway]]:
    yield {"gateway": GATEWAY}


worker = asyncjobs.Worker([charge_order], lifespan=lifespan, prefix="payments-example")


async def checkout(pool: asyncjobs.Pool, order_id: int, cents: int, card: str) -> str:
    """What a web endpoint does: enqueue once per order, answer at once."""
    job = await pool.enqueue(charge_order.options(job_id=f"charge:{order_id}"),
                             order_id, cents, card)
    return job.id


async def main() -> None:
    async with asyncjobs.create_pool(prefix="payments-example") as pool:
        order = secrets.randbelow(10**9)
        first = await checkout(pool, order, 4999, "4242424242424242")
        again = await checkout(pool, order, 4999, "4242424242424242")  # a double-click
        declined = await checkout(pool, order + 1, 1999, "4000000000000002")
        await worker.configure(burst=True).run()

        charge = await pool.job(first).result(timeout=10)
        print(f"order {order}: one job ({first == again}), charged once as {charge}, "
              f"{len(GATEWAY.charges)} charge(s) for {GATEWAY.calls} gateway calls")
        info = await pool.job(first).info()
        print(f"attempts: {info.attempts}; first error: {info.errors[0].message}")
        try:
            await pool.job(declined).result(timeout=10)
        except asyncjobs.JobFailed as exc:
            print(f"declined: {exc.remote_message} (not retried: {exc.errors[-1].attempt} try)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the output below tells the story
    asyncio.run(main())
