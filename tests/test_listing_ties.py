"""Paging the ``scheduled`` listing (``Admin.jobs``, ``delayed_jobs``, ``asyncjobs jobs -s
scheduled``) through jobs that share a due time while jobs leave and join the delayed set
between pages (and between the reads of one page); the other listings' cursors when the
entry they name is gone; and ``delay=`` / ``at=``, two ways of saying when a job is due.

Each page is checked against the delayed set itself, read whole just before the page: the
page must be exactly the next ``limit`` members after the cursor in the set's own order
(score, then member bytes). A listing that skips or repeats a job fails that check at the
page where it does.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs._options import JobOptions
from asyncjobs._producer.cursor import decode_cursor, encode_cursor
from asyncjobs._producer.listing import Listing
from asyncjobs._producer.sources import Source
from asyncjobs._redis.keys import GROUP

from .conftest import Backend

Member = tuple[float, bytes]
"""A delayed-set member as the set orders it: (score, member bytes)."""
Mutate = Callable[[int, list[str]], Awaitable[None]]
"""Changes the set between pages: given the page number and the ids listed so far."""


@asyncjobs.task(name="lt_echo")
async def lt_echo(ctx: Context, n: int) -> int:
    return n


async def members(pool: asyncjobs.Pool) -> list[Member]:
    """The delayed set, whole, in its own order (checked against our ordering)."""
    got: list[Any] = await pool.client.zrange(pool.keys("default").delayed, 0, -1,
                                              withscores=True)
    found = [(float(s), m) for m, s in got]
    assert found == sorted(found), "the model of the set's order is wrong"
    return found


def expected_page(now: list[Member], after: Member | None, limit: int,
                  newest: bool) -> list[Member]:
    """The next ``limit`` members after ``after`` (None: from the start) in listing order."""
    ordered = now[::-1] if newest else now
    if after is not None:
        ordered = [m for m in ordered if (m < after if newest else m > after)]
    return ordered[:limit]


async def walk_checked(pool: asyncjobs.Pool, order: str, limit: int,
                       mutate: Mutate | None = None) -> list[str]:
    """Every page of the scheduled listing, each checked against the set read just before
    it; ``mutate`` runs between pages. Returns the ids listed, in order."""
    newest = order == "newest"
    listed: list[str] = []
    cursor: str | None = None
    last: Member | None = None
    for number in range(10_000):
        now = await members(pool)
        page = await asyncio.wait_for(  # a hang guard, not a timing assertion
            pool.admin.jobs("scheduled", order=order, cursor=cursor, limit=limit), 30)
        want = expected_page(now, last, limit, newest)
        got = [r.job_id for r in page.items]
        assert got == [m.decode() for _, m in want], f"page {number} after {last}"
        listed += got
        if want:
            last = want[-1]
        if page.cursor is None:
            assert not expected_page(now, last, 1, newest), "the listing ended early"
            return listed
        cursor = page.cursor
        if mutate is not None:
            await mutate(number, list(listed))
    raise AssertionError("the cursor never ends")


def fresh_ids(n: int) -> list[str]:
    """Ids whose order has nothing to do with their making."""
    return [secrets.token_hex(6) for _ in range(n)]


# -- jobs that share a due time ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_jobs_enqueued_together_page_whole_while_each_page_last_job_is_aborted(
        pool: asyncjobs.Pool, order: str) -> None:
    """One ``enqueue_many`` with one delay: one score for every job. Aborting the job a
    cursor names before the next page made that page resume past the whole group."""
    jobs = await pool.enqueue_many(
        asyncjobs.call(lt_echo.options(delay=600), n) for n in range(25))
    assert len({s for s, _ in await members(pool)}) == 1

    aborted: list[str] = []

    async def abort_last(number: int, listed: list[str]) -> None:
        assert await pool.job(listed[-1]).abort() is True
        aborted.append(listed[-1])

    listed = await walk_checked(pool, order, 3, abort_last)
    assert sorted(listed) == sorted(j.id for j in jobs)
    assert len(aborted) == 8 and len(await members(pool)) == 25 - 8


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_a_tie_group_larger_than_a_page_pages_exactly_while_members_come_and_go(
        pool: asyncjobs.Pool, order: str) -> None:
    """1,200 members due at one ms between others; between pages the cursor's member, one
    listed and one unlisted member leave, and members join before and after the cursor,
    at its score and at others."""
    key = pool.keys("default").delayed
    await pool.client.zadd(key, dict.fromkeys(fresh_ids(1200), 5000))
    await pool.client.zadd(key, {m: 4_000 + n for n, m in enumerate(fresh_ids(30))})
    await pool.client.zadd(key, {m: 6_000 + n for n, m in enumerate(fresh_ids(30))})
    first = {m.decode() for _, m in await members(pool)}

    async def churn(number: int, listed: list[str]) -> None:
        ahead = [m.decode() for _, m in await members(pool) if m.decode() not in listed]
        gone = [listed[-1], listed[len(listed) // 2], *ahead[number % 7: number % 7 + 1]]
        await pool.client.zrem(key, *gone)
        at = listed[-1]
        await pool.client.zadd(key, {  # ties sorting just before and just after the cursor
            at[:-1] + chr(ord(at[-1]) - 1) + "z": 5_000, at + "0": 5_000,
            f"early-{number}": 3_000, f"late-{number}": 7_000})

    listed = await walk_checked(pool, order, 50, churn)
    assert len(listed) == len(set(listed)), "a job listed twice"
    still = {m.decode() for _, m in await members(pool)}
    assert first & still <= set(listed) and len(first & still) > 1_000


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_the_largest_page_through_ties_with_its_cursor_member_gone(
        pool: asyncjobs.Pool, order: str) -> None:
    """Pages of 500 (the most a page holds) through 2,000 ties, each page's last member
    removed before the next: the place among the ties is found without its member."""
    key = pool.keys("default").delayed
    await pool.client.zadd(key, dict.fromkeys(fresh_ids(2000), 9))

    async def drop_last(number: int, listed: list[str]) -> None:
        await pool.client.zrem(key, listed[-1])

    listed = await walk_checked(pool, order, 500, drop_last)
    assert len(listed) == 2_000


@pytest.mark.asyncio
async def test_ties_order_by_member_bytes_not_by_text(pool: asyncjobs.Pool) -> None:
    """Redis orders ties by bytes: a prefix first, 'Z' before 'a', UTF-8 after ASCII, and a
    '|' (the cursor's own separator) inside an id."""
    key = pool.keys("default").delayed
    await pool.client.zadd(key, dict.fromkeys(["a", "ab", "a|b", "Z", "é", "e", "a|", "b"], 7))

    async def drop_last(number: int, listed: list[str]) -> None:
        await pool.client.zrem(key, listed[-1])

    for order in ("oldest", "newest"):
        for limit in (1, 2, 3):
            await walk_checked(pool, order, limit)
    await walk_checked(pool, "oldest", 1, drop_last)
    await pool.client.zadd(key, dict.fromkeys(["a", "ab", "a|b", "Z", "é", "e", "a|", "b"], 7))
    await walk_checked(pool, "newest", 2, drop_last)


@pytest.mark.asyncio
async def test_scores_written_by_hand_resume_at_their_exact_value(
        pool: asyncjobs.Pool) -> None:
    """Garbage scores (fractions, infinities, beyond any date) tie and page like any other:
    a cursor holds the exact score, so members at 1.25 and 1.5 are not one group '1'."""
    key = pool.keys("default").delayed
    scores = [1.0, 1.25, 1.5, float("inf"), -float("inf"), 1e20, -1e20, 2.5e-7, 0.0]
    for n, score in enumerate(scores):
        await pool.client.zadd(key, {f"{c}{n}": score for c in "cab"})

    async def drop_last(number: int, listed: list[str]) -> None:
        await pool.client.zrem(key, listed[-1])

    for order in ("oldest", "newest"):
        assert len(await walk_checked(pool, order, 2)) == 27
        assert len(await walk_checked(pool, order, 1, drop_last)) == 27
        for n, score in enumerate(scores):
            await pool.client.zadd(key, {f"{c}{n}": score for c in "cab"})


# -- the reads of one page: the set changes between them -----------------------------------------


def between_reads(monkeypatch: pytest.MonkeyPatch, change: Callable[[], Awaitable[None]]) -> None:
    """Run ``change`` once, after a page has found its place among the ties and before it
    reads from there (the window of a concurrent promotion, abort or enqueue)."""
    found = Source._ties_through
    done = False

    async def then_change(self: Source, *args: Any) -> int:
        nonlocal done
        got = await found(self, *args)
        if not done:
            done = True
            await change()
        return got

    monkeypatch.setattr(Source, "_ties_through", then_change)


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["oldest", "newest"])
@pytest.mark.parametrize("how", ["leave", "join"])
async def test_ties_that_leave_or_join_between_the_reads_of_a_page_move_no_job(
        pool: asyncjobs.Pool, monkeypatch: pytest.MonkeyPatch, order: str, how: str) -> None:
    """Ties before the cursor leave (the place found is too far: a job would be skipped) or
    join, more than a page of them (the place is too near: the read would hold only jobs
    already listed) after the read found its place: it still gives the next jobs."""
    key = pool.keys("default").delayed
    ids = sorted(fresh_ids(60))
    await pool.client.zadd(key, dict.fromkeys(ids, 5))
    first = await pool.admin.jobs("scheduled", order=order, limit=20)
    shown = [r.job_id for r in first.items]
    cursor_at = (5.0, shown[-1].encode())

    async def change() -> None:
        if how == "leave":
            await pool.client.zrem(key, *shown[:15])
        else:  # ids that sort before the cursor's in this order, each near the start
            near = ids[0] if order == "oldest" else ids[-1]
            await pool.client.zadd(key, {
                near + ("" if order == "oldest" else "f") + f"{n:03}": 5 for n in range(40)})

    between_reads(monkeypatch, change)
    source = Source(Listing(pool), "default", "scheduled", order == "newest")
    at = decode_cursor(first.cursor or "", f"scheduled.{order}", 2)
    spots, more = await source.read(at, 20)
    want = expected_page(await members(pool), cursor_at, 20, order == "newest")
    assert [s.job_id for s in spots] == [m.decode() for _, m in want]
    assert len(want) == 20 and more


async def commands(client: Any) -> int:
    """Commands the server has run so far, INFO (our probe) left out."""
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.startswith("cmdstat_info"))


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_a_page_among_many_ties_costs_a_few_commands(real: Backend, order: str) -> None:
    """5,000 jobs due at one ms, pages of 5: the next page costs the page's reads plus 5
    commands while the cursor's job is there (its rank), and a halving search (13 more for
    5,000 ties) once it left, not a walk through the ties before it."""
    async with real.pool() as pool:
        key = pool.keys("default").delayed
        await pool.client.zadd(key, dict.fromkeys(fresh_ids(5000), 5))
        cursor = None
        for _ in range(400):  # deep into the ties
            cursor = (await pool.admin.jobs("scheduled", order=order, limit=5,
                                            cursor=cursor)).cursor
        assert cursor is not None
        before = await commands(pool.client)
        page = await pool.admin.jobs("scheduled", order=order, limit=5, cursor=cursor)
        present = await commands(pool.client) - before
        await pool.client.zrem(key, at := decode_cursor(cursor, f"scheduled.{order}", 2)[1])
        before = await commands(pool.client)
        gone = await pool.admin.jobs("scheduled", order=order, limit=5, cursor=cursor)
        absent = await commands(pool.client) - before
        assert [r.job_id for r in gone.items] == [r.job_id for r in page.items] != []
        assert at not in [r.job_id for r in page.items]
        assert present <= 5 + 5 and absent <= 5 + 5 + 14, (present, absent)


# -- a property: any set, any changes between pages ----------------------------------------------

_SCORES = st.sampled_from([1.0, 1.0, 1.0, 2.0, 2.0, 1.5, 0.0, -1e20, float("inf")])
_IDS = st.text(alphabet="ab|é", min_size=1, max_size=3)
_CHANGE = st.one_of(
    st.tuples(st.just("drop-cursor")),
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("add"), _SCORES, _IDS),
)


@settings(deadline=None, derandomize=True, database=None, max_examples=40,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(start=st.dictionaries(_IDS, _SCORES, min_size=1, max_size=25),
       limit=st.integers(1, 4), order=st.sampled_from(["oldest", "newest"]),
       changes=st.lists(st.lists(_CHANGE, max_size=4), max_size=12))
def test_every_page_is_the_next_jobs_of_the_set_whatever_changes_between_pages(
        real: Backend, start: dict[str, float], limit: int, order: str,
        changes: list[list[tuple[Any, ...]]]) -> None:
    async def main() -> None:
        async with real.pool(prefix=f"t{secrets.token_hex(4)}") as pool:
            key = pool.keys("default").delayed
            await pool.client.zadd(key, start)

            async def change(number: int, listed: list[str]) -> None:
                for step in changes[number] if number < len(changes) else []:
                    if step[0] == "drop-cursor":
                        await pool.client.zrem(key, listed[-1])
                    elif step[0] == "drop":
                        now = await members(pool)
                        if now:
                            await pool.client.zrem(key, now[step[1] % len(now)][1])
                    else:  # an id already there keeps its score: no job moves
                        await pool.client.zadd(key, {step[2]: step[1]}, nx=True)

            await walk_checked(pool, order, limit, change)

    asyncio.run(main())


# -- the other listings: the entry a cursor names is gone ----------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["oldest", "newest"])
@pytest.mark.parametrize("state", ["queued", "running", "dead", "complete"])
async def test_stream_listings_resume_after_the_cursor_entry_is_deleted(
        pool: asyncjobs.Pool, order: str, state: str) -> None:
    """Queued, running, dead and complete page by stream entry id (unique: no ties). The
    entry a cursor names deleted (settled, trimmed), the next page is the entries after it
    (for complete, the jobs after the cursor's, whose own entry went with it)."""
    keys = pool.keys("default")
    key = {"dead": keys.dead, "complete": keys.ended}.get(state, keys.stream)
    for n in range(6):
        if state == "complete":
            for job_id in (f"c{n}a", f"c{n}b"):
                await pool.client.hset(keys.job(job_id), mapping={"s": "complete", "et": "1"})
            await pool.client.xadd(key, {f"c{n}a": "1", f"c{n}b": "1"})
        else:
            await pool.client.xadd(key, {"i": f"j{n}", "t": "1"})
    if state == "running":
        await pool.client.xgroup_create(key, GROUP, id="0")
        await pool.client.xreadgroup(GROUP, "w1", {key: ">"})
    entries: Any = await pool.client.xrange(key)
    newest = order == "newest"
    flat = [(e, j.decode()) for e, f in (entries[::-1] if newest else entries)
            for j in ([f[b"i"]] if b"i" in f else list(f)[::-1] if newest else list(f))]
    first = await pool.admin.jobs(state, order=order, limit=3)
    assert [r.job_id for r in first.items] == [j for _, j in flat[:3]]
    gone = flat[2][0]
    if state == "running":
        await pool.client.xack(key, GROUP, gone)
    await pool.client.xdel(key, gone)
    again = await pool.admin.jobs(state, order=order, cursor=first.cursor, limit=3)
    assert [r.job_id for r in again.items] == [j for e, j in flat[3:] if e != gone][:3]


# -- delay= and at=: the later one wins, both at once is refused ---------------------------------

SOON = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_a_later_delay_replaces_an_earlier_at_and_the_other_way_round() -> None:
    assert lt_echo.options(at=SOON).options(delay=1).job_options == JobOptions(delay_s=1.0)
    assert lt_echo.options(delay=60).options(at=SOON).job_options == JobOptions(at=SOON)
    assert lt_echo.options(at=SOON).options(delay=0).job_options == JobOptions(delay_s=0.0)
    kept = lt_echo.options(at=SOON).options(job_id="x", max_tries=2).job_options
    assert kept == JobOptions(job_id="x", at=SOON, max_tries=2)
    kept = lt_echo.options(delay=5).options(queue="q").job_options
    assert kept == JobOptions(queue="q", delay_s=5.0)


@pytest.mark.parametrize("delay", [0, 60, timedelta(hours=1)])
def test_delay_and_at_in_one_call_are_refused_in_one_line(delay: Any) -> None:
    original = lt_echo.options(job_id="mine")
    with pytest.raises(ValueError, match="not both") as caught:
        original.options(delay=delay, at=SOON)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200
    assert original.job_options == JobOptions(job_id="mine")


@pytest.mark.asyncio
async def test_the_later_of_delay_and_at_sets_when_a_job_is_due(
        pool: asyncjobs.Pool) -> None:
    """Through ``enqueue`` and ``enqueue_many`` (and what ``prepare`` writes for the outbox):
    one due time, the later option's."""
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    soon = await pool.enqueue(lt_echo.options(at=tomorrow).options(delay=60), 1)
    now = await pool.enqueue(lt_echo.options(at=tomorrow).options(delay=0), 2)
    [later] = await pool.enqueue_many(
        [asyncjobs.call(lt_echo.options(delay=60).options(at=tomorrow), 3)])
    due = (await soon.info()).scheduled_for
    assert due is not None and due < datetime.now(UTC) + timedelta(minutes=5), due
    assert await now.status() is JobState.QUEUED
    due = (await later.info()).scheduled_for
    assert due is not None and abs(due - tomorrow) < timedelta(seconds=1), due
    _, new, _ = pool.prepare(asyncjobs.call(lt_echo.options(at=tomorrow).options(delay=60), 4))
    assert (new.delay_ms, new.due_at_ms) == (60_000, 0)
    _, new, _ = pool.prepare(asyncjobs.call(lt_echo.options(delay=60).options(at=tomorrow), 4))
    assert new.delay_ms == 0 and new.due_at_ms == round(tomorrow.timestamp() * 1000)


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_members_that_are_not_utf8_page_once_each(pool: asyncjobs.Pool, order: str) -> None:
    """Members written by hand that are not UTF-8 (shown with U+FFFD) tie with others; a
    cursor on one still names its exact bytes: one page each, in order, then the end."""
    key = pool.keys("default").delayed
    raw = [b"\xff", b"\xfe\xff", b"a\xff", b"\xef\xbf\xbd", b"\xc3", b"a", b"\xff\x00|x"]
    await pool.client.zadd(key, dict.fromkeys(raw, 5))
    await pool.client.zadd(key, {b"\xff": 4, b"\xfe": 6})
    want = [m for m, _ in await pool.client.zrange(key, 0, -1, withscores=True)]
    want = want[::-1] if order == "newest" else want
    listed, cursor = [], None
    for _ in range(len(want) + 1):
        page = await pool.admin.jobs("scheduled", order=order, cursor=cursor, limit=1)
        listed += [r.job_id for r in page.items]
        if (cursor := page.cursor) is None:
            break
    assert listed == [m.decode(errors="replace") for m in want]


@pytest.mark.asyncio
async def test_scheduled_cursors_that_were_not_made_by_the_listing_are_refused(
        pool: asyncjobs.Pool) -> None:
    """A cursor is checksummed, not signed: one made by hand with a score Redis would refuse
    (or read as another), or a Latin-1 member no byte can hold, is a one-line ValueError."""
    await pool.client.zadd(pool.keys("default").delayed, {b"\xff": 5, "b": 5, "c": 6})
    for score, member in [("nan", "x"), ("1e5x", "x"), ("5 ", "x"), ("+5", "x"), ("", "x"),
                          ("5~~", "x"), ("5~", "\u0101"), ("~", "x"), ("0x10", "x")]:
        cursor = encode_cursor("scheduled.oldest", score, member)
        with pytest.raises(ValueError, match="invalid cursor") as caught:
            await pool.admin.jobs("scheduled", cursor=cursor)
        assert "\n" not in str(caught.value)
    made = await pool.admin.jobs("scheduled", cursor=encode_cursor("scheduled.oldest", "5~",
                                                                    "\xff"))
    assert [r.job_id for r in made.items] == ["c"]
    made = await pool.admin.jobs("scheduled", cursor=encode_cursor("scheduled.oldest",
                                                                    "1e+999", "x"))
    assert made.items == []
