"""Charts as server-rendered SVG: axes with ticks and units, a legend, no JavaScript library.

The page works offline and loads nothing from elsewhere; a chart is plain markup the browser draws.
"""

from __future__ import annotations

import math
import time
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 48
# Colours told apart by people with the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < high - step * 1e-9:  # the last tick is at or above `high`: every point fits
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label(value: float) -> str:
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if abs(value) >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _time_label(seconds: float, span: float) -> str:
    fmt = "%H:%M" if span <= 2 * 86_400 else "%m-%d"
    return time.strftime(fmt, time.gmtime(seconds))


def _frame(x_label: str, y_label: str, y_ticks: list[float], y_of) -> list[str]:
    parts = [
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" class="axis"/>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" class="axis"/>',
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 22}" class="axis-label">{escape(x_label)}</text>',
        f'<text x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" class="axis-label" '
        f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>',
    ]
    for tick in y_ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_label(tick)}</text>')
    return parts


def _legend(names: list[str]) -> str:
    items = "".join(
        f'<span class="legend-item"><span class="swatch swatch-{i % len(PALETTE)}"></span>{escape(name)}</span>'
        for i, name in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def _svg(parts: list[str], title: str) -> str:
    return (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(parts)}</svg>'
    )


def line_chart(
    series: dict[str, list[tuple[float, float]]], *, x_label: str, y_label: str, time_axis: bool = True
) -> Markup:
    """One line per series of (x, y) points; x in unix seconds when `time_axis`."""
    points = [p for values in series.values() for p in values]
    if not points:
        return Markup('<p class="empty">No data for this period yet.</p>')
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    if x_high == x_low:
        x_high = x_low + 1
    y_ticks = nice_ticks(0.0, max(max(p[1] for p in points), 1.0))
    y_top = y_ticks[-1]

    def x_of(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * (WIDTH - LEFT - RIGHT)

    def y_of(y: float) -> float:
        return HEIGHT - BOTTOM - y / y_top * (HEIGHT - TOP - BOTTOM)

    parts = _frame(x_label, y_label, y_ticks, y_of)
    for i in range(5):
        x = x_low + (x_high - x_low) * i / 4
        text = _time_label(x, x_high - x_low) if time_axis else _label(x)
        parts.append(
            f'<text x="{x_of(x):.1f}" y="{HEIGHT - BOTTOM + 16}" class="tick" text-anchor="middle">{text}</text>'
        )
    for i, (name, values) in enumerate(series.items()):
        if not values:
            continue
        path = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in sorted(values))
        colour = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(name)}</title></polyline>"
        )
    return Markup(_svg(parts, f"{y_label} by {x_label}") + _legend(list(series)))


def stacked_bars(categories: list[str], series: dict[str, list[float]], *, x_label: str, y_label: str) -> Markup:
    """One bar per category, each series stacked on the previous ones."""
    if not categories:
        return Markup('<p class="empty">No data for this period yet.</p>')
    totals = [sum(values[i] for values in series.values()) for i in range(len(categories))]
    y_ticks = nice_ticks(0.0, max(max(totals), 1.0))
    y_top = y_ticks[-1]

    def y_of(y: float) -> float:
        return HEIGHT - BOTTOM - y / y_top * (HEIGHT - TOP - BOTTOM)

    parts = _frame(x_label, y_label, y_ticks, y_of)
    slot = (WIDTH - LEFT - RIGHT) / len(categories)
    bar = max(1.0, slot * 0.7)
    every = max(1, math.ceil(len(categories) / 8))  # at most ~8 category labels
    for c, category in enumerate(categories):
        x = LEFT + c * slot + (slot - bar) / 2
        base = 0.0
        for i, (name, values) in enumerate(series.items()):
            value = values[c]
            if value:
                top, bottom = y_of(base + value), y_of(base)
                colour = PALETTE[i % len(PALETTE)]
                parts.append(
                    f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar:.1f}" height="{bottom - top:.1f}" fill="{colour}">'
                    f"<title>{escape(category)}: {escape(name)} {_label(value)}</title></rect>"
                )
                base += value
        if c % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" class="tick" text-anchor="middle">'
                f"{escape(category)}</text>"
            )
    return Markup(_svg(parts, f"{y_label} by {x_label}") + _legend(list(series)))
