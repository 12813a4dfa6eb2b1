"""The queue page's charts as SVG geometry: jobs ended per minute (stacked by outcome) and
the failure rate, over the last hour. Pure: the template draws what this computes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._producer.insight import MinuteCounts

WIDTH = 600
HEIGHT = 120
OUTCOMES = ("complete", "retry", "failed", "expired", "aborted")
"""Stacked bottom to top; each is a CSS class of its bar."""


@dataclass(frozen=True, slots=True)
class Bar:
    """One outcome's segment of one minute's bar."""

    outcome: str
    x: float
    y: float
    width: float
    height: float
    count: int
    minute: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Both charts of one queue."""

    bars: list[Bar]
    peak: int
    """The busiest minute's total (the top of the throughput chart's scale)."""
    rate_points: str
    """The failure rate as an SVG polyline (minutes with no finished attempt left out)."""
    rate_dots: list[tuple[float, float, str]]
    """(x, y, "HH:MM 12.5 %") of each point of that line."""
    labels: list[tuple[float, str]]
    """(x, "HH:MM") along the time axis."""
    total: dict[str, int]
    failure_rate: float | None
    """Failed attempts (retried or not) over finished attempts, for the whole hour."""


def chart(minutes: list[MinuteCounts]) -> Chart:
    """The charts of ``minutes`` (oldest first)."""
    step = WIDTH / max(1, len(minutes))
    peak = max([sum(m.counts.get(o, 0) for o in OUTCOMES) for m in minutes] + [1])
    bars: list[Bar] = []
    dots: list[tuple[float, float, str]] = []
    total = dict.fromkeys(OUTCOMES, 0)
    for i, minute in enumerate(minutes):
        label = minute.minute.strftime("%H:%M")
        y = float(HEIGHT)
        for outcome in OUTCOMES:
            count = minute.counts.get(outcome, 0)
            total[outcome] += count
            if count:
                height = HEIGHT * count / peak
                y -= height
                bars.append(Bar(outcome, round(i * step + 1, 1), round(y, 1),
                                round(max(step - 2, 1), 1), round(height, 1), count, label))
        rate = minute.failure_rate
        if rate is not None:
            dots.append((round(i * step + step / 2, 1), round(HEIGHT * (1 - rate), 1),
                         f"{label}: {rate * 100:.1f} %"))
    labels = [(round(i * step, 1), minutes[i].minute.strftime("%H:%M"))
              for i in range(0, len(minutes), 15)] if minutes else []
    failed = total["failed"] + total["retry"]
    finished = failed + total["complete"]
    points = " ".join(f"{x},{y}" for x, y, _ in dots)
    return Chart(bars, peak, points, dots, labels, total,
                 failed / finished if finished else None)
