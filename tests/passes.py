"""The leader's repair passes (``asyncjobs/_scheduling/repair.py``) in a test: counted,
and made frequent."""

from __future__ import annotations

import time
from typing import Any

import pytest

from asyncjobs._scheduling import repair
from asyncjobs._scheduling.repair import Repair


def count_passes(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A list that gets the time (``time.monotonic``) of each repair pass's end, as it ends."""
    passes: list[float] = []
    stepped = Repair.stepped

    def counted(self: Repair, *args: Any) -> bool:
        over = stepped(self, *args)
        passes.extend([time.monotonic()] if over else [])
        return over

    monkeypatch.setattr(Repair, "stepped", counted)
    return passes


def frequent_passes(monkeypatch: pytest.MonkeyPatch, every_s: float = 0.5) -> None:
    """Make a leader's repair passes ``every_s`` apart, however long a pass takes: a pass
    otherwise waits ``repair.DUTY`` (100) times the last one's duration, and on a loaded
    machine a pass of one small SCAN step can take 50 ms, so the next came 5 s later."""
    monkeypatch.setattr(repair, "EVERY_S", every_s)
    monkeypatch.setattr(repair, "DUTY", 0.0)
