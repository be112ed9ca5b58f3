"""Line charts as inline SVG for the HTML report (:mod:`.report_html`): every point carries an SVG ``<title>``,
so a browser shows its series, step and value on hover; no script, no external resource.

A :class:`Chart` holds one or more series of ``(x, y)`` points; :func:`render_chart` draws it (linear x, linear
or log10 y, five ticks per axis) and returns the ``<figure>`` element as text, with an HTML legend beneath.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from dtr_plugins.core.numbers import fmt

__all__ = ["Chart", "mean_curve", "render_chart"]

#: matplotlib's default colour cycle, so a group keeps one colour in the PNG and in the HTML report
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
WIDTH, HEIGHT = 520, 260
LEFT, RIGHT, TOP, BOTTOM = 62, 12, 10, 38


@dataclass(frozen=True)
class Chart:
    """One panel: ``series`` maps a label to its points ``[(x, y), ...]`` (sorted by x); ``log_y`` draws
    ``log10(y)`` (points with ``y <= 0`` are left out)."""

    title: str
    series: Mapping[str, Sequence[tuple[float, float]]] = field(default_factory=dict)
    x_label: str = "training step"
    y_label: str = ""
    log_y: bool = False


def mean_curve(seed_curves: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Mean over seeds at the steps every seed logged (the PNG plots' rule); ``[]`` when none is shared."""
    curves = [dict(c) for c in seed_curves if c]
    if not curves:
        return []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return [(s, sum(c[s] for c in curves) / len(curves)) for s in steps]


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]


def render_chart(chart: Chart) -> str:
    """The ``<figure>`` of ``chart``: an inline ``<svg>`` (one ``<polyline>`` and one ``<circle>`` with a
    ``<title>`` per point) and a legend; a chart without points says so in words."""
    def y_of(v: float) -> float | None:
        if chart.log_y:
            return math.log10(v) if v > 0 else None
        return v if math.isfinite(v) else None

    series: dict[str, list[tuple[float, float, float]]] = {}
    for label, given in chart.series.items():  # (x, drawn y, value); a value log10 cannot draw is left out
        drawn = ((float(x), y_of(float(y)), float(y)) for x, y in given)
        series[label] = [(x, y, v) for x, y, v in drawn if y is not None]
    points = [p for pts in series.values() for p in pts]
    caption = f"<figcaption>{escape(chart.title)}</figcaption>"
    if not points:
        return f'<figure class="chart">{caption}<p>no values to draw</p></figure>'
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x_ticks = _ticks(x0, x1) if x1 > x0 else [x0]
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 - y0 <= 1e-9 * max(abs(y0), abs(y1), 1e-300):  # one value (up to rounding): one tick, centred
        pad = abs(y0) * 0.05 or 1.0
        y_ticks, y0, y1 = [y0], y0 - pad, y1 + pad
    else:
        y_ticks = _ticks(y0, y1)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" role="img" aria-label="{escape(chart.title)}">',
             f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in y_ticks:
        label = fmt(10 ** t if chart.log_y else t)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 4}" y="{sy(t) + 3:.1f}" text-anchor="end" font-size="10">{label}</text>')
    x_names = {fmt(round(t)) if abs(t) >= 10 else fmt(t): t for t in x_ticks}  # a label once
    for name, t in x_names.items():
        parts.append(f'<text x="{sx(t):.1f}" y="{TOP + ph + 13}" text-anchor="middle" font-size="10">{name}</text>')
    y_label = chart.y_label + (" (log scale)" if chart.log_y else "")
    parts.append(f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 4}" text-anchor="middle" font-size="11">'
                 f'{escape(chart.x_label)}</text>')
    if y_label:
        parts.append(f'<text transform="translate(12 {TOP + ph / 2}) rotate(-90)" text-anchor="middle" '
                     f'font-size="11">{escape(y_label)}</text>')
    legend = []
    for i, (label, pts) in enumerate(series.items()):
        if not pts:
            continue
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y, raw in pts:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
                         f"<title>{escape(label)}: step {fmt(int(x)) if x.is_integer() else fmt(x)}, "
                         f"{escape(chart.y_label or chart.title)} {fmt(raw)}</title></circle>")
        legend.append(f'<li><span class="swatch" style="background:{colour}"></span>{escape(label)}</li>')
    parts.append("</svg>")
    return f'<figure class="chart">{caption}{"".join(parts)}<ul class="legend">{"".join(legend)}</ul></figure>'

