"""The overview lists the queues a page at a time (``page_size`` of them, in name order, a
link to the next page), each page's rows read side by side: 5,000 queues made one page of
5,000 rows, read one queue after another (2.2 s)."""

from __future__ import annotations

import re

import httpx
import pytest

from asyncjobs.dashboard import create_app

from .conftest import Backend

pytestmark = pytest.mark.asyncio


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-queue="([^"]+)"', html)


async def test_the_overview_pages_through_every_queue_once(backend: Backend) -> None:
    names = [f"q{i:03d}" for i in range(120)]
    async with backend.pool() as pool:
        await pool.client.sadd(pool.global_keys.queues, *names)
        await pool.client.set(pool.keys("q050").stream, "a string: a damaged queue")
        app = create_app(pool, page_size=50)
        seen: list[str] = []
        pages, path = [], "/"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://127.0.0.1") as http:
            while path:
                reply = await http.get(path)
                assert reply.status_code == 200, reply.text
                pages.append(reply.text)
                seen += _rows(reply.text)
                found = re.search(r'href="([^"]+)" data-testid="next-queues"', reply.text)
                path = found.group(1).replace("&amp;", "&") if found else ""
    assert seen == names  # each once, in order
    assert [len(_rows(p)) for p in pages] == [50, 50, 20]
    assert "queues 1 to 50 of 120" in pages[0]
    assert "queues 51 to 100 of 120" in pages[1] and 'data-testid="damaged"' in pages[1]
    assert "queues 101 to 120 of 120" in pages[2] and "next page" not in pages[2]


async def test_a_few_queues_are_one_page_without_links(backend: Backend) -> None:
    async with backend.pool() as pool:
        await pool.client.sadd(pool.global_keys.queues, "a", "b")
        app = create_app(pool, page_size=50)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://127.0.0.1") as http:
            reply = await http.get("/")
    assert _rows(reply.text) == ["a", "b"]
    assert 'data-testid="queue-pages"' not in reply.text
