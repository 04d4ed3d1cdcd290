"""Per-epoch curves as inline SVG line charts.

Drawn here rather than with matplotlib: every finished run writes a report, and importing and rendering with a
plotting library would cost each run (and each test that trains) about half a second; these few elements cost
milliseconds, are a few kB, and stay sharp at any zoom.
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 390, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 30, 34  # margins: tick labels left and below, the legend above
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")
MARKERS_UP_TO = 40  # epochs: beyond, the points are too close to mark


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (steps of 1, 2, 2.5 or 5 x 10^k) covering [low, high]."""
    if not high > low:
        low, high = low - (abs(low) * 0.1 or 1), high + (abs(high) * 0.1 or 1)
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    return [first + i * step for i in range(round((last - first) / step) + 1)]


def _label(value: float, ticks: list[float]) -> str:
    """A tick's label, with as many decimals as the step between ticks needs (0.25 -> 2, 5 -> 0)."""
    step = ticks[1] - ticks[0]
    decimals = next(d for d in range(8) if abs(round(step, d) - step) <= 1e-9 * step or d == 7)
    return f"{value:.{decimals}f}"


def line_chart(title: str, epochs: list[float], series: dict[str, list[float]], best_epoch: int | None = None) -> str:
    """An SVG chart of each series (name -> one value per epoch; a NaN value has no point) over the epochs, the
    best epoch marked by a dashed line."""
    finite = [v for values in series.values() for v in values if math.isfinite(v)]
    y_ticks = nice_ticks(min(finite), max(finite)) if finite else [0.0, 1.0]
    x_low, x_high = min(epochs), max(epochs)
    if x_high == x_low:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(epoch: float) -> float:
        return LEFT + (epoch - x_low) / (x_high - x_low) * plot_w

    def y(value: float) -> float:
        return TOP + (y_ticks[-1] - value) / (y_ticks[-1] - y_ticks[0]) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>',
    ]
    for tick in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 5}" y="{y(tick) + 4:.1f}" text-anchor="end">{_label(tick, y_ticks)}</text>')
    step = max(1, math.ceil(len(epochs) / 10))
    for epoch in epochs[::step]:
        parts.append(f'<text x="{x(epoch):.1f}" y="{TOP + plot_h + 15}" text-anchor="middle">{epoch:g}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 3}" text-anchor="middle">epoch</text>')
    if best_epoch is not None:
        parts.append(
            f'<line x1="{x(best_epoch):.1f}" x2="{x(best_epoch):.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
            'stroke="#888" stroke-dasharray="4 3"><title>best epoch</title></line>'
        )
    legend_x = LEFT
    for (name, values), color in zip(series.items(), COLORS, strict=False):
        parts += _series(name, [(x(e), y(v)) for e, v in zip(epochs, values, strict=True) if math.isfinite(v)], color)
        parts.append(f'<rect x="{legend_x}" y="9" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="18">{escape(name)}</text>')
        legend_x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _series(name: str, points: list[tuple[float, float]], color: str) -> list[str]:
    """A polyline through the points and, for a few epochs, a dot on each."""
    if not points:
        return []
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    parts = [f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"><title>{escape(name)}</title>']
    parts.append("</polyline>")
    if len(points) <= MARKERS_UP_TO:
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"/>' for px, py in points]
    return parts
