"""Sign-up with a welcome email that exists exactly when the user does (transactional enqueue).

The endpoint inserts the user and enqueues the email in one database transaction: a failed
sign-up (the address is taken) leaves no user and no email; a committed one always gets its
email, even if the web process dies right after the commit. The web app needs no Redis; the
worker relays the outbox to Redis and runs the job, by which time the user's row exists.

    pip install -e ".[fastapi,outbox]" uvicorn             # in a clone of asyncjobs
    export DATABASE_URL=postgresql://postgres@localhost/app  # default: sqlite:///outbox-example.db
    uvicorn examples.outbox_fastapi:app                     # the web app
    asyncjobs worker examples.outbox_fastapi:worker         # the worker, relaying the outbox

    curl -X POST 'localhost:8000/signup?email=ada@example.com'   # 201 {"user_id": 1, ...}
    curl -X POST 'localhost:8000/signup?email=ada@example.com'   # 409: no user, no email
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import asyncjobs
from asyncjobs import Context, outbox

log = logging.getLogger("example")

engine = create_async_engine(outbox.database_url(
    os.environ.get("DATABASE_URL", "sqlite:///outbox-example.db")))
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


outbox.outbox_table(Base.metadata)  # asyncjobs_outbox, beside your tables (and migrations)


@asyncjobs.task(timeout=30, max_tries=5)
async def send_welcome_email(ctx: Context, user_id: int, address: str) -> str:
    async with ctx.state["sessions"]() as session:
        user = await session.get(User, user_id)
    if user is None:  # what enqueueing before the commit risks; the outbox rules it out
        raise LookupError(f"user {user_id} does not exist")
    log.warning("mail to %s: Welcome!", user.email)  # stands in for your email client
    return f"welcomed user {user_id} <{address}>"


@contextlib.asynccontextmanager
async def worker_lifespan(worker: asyncjobs.Worker) -> AsyncIterator[dict[str, Any]]:
    yield {"sessions": Session}
    await engine.dispose()  # after the relay inside this lifespan has stopped


relay = outbox.Relay(engine)  # moves committed jobs from the table to Redis
worker = asyncjobs.Worker([send_welcome_email], lifespan=relay.wrap(worker_lifespan))


@contextlib.asynccontextmanager
async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:  # the example's schema; use migrations in your app
        await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(lifespan=app_lifespan)


async def session() -> AsyncIterator[AsyncSession]:
    async with Session() as opened:
        yield opened


@app.post("/signup", status_code=201)
async def signup(email: str, db: Annotated[AsyncSession, Depends(session)]) -> dict[str, Any]:
    try:
        async with db.begin():  # one transaction: the user and the job, or neither
            user = User(email=email)
            db.add(user)
            await db.flush()  # gives the user its id
            job = await outbox.enqueue(db, send_welcome_email, user.id, email)
    except IntegrityError:
        raise HTTPException(409, f"{email} has already signed up") from None
    return {"user_id": user.id, "job_id": job.id}
