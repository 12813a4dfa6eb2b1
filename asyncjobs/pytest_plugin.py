"""pytest fixtures for code that uses asyncjobs, registered when the package is installed.

``asyncjobs_harness``: a ``asyncjobs.testing.Harness`` (an in-memory Redis, a pool on it,
``enqueued()`` to look at what your code enqueued, ``run_all()`` to run those jobs now).
``asyncjobs_pool``: just its pool. Both are plain fixtures, usable from any async test
(pytest-asyncio, anyio).
"""

from __future__ import annotations

import pytest

from ._pool import Pool
from .testing import Harness


@pytest.fixture
def asyncjobs_harness() -> Harness:
    """A fresh in-memory Redis with a pool on it, for one test (nothing to close: the fake
    holds no sockets)."""
    return Harness()


@pytest.fixture
def asyncjobs_pool(asyncjobs_harness: Harness) -> Pool:
    """The harness's pool: pass it where your code expects an ``asyncjobs.Pool``."""
    return asyncjobs_harness.pool
