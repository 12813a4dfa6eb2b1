"""Counting the leader's repair passes (``asyncjobs/_scheduling/repair.py``) from a test."""

from __future__ import annotations

import time
from typing import Any

import pytest

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
