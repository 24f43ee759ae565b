"""Charts as server-side SVG: axes with ticks, labels with units, a legend; no JavaScript, works offline.

Each chart is an ``<svg>`` with ``data-chart`` (its name) and, per series, a
``<path data-series=... data-points=n>``, so tests can count what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

W, H = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 44
COLORS = {"up": "#2e7d32", "down": "#c62828", "a": "#1565c0", "b": "#ef6c00", "band": "#1565c0"}


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str = COLORS["a"]
    # (x, low, high): an interval drawn as a shaded band behind the line.
    band: list[tuple[float, float, float]] = field(default_factory=list)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


class _Frame:
    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, y_min: float | None, y_max: float | None):
        self.x0, self.x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x1 + 0.5
        lo = y_min if y_min is not None else min(ys, default=0.0)
        hi = y_max if y_max is not None else max(ys, default=1.0)
        self.yticks = nice_ticks(lo, hi)
        self.y0, self.y1 = self.yticks[0], self.yticks[-1]

    def x(self, v: float) -> float:
        return LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)


def _axes(f: _Frame, *, name: str, title: str, x_label: str, y_label: str, xticks: list[tuple[float, str]],
          y_format: Callable[[float], str]) -> list[str]:
    out = [(f'<svg class="chart" data-chart="{escape(name)}" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'),
           f'<text class="title" x="{LEFT}" y="16">{escape(title)}</text>']
    for t in f.yticks:
        y = f.y(t)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(y_format(t))}</text>')
    for v, label in xticks:
        x = f.x(v)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{H - BOTTOM}" y2="{H - BOTTOM + 4}"/>'
                   f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{escape(label)}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}"/>'
               f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}"/>'
               f'<text class="label" x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle">'
               f'{escape(x_label)}</text>'
               f'<text class="label" transform="translate(14 {(TOP + H - BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    return out


def _legend(items: list[tuple[str, str]]) -> list[str]:
    out, x = [], W - RIGHT
    for name, color in reversed(items):
        x -= 8 * len(name) + 26
        out.append(f'<rect x="{x}" y="7" width="10" height="10" fill="{color}"/>'
                   f'<text class="legend" x="{x + 14}" y="16">{escape(name)}</text>')
    return out


def _default_xticks(f: _Frame, fmt_x: Callable[[float], str]) -> list[tuple[float, str]]:
    ticks = [t for t in nice_ticks(f.x0, f.x1, 6) if f.x0 <= t <= f.x1]
    return [(t, fmt_x(t)) for t in ticks]


def line_chart(series: Sequence[Series], *, name: str, title: str, x_label: str, y_label: str,
               y_min: float | None = None, y_max: float | None = None,
               x_range: tuple[float, float] | None = None, xticks: list[tuple[float, str]] | None = None, fmt_x: Callable[[float], str] = fmt,
               y_format: Callable[[float], str] = fmt) -> Markup:
    xs = [x for s in series for x, _ in s.points] + list(x_range or ())
    ys = [y for s in series for _, y in s.points] + [v for s in series for _, lo, hi in s.band for v in (lo, hi)]
    f = _Frame(xs, ys, y_min=y_min, y_max=y_max)
    out = _axes(f, name=name, title=title, x_label=x_label, y_label=y_label,
                xticks=xticks if xticks is not None else _default_xticks(f, fmt_x), y_format=y_format)
    for s in series:
        if s.band:
            upper = " ".join(f"{f.x(x):.1f},{f.y(hi):.1f}" for x, _, hi in s.band)
            lower = " ".join(f"{f.x(x):.1f},{f.y(lo):.1f}" for x, lo, _ in reversed(s.band))
            out.append(f'<polygon class="band" fill="{s.color}" points="{upper} {lower}"/>')
        if s.points:
            d = " ".join(f"{'M' if i == 0 else 'L'}{f.x(x):.1f},{f.y(y):.1f}" for i, (x, y) in enumerate(s.points))
            out.append(f'<path class="line" d="{d}" stroke="{s.color}" data-series="{escape(s.name)}" '
                       f'data-points="{len(s.points)}"/>')
            if len(s.points) <= 60:
                out.extend(f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="2.5" fill="{s.color}"><title>'
                           f'{escape(s.name)}: {escape(fmt_x(x))}, {escape(y_format(y))}</title></circle>'
                           for x, y in s.points)
    out.extend(_legend([(s.name, s.color) for s in series]))
    out.append("</svg>")
    return Markup("".join(out))


def stacked_bars(labels: Sequence[str], stacks: Sequence[tuple[str, Sequence[int], str]], *, name: str,
                 title: str, x_label: str, y_label: str) -> Markup:
    """One bar per label, its stacks bottom to top (e.g. thumbs-down under thumbs-up per day)."""
    n = len(labels)
    totals = [sum(values[i] for _, values, _ in stacks) for i in range(n)]
    f = _Frame([0, max(n, 1)], [0, *totals], y_min=0, y_max=None)
    slot = (W - LEFT - RIGHT) / max(n, 1)
    every = max(1, math.ceil(n / 8))
    xticks = [(i + 0.5, labels[i]) for i in range(0, n, every)]
    out = _axes(f, name=name, title=title, x_label=x_label, y_label=y_label, xticks=xticks,
                y_format=lambda v: f"{v:g}")
    for sname, values, color in stacks:
        out.append(f'<g data-series="{escape(sname)}" data-points="{sum(1 for v in values if v)}" fill="{color}">')
        for i, v in enumerate(values):
            if not v:
                continue
            below = sum(vals[i] for s2, vals, _ in stacks[: [s[0] for s in stacks].index(sname)])
            y_top, y_bottom = f.y(below + v), f.y(below)
            out.append(f'<rect x="{LEFT + i * slot + slot * 0.15:.1f}" y="{y_top:.1f}" width="{slot * 0.7:.1f}" '
                       f'height="{max(0.5, y_bottom - y_top):.1f}"><title>{escape(labels[i])}: {v} '
                       f'{escape(sname)}</title></rect>')
        out.append("</g>")
    out.extend(_legend([(s, c) for s, _, c in stacks]))
    out.append("</svg>")
    return Markup("".join(out))
