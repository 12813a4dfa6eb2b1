"""The examples run as written (against the suite's real Redis)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import Backend
from .procs import ROOT

pytestmark = [pytest.mark.slow]


def run_example(name: str, backend: Backend) -> str:
    done = subprocess.run(
        [sys.executable, f"examples/{name}"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "ASYNCJOBS_REDIS_URL": backend.url or ""},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_quickstart(real: Backend) -> None:
    out = run_example("quickstart.py", real)
    assert "sent welcome mail" in out and "'size': 128" in out


def test_payments_charges_once(real: Backend) -> None:
    out = run_example("payments.py", real)
    assert "one job (True), charged once as ch_" in out
    assert "1 charge(s) for 3 gateway calls" in out
    assert "attempts: 2; first error: connection reset after the charge was made" in out
    assert "declined: card ending 0002 was declined (not retried: 1 try)" in out
