"""pytest fixtures for code that uses asyncjobs, registered when the package is installed.

``asyncjobs_harness``: a ``asyncjobs.testing.Harness`` (an in-memory Redis, a pool on it,
``enqueued()`` to look at what your code enqueued, ``run_all()`` to run those jobs now).
``asyncjobs_pool``: just its pool. Both are plain fixtures, usable from any async test:
``@pytest.mark.anyio`` (anyio's plugin comes with asyncjobs) or pytest-asyncio's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._producer.pool import Pool
from .testing import Harness


@pytest.fixture
def asyncjobs_harness() -> Iterator[Harness]:
    """A fresh in-memory Redis with a pool on it, for one test (nothing to close: the fake
    holds no sockets). Apps it was attached to are detached at the end of the test."""
    harness = Harness()
    yield harness
    harness.detach()


@pytest.fixture
def asyncjobs_pool(asyncjobs_harness: Harness) -> Pool:
    """The harness's pool: pass it where your code expects an ``asyncjobs.Pool``."""
    return asyncjobs_harness.pool
