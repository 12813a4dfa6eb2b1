"""Shared fixtures.

``backend`` runs a test twice: on an in-memory fake Redis and on a real ``redis-server``
that the suite starts itself on a free port (never the machine's 6379). In CI (``$CI`` set)
a missing ``redis-server`` fails the run instead of skipping the real-Redis half.
Every test gets its own key prefix, so tests never see each other's keys.
Async tests run on both asyncio's loop and uvloop, except ``slow`` ones (subprocesses).

``--shuffle SEED`` runs the tests in a random order drawn from SEED: the modules shuffled, and
the tests within each module (kept together, so module fixtures start once). The same seed
gives the same order, in every xdist worker process too. ``.ci/repeat`` uses it to find tests
that pass or fail by the order they run in.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import uvloop

import asyncjobs
from asyncjobs._redis.connection import ClientFactory, url_factory
from asyncjobs._redis.embedded import RedisServer, redis_server_path
from asyncjobs._redis.fake import fake_factory

from .cluster import ClusterSetup

IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(autouse=bool(os.environ.get("ASYNCJOBS_TEST_GC")))
def collect_garbage() -> Iterator[None]:
    """With $ASYNCJOBS_TEST_GC set, collect after each test, so that a resource a test
    leaked is reported against that test rather than a later one."""
    yield
    gc.collect()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shuffle", type=int, metavar="SEED", default=None,
                     help="run modules, and the tests within each, in an order drawn from SEED")
    parser.addoption("--backends", default="fake,real,cluster", metavar="NAMES",
                     help="the cases of the `backend` fixture to run (deselects the others); "
                          "tests of their own backend, like tests/test_cluster.py, still run")


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.getoption("shuffle")
    return None if seed is None else f"test order shuffled: --shuffle {seed}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # ``backend``'s cluster case runs only for tests marked ``on_cluster``; --backends
    # keeps only the cases it names
    kept = set(config.getoption("backends").split(","))
    off = [item for item in items if _backend_of(item) is not None and (
        _backend_of(item) not in kept
        or (_backend_of(item) == "cluster" and not item.get_closest_marker("on_cluster")))]
    if off:
        config.hook.pytest_deselected(items=off)
        dropped = set(map(id, off))
        items[:] = [item for item in items if id(item) not in dropped]
    seed = config.getoption("shuffle")
    if seed is not None:
        rng = random.Random(seed)
        modules: dict[str, list[pytest.Item]] = {}
        for item in items:
            modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
        groups = list(modules.values())
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
        items[:] = [item for group in groups for item in group]
    # The longest tests first: pytest-xdist deals tests out in this order, and one started
    # last would keep a parallel run going alone for its whole length.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def _backend_of(item: pytest.Item) -> object:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("backend")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    if item.get_closest_marker("slow"):
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def need_redis_server() -> None:
    """Skip (or, in CI, fail) when redis-server is missing."""
    if redis_server_path() is None:
        if IN_CI:
            pytest.fail("redis-server is not on PATH, and real-Redis tests never skip in CI")
        pytest.skip("redis-server is not on PATH")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (tests isolate themselves by key prefix)."""
    need_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A real redis-server of this test's own (to kill, restart, or fill)."""
    need_redis_server()
    with RedisServer() as server:
        yield server


@dataclass
class Backend:
    """Where a test's Redis is: a URL (real) or a client factory (fake)."""

    name: str
    url: str | None
    factory: ClientFactory
    prefix: str

    def worker(self, tasks: Any, **options: Any) -> asyncjobs.Worker:
        """A worker on this backend and prefix."""
        options.setdefault("prefix", self.prefix)
        return asyncjobs.Worker(tasks, **options)

    async def run(self, worker: asyncjobs.Worker) -> None:
        """Run a worker to completion (burst mode, or until stopped)."""
        await worker.run(redis_url=self.url, client_factory=None if self.url else self.factory)

    def pool(self, **options: Any) -> Any:
        """``create_pool`` on this backend and prefix (await it or ``async with`` it)."""
        options.setdefault("prefix", self.prefix)
        if self.url:
            return asyncjobs.create_pool(self.url, **options)
        return asyncjobs.create_pool(client_factory=self.factory, **options)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterSetup]:
    """One 3-master Redis Cluster for the session (tests isolate themselves by key prefix)."""
    need_redis_server()
    with ClusterSetup(masters=3) as cluster:
        yield cluster


@pytest.fixture(params=["fake", "real", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The test's Redis: in-memory fake, then the session's real server (and, for tests
    marked ``on_cluster``, the session's 3-master cluster)."""
    prefix = f"t{secrets.token_hex(4)}"
    if request.param == "fake":
        return Backend("fake", None, fake_factory(), prefix)
    if request.param == "cluster":
        cluster: ClusterSetup = request.getfixturevalue("redis_cluster")
        return Backend("cluster", cluster.url, url_factory(cluster.url), prefix)
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("real", server.url, url_factory(server.url), prefix)


@pytest.fixture
def real(redis_server: RedisServer) -> Backend:
    """The session's real server only."""
    prefix = f"t{secrets.token_hex(4)}"
    return Backend("real", redis_server.url, url_factory(redis_server.url), prefix)


@pytest_asyncio.fixture
async def pool(backend: Backend) -> AsyncIterator[asyncjobs.Pool]:
    """A pool on the test's backend."""
    async with backend.pool() as opened:
        yield opened


class Running:
    """A worker running in the background of a test."""

    def __init__(self, backend: Backend, worker: asyncjobs.Worker) -> None:
        self.backend = backend
        self.worker = worker
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> asyncjobs.Worker:
        ready = asyncio.get_running_loop().create_future()
        factory = None if self.backend.url else self.backend.factory

        async def main() -> None:
            import anyio

            async with anyio.create_task_group() as tg:
                await tg.start(lambda task_status: self.worker.run(
                    redis_url=self.backend.url, client_factory=factory, task_status=task_status))
                ready.set_result(None)

        self._task = asyncio.create_task(main())
        done, _ = await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            self._task.result()  # raise the start-up error
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 30)


def running(backend: Backend, worker: asyncjobs.Worker) -> Running:
    """``async with running(backend, worker):`` runs the worker until the block ends."""
    return Running(backend, worker)
