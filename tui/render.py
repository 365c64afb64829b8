"""Half-block rendering of a frame into terminal cells: a pure function, array in, lines of cells out.

Each terminal cell shows two vertically stacked pixels with the upper half block ``"▀"``: the foreground colour
is the upper pixel, the background colour the lower one. A terminal cell is about twice as tall as it is wide,
so one cell = 1 x 2 display pixels keeps square frame pixels square.

Steps (:func:`render_halfblock`):

1. :func:`view_window` fits the frame into ``width x 2*height`` display pixels (aspect kept, letterboxed),
   applies ``zoom`` (>= 1, magnification over the fitted view) and ``center`` (normalised (y, x) in [0, 1] of
   the frame), and picks, by nearest neighbour, one frame pixel per display pixel.
2. Contrast: the 1st/99th percentiles of the sampled pixels (a subsample of at most ``width * 2*height``
   pixels of the visible part, so the stretch follows zoom) or fixed ``limits``, mapped linearly onto
   ``levels`` palette entries.
3. Runs of equal (upper, lower) cells become one :class:`rich.segment.Segment`; styles come from a cache.

Cost is independent of the frame size beyond the gather (``O(width * height)``): about 1 ms for a 60 x 40
cell view of a 1280 x 944 frame (``benchmarks/bench_tui.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

__all__ = ["PALETTES", "Window", "view_window", "picture_window", "clamp_center", "palette_rgb", "quantize",
           "render_halfblock", "message_lines"]

PALETTES = ("gray", "confidence")
"""``gray``: black -> white; ``confidence``: red (0, low) -> yellow -> green (1, high)."""

UPPER = "\u2580"  # ▀
LOWER = "\u2584"  # ▄


@dataclass(frozen=True)
class Window:
    """Where a frame lands in the view, in display pixels (1 cell = 1 x 2 display pixels).

    Attributes:
        rows: (n_rows,) frame row index of each displayed pixel row (int64).
        cols: (n_cols,) frame column index of each displayed pixel column (int64).
        pad_top, pad_left: blank display pixels above / left of the image (letterbox).
        display_h, display_w: size of the view, display pixels (``2*height``, ``width``).
        region: visible part of the frame ``(y0, x0, y1, x1)``, frame pixels (floats, y1/x1 exclusive).
        center: the centre actually used (clamped so the view stays on the frame), normalised (y, x).
        scale: display pixels per frame pixel.
    """

    rows: np.ndarray
    cols: np.ndarray
    pad_top: int
    pad_left: int
    display_h: int
    display_w: int
    region: tuple[float, float, float, float]
    center: tuple[float, float]
    scale: float


def _axis(n_frame: int, n_display: int, scale: float, center: float) -> tuple[np.ndarray, int, float, float, float]:
    """Indices along one axis: (indices, pad, first visible, last visible (exclusive), centre used)."""
    visible = n_display / scale  # frame pixels that fit into the view
    if visible >= n_frame:  # the whole axis fits: centre it
        shown = max(1, min(n_display, int(round(n_frame * scale))))
        pad = (n_display - shown) // 2
        idx = np.minimum(((np.arange(shown) + 0.5) * (n_frame / shown)).astype(np.int64), n_frame - 1)
        return idx, pad, 0.0, float(n_frame), 0.5
    half = visible / 2
    c = min(max(center * n_frame, half), n_frame - half)
    start = c - half
    idx = np.clip((start + (np.arange(n_display) + 0.5) / scale).astype(np.int64), 0, n_frame - 1)
    return idx, 0, start, start + visible, c / n_frame


def view_window(shape: Sequence[int], width: int, height: int, *, zoom: float = 1.0,
                center: tuple[float, float] = (0.5, 0.5)) -> Window:
    """The nearest-neighbour sampling of an ``(H, W)`` frame for a ``width x height`` cell view of half blocks.

    Args:
        shape: frame shape (H, W), pixels.
        width, height: view size in cells (>= 1); the view is ``width x 2*height`` display pixels.
        zoom: magnification over the fitted view, >= 1 (clamped).
        center: normalised (y, x) frame position at the view's centre; clamped so the view stays on the frame.
    """
    if int(shape[0]) < 1 or int(shape[1]) < 1 or width < 1 or height < 1:
        raise ValueError(f"view_window: need a non-empty frame and view, got frame {shape}, view {width}x{height}")
    return picture_window(shape, 2 * int(height), int(width), zoom=zoom, center=center)


def picture_window(shape: tuple[int, int], height_px: int, width_px: int, *, zoom: float = 1.0,
                   center: tuple[float, float] = (0.5, 0.5)) -> Window:
    """The nearest-neighbour sampling of an (H, W) frame for a picture of ``height_px x width_px`` screen pixels:
    fitted (aspect kept) at ``zoom`` 1, magnified ``zoom`` times around ``center`` (normalised (y, x))."""
    frame_h, frame_w = int(shape[0]), int(shape[1])
    if min(frame_h, frame_w, height_px, width_px) < 1:
        raise ValueError(f"picture_window: need a non-empty frame and picture, got {shape}, {height_px}x{width_px}")
    scale = min(width_px / frame_w, height_px / frame_h) * max(1.0, float(zoom))
    rows, pad_top, y0, y1, cy = _axis(frame_h, int(height_px), scale, float(center[0]))
    cols, pad_left, x0, x1, cx = _axis(frame_w, int(width_px), scale, float(center[1]))
    return Window(rows, cols, pad_top, pad_left, int(height_px), int(width_px), (y0, x0, y1, x1), (cy, cx), scale)


def clamp_center(center: tuple[float, float], zoom: float) -> tuple[float, float]:
    """Keep a pan centre where a view at ``zoom`` still shows frame (normalised coordinates)."""
    half = 0.5 / max(1.0, zoom)
    return (min(max(center[0], half), 1 - half), min(max(center[1], half), 1 - half))


def palette_rgb(name: str, levels: int) -> list[tuple[int, int, int]]:
    """``levels`` RGB colours of palette ``name`` (one of :data:`PALETTES`), from low to high."""
    if name not in PALETTES:
        raise ValueError(f"palette must be one of {', '.join(PALETTES)}; got {name!r}")
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    out = []
    for k in range(levels):
        f = k / (levels - 1)
        if name == "gray":
            v = int(round(255 * f))
            out.append((v, v, v))
        else:  # red -> yellow -> green
            out.append((int(round(220 * min(1.0, 2 - 2 * f))), int(round(200 * min(1.0, 2 * f))), 40))
    return out


_STYLE_CACHE: dict[tuple[str, int], list[tuple[str, Style | None]]] = {}


def _cell_table(palette: str, levels: int) -> list[tuple[str, Style | None]]:
    """(text, style) of every (upper, lower) pair; index ``upper * (levels + 1) + lower``, ``levels`` = blank."""
    key = (palette, levels)
    table = _STYLE_CACHE.get(key)
    if table is None:
        colours = [Color.from_rgb(*rgb) for rgb in palette_rgb(palette, levels)]
        table = []
        for up in range(levels + 1):
            for lo in range(levels + 1):
                if up < levels and lo < levels:
                    table.append((UPPER, Style(color=colours[up], bgcolor=colours[lo])))
                elif up < levels:
                    table.append((UPPER, Style(color=colours[up])))
                elif lo < levels:
                    table.append((LOWER, Style(color=colours[lo])))
                else:
                    table.append((" ", None))
        _STYLE_CACHE[key] = table
    return table


def quantize(values: np.ndarray, levels: int, limits: tuple[float, float] | None = None,
             percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """Map ``values`` linearly onto palette indices 0..levels-1 (int64), clipping.

    The range is ``limits`` (low, high) or the ``percentiles`` of the finite values; NaN becomes 0.
    """
    v = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(v)
    if limits is None:
        if not finite.any():
            return np.zeros(v.shape, np.int64)
        lo, hi = (float(p) for p in np.percentile(v[finite] if not finite.all() else v, percentiles))
    else:
        lo, hi = float(limits[0]), float(limits[1])
    span = hi - lo
    if not span > 0:
        span = 1.0
    q = (np.where(finite, v, lo) - lo) * ((levels - 1) / span) + 0.5
    return np.clip(q, 0, levels - 1).astype(np.int64)


def render_halfblock(frame: np.ndarray, width: int, height: int, *, zoom: float = 1.0,
                     center: tuple[float, float] = (0.5, 0.5), limits: tuple[float, float] | None = None,
                     palette: str = "gray", levels: int = 64) -> tuple[list[Strip], Window]:
    """Render a 2-D frame as ``height`` lines of ``width`` half-block cells.

    Args:
        frame: (H, W) array of any real dtype (intensities; NaN shows as the low end).
        width, height: view size in cells.
        zoom, center: see :func:`view_window`.
        limits: fixed (low, high) intensity range, or None for a 1-99 percentile stretch of the sampled pixels.
        palette: one of :data:`PALETTES`.
        levels: palette entries (2..256); styles are cached per (palette, levels).

    Returns:
        (strips, window): ``height`` strips, each exactly ``width`` cells, and the sampling used.
    """
    data = np.asarray(frame)
    if data.ndim != 2:
        raise ValueError(f"render_halfblock: frame must be 2-D (H, W), got shape {data.shape}")
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must lie in 2..256, got {levels}")
    win = view_window(data.shape, width, height, zoom=zoom, center=center)
    sampled = data[win.rows[:, None], win.cols[None, :]]
    q = quantize(sampled, levels, limits)
    blank = levels
    grid = np.full((win.display_h, win.display_w), blank, np.int64)
    grid[win.pad_top:win.pad_top + q.shape[0], win.pad_left:win.pad_left + q.shape[1]] = q
    codes = grid[0::2] * (levels + 1) + grid[1::2]  # (height, width)
    table = _cell_table(palette, levels)
    strips = []
    for row in codes:
        cuts = np.flatnonzero(row[1:] != row[:-1]) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(row)]
        values = row[starts].tolist()
        segments = []
        for start, end, code in zip(starts, ends, values):
            text, style = table[code]
            segments.append(Segment(text * (end - start), style))
        strips.append(Strip(segments, width))
    return strips, win


def message_lines(text: str, width: int, height: int, style: Style | None = None) -> list[Strip]:
    """``height`` strips of ``width`` cells with ``text`` centred (for "waiting for frames" and the like)."""
    lines = [Strip.blank(width) for _ in range(max(0, height))]
    if height > 0 and width > 0:
        shown = text[:width]
        left = max(0, (width - len(shown)) // 2)
        lines[height // 2] = Strip([Segment(" " * left), Segment(shown, style),
                                    Segment(" " * (width - left - len(shown)))], width)
    return lines

