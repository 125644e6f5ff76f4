"""Small, dependency-free SVG charts for run reports and case explanations.

SVG text is self-contained (no fonts, scripts or external requests), scales on a phone, prints
sharply, and can be inlined into HTML or written as a ``.svg`` file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape as _escape

__all__ = ["line_chart", "bar_chart"]

# characters XML 1.0 does not allow (control characters but tab and line breaks, lone surrogates,
# U+FFFE and U+FFFF): one in a label made the whole SVG unreadable
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """``text`` as SVG text or attribute: markup escaped, characters XML cannot hold as U+FFFD."""
    return _escape(_NOT_XML.sub("\ufffd", str(text)))


PALETTE = ("#1f6fb2", "#d9531e", "#2e8b57", "#8e44ad", "#b8860b", "#555555")
_FONT = 'font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif"'


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    width: int = 640,
    height: int = 400,
    marker: tuple[float, float] | None = None,
    marker_label: str = "",
) -> str:
    """A line chart as an SVG string.

    Args:
        series: legend name -> (x values, y values).
        marker: an (x, y) point to circle (e.g. the selected model on a regularisation path).
    """
    xs = [x for xv, _ in series.values() for x in xv]
    ys = [y for _, yv in series.values() for y in yv if y is not None and math.isfinite(y)]
    if marker:
        xs.append(marker[0])
        ys.append(marker[1])
    if not xs or not ys:
        raise ValueError("line_chart needs at least one point")
    left, right, top, bottom = 64, 20, 40 if title else 16, 52
    pw, ph = width - left - right, height - top - bottom
    xt, yt = _ticks(min(xs), max(xs)), _ticks(min(ys), max(ys))
    x0, x1, y0, y1 = min(xt[0], min(xs)), max(xt[-1], max(xs)), min(yt[0], min(ys)), max(yt[-1], max(ys))
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(title or ylabel)}" {_FONT} font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]
    if title:
        out.append(f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14" font-weight="600">{escape(title)}</text>')
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#777"/>')
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 18}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    if xlabel:
        out.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">{escape(xlabel)}</text>')
    if ylabel:
        out.append(
            f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">{escape(ylabel)}</text>'
        )
    for i, (name, (xv, yv)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(px(x), py(y)) for x, y in zip(xv, yv) if y is not None and math.isfinite(y)]
        if pts:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            out.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.2" fill="{colour}"/>' for a, b in pts)
        ly = top + 14 + 16 * i
        out.append(f'<line x1="{left + pw - 150}" x2="{left + pw - 132}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="3"/>')
        out.append(f'<text x="{left + pw - 126}" y="{ly}">{escape(name)}</text>')
    if marker:
        mx, my = px(marker[0]), py(marker[1])
        out.append(f'<circle cx="{mx:.1f}" cy="{my:.1f}" r="7" fill="none" stroke="#000" stroke-width="1.5"/>')
        if marker_label:
            out.append(f'<text x="{mx + 10:.1f}" y="{my + 16:.1f}">{escape(marker_label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str = "",
    width: int = 560,
    bar_height: int = 22,
    value_format: str = "{:+.2f}",
) -> str:
    """A horizontal bar chart (positive bars right, negative left of a zero line) as an SVG string.

    Used for concept contributions: labels are concept names, values their signed contributions.
    """
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels but {len(values)} values")
    label_w, value_w = int(width * 0.42), 56
    top = 30 if title else 8
    height = top + bar_height * max(1, len(labels)) + 8
    plot_w = width - label_w - value_w - 8
    vmax = max([abs(v) for v in values] + [1e-12])
    has_neg = any(v < 0 for v in values)
    zero = label_w + (plot_w / 2 if has_neg else 0)
    scale = (plot_w / 2 if has_neg else plot_w) / vmax
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(title or "bar chart")}" {_FONT} font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]
    if title:
        out.append(f'<text x="8" y="18" font-size="13" font-weight="600">{escape(title)}</text>')
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = top + i * bar_height
        w = abs(v) * scale
        x = zero if v >= 0 else zero - w
        colour = "#1f6fb2" if v >= 0 else "#d9531e"
        short = lab if len(lab) <= 48 else lab[:47] + "…"
        out.append(f'<text x="{label_w - 6}" y="{y + bar_height * 0.68:.1f}" text-anchor="end"><title>{escape(lab)}</title>{escape(short)}</text>')
        out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{max(w, 0.5):.1f}" height="{bar_height - 6}" fill="{colour}" rx="2"/>')
        out.append(f'<text x="{label_w + plot_w + 6}" y="{y + bar_height * 0.68:.1f}">{escape(value_format.format(v))}</text>')
    out.append(f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="{top}" y2="{height - 8}" stroke="#444"/>')
    out.append("</svg>")
    return "\n".join(out)
