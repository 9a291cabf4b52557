"""Line charts drawn with Pillow (no matplotlib): the run folder's ``charts/loss.png`` and
``charts/quality.png`` (:mod:`napari_segrep.engine.callbacks.charts`).  numpy and Pillow only.

A chart is a title over one or more panels stacked vertically, sharing the x axis; each panel
has its y label, ticks at round numbers, grid lines, a legend, and dashed lines at the epoch
boundaries.  Non-finite points are skipped (a line breaks there), never drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Panel", "Series", "draw_chart", "nice_ticks", "png_bytes"]

#: Line colours (colour-blind safe, Okabe-Ito), in the order series are given.
COLOURS = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (0, 0, 0),
]
_GRID = (225, 225, 225)
_AXIS = (60, 60, 60)
_EPOCH = (170, 170, 170)


@dataclass
class Series:
    """One line: ``label`` in the legend, points ``(x, y)``; ``markers`` draws a dot at each
    point (for a few points, e.g. one per epoch)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    markers: bool = False


@dataclass
class Panel:
    """One plot area: its series, the y axis's label, an optional fixed y range, a dotted
    horizontal reference line ``(y, label)``."""

    ylabel: str
    series: list[Series] = field(default_factory=list)
    ylim: tuple[float, float] | None = None
    reference: tuple[float, str] | None = None


@lru_cache(maxsize=8)
def _font(size: int):
    """Pillow's built-in font at ``size`` (scalable since Pillow 10.1), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow, or one built without FreeType
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, n: int = 5, *, min_step: float = 0.0) -> list[float]:
    """About ``n`` round tick values (1, 2 or 5 times a power of ten apart, at least
    ``min_step``) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = max(next(m * power for m in (1, 2, 5, 10) if m * power >= raw), min_step)
    first = math.floor(lo / step + 1e-9) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        if value >= lo - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float, ticks: Sequence[float]) -> str:
    """A tick's text: as few digits as tell the ticks apart; scientific for tiny or huge."""
    if value == 0:
        return "0"
    span = max(abs(t) for t in ticks) if ticks else abs(value)
    if span >= 1e5 or span < 1e-3:
        return f"{value:.1e}"
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value)
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _finite_range(values: list[float]) -> tuple[float, float] | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def draw_chart(
    title: str,
    panels: Sequence[Panel],
    *,
    xlabel: str,
    epoch_bounds: Sequence[float] = (),
    size: tuple[int, int] = (1000, 700),
    note: str = "",
) -> Image.Image:
    """The chart as an RGB image of ``size`` (width, height).

    Parameters
    ----------
    title : str
        Drawn at the top.
    panels : sequence of Panel
        Stacked top to bottom; they share the x range (all their finite points).
    xlabel : str
        Under the bottom panel.
    epoch_bounds : sequence of float
        x positions of epoch ends: dashed vertical lines, labelled with the epoch number
        (``"epoch 1"``...) in the top panel when they are few enough to read.
    note : str
        A line of small text under the title (e.g. what the run is).
    """
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    title_font, font, small = _font(22), _font(15), _font(13)
    draw.text((width / 2, 12), title, fill=(0, 0, 0), font=title_font, anchor="mt")
    top = 44
    if note:
        draw.text((width / 2, top), note, fill=(90, 90, 90), font=small, anchor="mt")
        top += 20
    xs = [float(v) for p in panels for s in p.series for v in s.x]
    xs += [float(v) for v in epoch_bounds]
    x_range = _finite_range(xs) or (0.0, 1.0)
    x_lo, x_hi = (min(x_range[0], 0.0), x_range[1]) if xs else (0.0, 1.0)
    left, right, bottom_space = 90, 24, 56
    gap = 26  # between panels; each panel's legend sits in the band above it
    top += gap
    n = max(len(panels), 1)
    panel_h = (height - top - bottom_space - gap * (n - 1)) / n
    x_ticks = nice_ticks(x_lo, x_hi, 8, min_step=1.0)  # steps and epochs: whole numbers

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)

    for k, panel in enumerate(panels):
        y0 = top + k * (panel_h + gap)
        y1 = y0 + panel_h
        ys = [float(v) for s in panel.series for v in s.y]
        y_lo, y_hi = panel.ylim or _finite_range(ys) or (0.0, 1.0)
        y_ticks = nice_ticks(y_lo, y_hi, 5)

        def py(y: float, y_lo=y_lo, y_hi=y_hi, y0=y0, y1=y1) -> float:
            return y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0)

        for t in y_ticks:  # grid and y labels
            draw.line([(left, py(t)), (width - right, py(t))], fill=_GRID)
            draw.text((left - 6, py(t)), _label(t, y_ticks), fill=_AXIS, font=small, anchor="rm")
        for t in x_ticks:
            draw.line([(px(t), y0), (px(t), y1)], fill=_GRID)
        readable = len(epoch_bounds) <= 12
        for e, xb in enumerate(epoch_bounds, start=1):
            if not math.isfinite(xb):
                continue
            _dashed(draw, px(xb), y0, y1, _EPOCH)
            if k == 0 and readable:
                draw.text((px(xb) - 3, y0 + 3), f"epoch {e}", fill=_EPOCH, font=small, anchor="rt")
        if panel.reference is not None and math.isfinite(panel.reference[0]):
            ry, rlabel = panel.reference
            if y_lo <= ry <= y_hi:
                for xa in np.arange(left, width - right, 4):
                    draw.point((float(xa), py(ry)), fill=_AXIS)
                draw.text(
                    (width - right - 4, py(ry) - 3), rlabel, fill=_AXIS, font=small, anchor="rb"
                )
        for s, series in enumerate(panel.series):  # lines broken at non-finite points
            colour = COLOURS[s % len(COLOURS)]
            run: list[tuple[float, float]] = []
            for x, y in zip(series.x, series.y, strict=True):
                x, y = float(x), float(y)
                if math.isfinite(x) and math.isfinite(y):
                    run.append((px(x), py(min(max(y, y_lo), y_hi))))
                    continue
                _polyline(draw, run, colour, series.markers)
                run = []
            _polyline(draw, run, colour, series.markers)
        draw.rectangle([left, y0, width - right, y1], outline=_AXIS)
        label_box = Image.new("RGBA", (int(panel_h), 22), (255, 255, 255, 0))  # rotated y label
        ImageDraw.Draw(label_box).text(
            (panel_h / 2, 11), panel.ylabel, fill=(0, 0, 0), font=font, anchor="mm"
        )
        rotated = label_box.rotate(90, expand=True)
        image.paste(rotated, (6, int(y0)), rotated)
        _legend(draw, panel, width - right, y0 - 4, small)
    bottom = top + n * panel_h + (n - 1) * gap
    for t in x_ticks:
        draw.text((px(t), bottom + 6), _label(t, x_ticks), fill=_AXIS, font=small, anchor="mt")
    draw.text(
        (left + (width - left - right) / 2, height - 8),
        xlabel,
        fill=(0, 0, 0),
        font=font,
        anchor="mb",
    )
    return image


def _dashed(draw: ImageDraw.ImageDraw, x: float, y0: float, y1: float, colour) -> None:
    y = y0
    while y < y1:
        draw.line([(x, y), (x, min(y + 6, y1))], fill=colour)
        y += 10


def _polyline(draw: ImageDraw.ImageDraw, points, colour, markers: bool) -> None:
    if len(points) > 1:
        draw.line(points, fill=colour, width=2, joint="curve")
    if markers or len(points) == 1:
        for x, y in points:
            draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=colour)


def _legend(draw: ImageDraw.ImageDraw, panel: Panel, right: float, y: float, font) -> None:
    """The series' names in a row ending at ``right``, their bottom at ``y`` (the band above
    the panel: no line is ever hidden)."""
    x = right
    for s in reversed(range(len(panel.series))):
        label = panel.series[s].label
        x -= font.getlength(label)
        draw.text((x, y), label, fill=(0, 0, 0), font=font, anchor="lb")
        colour = COLOURS[s % len(COLOURS)]
        draw.line([(x - 26, y - 6), (x - 6, y - 6)], fill=colour, width=3)
        x -= 44


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG file contents."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
