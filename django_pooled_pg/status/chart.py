"""The status page's chart: leased/idle/waiting of all processes over the recent past, as
inline SVG (no JavaScript library, nothing fetched from elsewhere)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

__all__ = ["SERIES", "combine_history", "svg_chart"]

#: (name, colour) of the lines, in the order of a sample's values after its time.
SERIES = (("leased", "#d9480f"), ("idle", "#2b8a3e"), ("waiting", "#1c7ed6"))


def combine_history(rings: Sequence[Sequence[Sequence[float]]], interval: float) -> list[list]:
    """Add the processes' samples ([time, leased, idle, waiting], oldest first) up on one
    time grid of ``interval`` steps. Processes publish at different instants, so each one
    counts with its latest sample at or before a grid point, if that sample is recent
    (within two intervals); a process contributes nothing before its first sample.
    """
    samples = [ring for ring in rings if ring]
    if not samples:
        return []
    start = min(ring[0][0] for ring in samples)
    end = max(ring[-1][0] for ring in samples)
    steps = min(int((end - start) / interval) + 1, 2000)
    grid = [end - (steps - 1 - i) * interval for i in range(steps)]
    combined = []
    positions = [0] * len(samples)
    for t in grid:
        values = [0, 0, 0]
        for k, ring in enumerate(samples):
            i = positions[k]
            while i + 1 < len(ring) and ring[i + 1][0] <= t + 1e-6:
                i += 1
            positions[k] = i
            sample = ring[i]
            if sample[0] <= t + 1e-6 and t - sample[0] <= 2 * interval:
                for j in range(3):
                    values[j] += sample[1 + j]
        combined.append([round(t, 1), *values])
    return combined


def svg_chart(
    history: Sequence[Sequence[float]], width: int = 560, height: int = 120
) -> SafeString:
    """A small line chart of a combined history; an empty string without two samples."""
    if len(history) < 2:
        return mark_safe("")
    left, right, top, bottom = 34, 8, 8, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    t0, t1 = history[0][0], history[-1][0]
    top_value = max(1, max(max(sample[1:4]) for sample in history))
    top_value = _nice_ceiling(top_value)

    def x(t: float) -> float:
        return left + (t - t0) / ((t1 - t0) or 1) * plot_w

    def y(value: float) -> float:
        return top + plot_h - value / top_value * plot_h

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f"<title>leased, idle and waiting over the last {_span(t1 - t0)}</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        f'stroke="#ccc"/>',
    ]
    for value in (0, top_value / 2, top_value):
        parts.append(
            f'<text x="{left - 4}" y="{y(value) + 4:.1f}" text-anchor="end" '
            f'font-size="10">{value:g}</text>'
        )
    parts.append(
        f'<text x="{left}" y="{height - 5}" font-size="10">-{escape(_span(t1 - t0))}</text>'
        f'<text x="{width - right}" y="{height - 5}" font-size="10" '
        f'text-anchor="end">now</text>'
    )
    for index, (name, colour) in enumerate(SERIES):
        points = " ".join(f"{x(s[0]):.1f},{y(s[1 + index]):.1f}" for s in history)
        parts.append(
            f'<polyline class="series-{name}" fill="none" stroke="{colour}" '
            f'stroke-width="1.6" points="{points}"/>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _nice_ceiling(value: float) -> float:
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value  # pragma: no cover


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def legend() -> list[dict[str, Any]]:
    return [{"name": name, "colour": colour} for name, colour in SERIES]
