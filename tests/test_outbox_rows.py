"""The outbox's pure parts: a row to the job the relay writes, the remaining delay and
expiry, database URLs, the NOTIFY channel. No database, no Redis."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import asyncjobs
from asyncjobs import outbox
from asyncjobs.outbox._rows import BadRow, Row, remaining_delay, remaining_expiry, to_job
from asyncjobs.outbox._schema import channel

from .test_outbox import greet

SPEC = outbox.Outbox()._encoder.prepare(asyncjobs.call(greet, 1, "a@x"), "x")[1].spec


def row(**changes: Any) -> Row:
    values: dict[str, Any] = {"row_id": 1, "queue": "default", "job_id": "j", "spec": SPEC,
                              "delay_ms": 0, "due_at_ms": 0, "expires_in_ms": 0,
                              "expires_at_ms": 0, "created_at_ms": 1_000_000}
    return Row(**{**values, **changes})


@pytest.mark.parametrize(("delay", "waited", "left"), [
    (0, 0, 0), (0, 5_000, 0), (60_000, 0, 60_000), (60_000, 50_000, 10_000),
    (60_000, 60_000, 0), (60_000, 90_000, 0),
])
def test_remaining_delay(delay: int, waited: int, left: int) -> None:
    assert remaining_delay(delay, waited) == left


@pytest.mark.parametrize(("expires", "waited", "left"), [
    (0, 0, 0), (0, 10_000, 0), (5_000, 1_000, 4_000), (5_000, 4_999, 1), (5_000, 5_000, -1),
    (5_000, 9_000, -1),
])
def test_remaining_expiry_never_turns_into_never(expires: int, waited: int, left: int) -> None:
    assert remaining_expiry(expires, waited) == left


def test_an_expiry_that_passed_while_the_row_waited_is_written_as_passed() -> None:
    """Not as 1 ms left (a worker taking the job within that millisecond ran it): as an
    expiry time already past, whatever the row's own expiry time."""
    _, job = to_job(row(expires_in_ms=5_000, expires_at_ms=0, spec=memoryview(SPEC)),
                    now_ms=1_000_000 + 5_000)
    assert (job.expires_in_ms, job.expires_at_ms) == (0, 1)
    _, job = to_job(row(expires_in_ms=5_000, expires_at_ms=7_000_000, spec=memoryview(SPEC)),
                    now_ms=1_000_000 + 1_000)
    assert (job.expires_in_ms, job.expires_at_ms) == (4_000, 7_000_000)


def test_a_row_becomes_the_job_pool_enqueue_would_write() -> None:
    queue, job = to_job(row(delay_ms=60_000, expires_in_ms=90_000, due_at_ms=0,
                            expires_at_ms=7, spec=memoryview(SPEC)), now_ms=1_020_000)
    assert queue == "default"
    assert (job.id, job.spec, job.delay_ms, job.expires_in_ms, job.expires_at_ms) == (
        "j", SPEC, 40_000, 70_000, 7)


def test_a_clock_that_went_back_counts_no_wait() -> None:
    _, job = to_job(row(delay_ms=60_000), now_ms=900_000)
    assert job.delay_ms == 60_000


@pytest.mark.parametrize(("changes", "reason"), [
    ({"queue": None}, "its queue is not text: None"),
    ({"queue": "a b"}, "invalid queue name 'a b'"),
    ({"queue": "x" * 201}, "invalid queue name"),
    ({"queue": "x" * 200}, "no producer or worker can use it"),  # 'x' * 200 + '@high'
    ({"queue": "x" * 196 + "@low"}, "no producer or worker can use it"),
    ({"job_id": ""}, "job_id must be a non-empty str"),
    ({"job_id": 5}, "job_id must be a non-empty str"),
    ({"job_id": "\ud800"}, "is not valid text"),
    ({"spec": "text"}, "its spec is not bytes: 'text'"),
    ({"spec": b"\xc1"}, "its spec cannot be decoded"),
    ({"spec": b"\x91" * 5000}, "its spec cannot be decoded"),
    ({"delay_ms": -1}, "delay_ms must be an integer from 0 to"),
    ({"delay_ms": 1.5}, "delay_ms must be an integer"),
    ({"delay_ms": True}, "delay_ms must be an integer"),
    ({"expires_in_ms": 10**15}, "expires_in_ms must be an integer from 0 to"),
    ({"due_at_ms": None}, "due_at_ms must be an integer"),
    ({"created_at_ms": "now"}, "created_at_ms must be an integer"),
])
def test_rows_that_cannot_be_jobs_say_why(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(BadRow) as caught:
        to_job(row(**changes), now_ms=1_000_000)
    assert reason in str(caught.value)
    assert len(str(caught.value)) < 500


def test_a_queue_is_valid_exactly_when_its_priority_levels_are() -> None:
    for queue in ("x" * 195, "x" * 195 + "@high", "x" * 195 + "@low", "a@b"):
        assert to_job(row(queue=queue), 0)[0] == queue


def test_only_the_queues_a_relay_serves() -> None:
    assert to_job(row(queue="mail"), 0, queues={"mail"})[0] == "mail"
    # a relay of a queue serves its priority levels, as a worker of it takes from them
    assert to_job(row(queue="mail@high"), 0, queues={"mail"})[0] == "mail@high"
    assert to_job(row(queue="mail@low"), 0, queues={"mail"})[0] == "mail@low"
    with pytest.raises(BadRow, match="unknown queue 'mail@high': this relay serves mail@low"):
        to_job(row(queue="mail@high"), 0, queues={"mail@low"})
    with pytest.raises(BadRow, match="unknown queue 'default': this relay serves a, mail"):
        to_job(row(), 0, queues={"mail", "a"})


def test_database_urls_get_their_async_driver() -> None:
    assert outbox.database_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert outbox.database_url("postgres://u@h/db").drivername == "postgresql+asyncpg"
    assert outbox.database_url("sqlite:///a.db").drivername == "sqlite+aiosqlite"
    assert outbox.database_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(asyncjobs.ConfigurationError, match="not 'mysql'"):
        outbox.database_url("mysql://u@h/db")
    with pytest.raises(asyncjobs.ConfigurationError, match="'nonsense' is not a database URL"):
        outbox.database_url("nonsense")
    with pytest.raises(asyncjobs.ConfigurationError, match=r"^bogus://\.\.\. is not"):
        outbox.database_url("bogus://secret@host:x/db")


def test_the_notify_channel_needs_no_quoting() -> None:
    metadata = sa.MetaData()
    assert channel(outbox.TABLE) == "asyncjobs.asyncjobs_outbox"
    odd = outbox.outbox_table(metadata, name="It's odd", schema="my-schema")
    assert channel(odd) == "asyncjobs.my_schema.It_s_odd"
    long = outbox.outbox_table(metadata, name="t" * 100)
    assert len(channel(long)) == 63


def test_relay_options_are_checked() -> None:
    engine = outbox.Relay("sqlite:///x.db").engine
    assert engine.url.drivername == "sqlite+aiosqlite"
    for options, message in [({"batch_size": 0}, "batch_size"), ({"poll": 0}, "poll"),
                             ({"lease_ttl": 0}, "lease_ttl"), ({"lease_ttl": 3601}, "1 h"),
                             ({"keep": -1}, "keep"),
                             ({"queues": ["a b"]}, "queue name")]:
        with pytest.raises((asyncjobs.ConfigurationError, ValueError), match=message):
            outbox.Relay("sqlite:///x.db", **options)


def test_the_public_api_changes_only_on_purpose() -> None:
    assert sorted(outbox.__all__) == [
        "FAILED", "Outbox", "OutboxJob", "PENDING", "RELAYED", "Relay", "Session", "TABLE",
        "create_all", "database_url", "enqueue", "enqueue_many", "outbox_table"]
    for name in outbox.__all__:
        assert getattr(outbox, name) is not None


def test_importing_asyncjobs_does_not_import_the_outbox() -> None:
    import subprocess
    import sys

    code = ("import sys, asyncjobs, asyncjobs.cli; "
            "print(any(m.startswith(('sqlalchemy', 'asyncjobs.outbox')) for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
