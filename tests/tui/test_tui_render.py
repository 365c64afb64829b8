"""The half-block renderer (:mod:`refscope.tui.render`) against known answers, and its speed."""
from __future__ import annotations

import time

import numpy as np
import pytest

from refscope.tui.render import LOWER, UPPER, clamp_center, palette_rgb, quantize, render_halfblock, view_window


def cells(strip):
    """(char, fg rgb, bg rgb) per cell of a strip."""
    out = []
    for segment in strip:
        style = segment.style
        fg = style.color.triplet if style is not None and style.color is not None else None
        bg = style.bgcolor.triplet if style is not None and style.bgcolor is not None else None
        for ch in segment.text:
            out.append((ch, tuple(fg) if fg else None, tuple(bg) if bg else None))
    return out


def test_horizontal_gradient_maps_columns_to_gray_levels():
    frame = np.tile(np.arange(8, dtype=np.float32), (4, 1))  # 4 x 8: columns 0..7
    strips, win = render_halfblock(frame, 8, 2, limits=(0, 7), levels=8)
    assert len(strips) == 2 and all(s.cell_length == 8 for s in strips)
    gray = palette_rgb("gray", 8)
    for strip in strips:
        assert cells(strip) == [(UPPER, gray[k], gray[k]) for k in range(8)]
    assert win.region == (0.0, 0.0, 4.0, 8.0) and win.pad_top == 0 and win.pad_left == 0


def test_vertical_gradient_puts_two_rows_in_one_cell():
    frame = np.repeat(np.arange(4, dtype=np.float32)[:, None], 4, axis=1)  # rows 0..3
    strips, _ = render_halfblock(frame, 4, 2, limits=(0, 3), levels=4)
    gray = palette_rgb("gray", 4)
    assert cells(strips[0]) == [(UPPER, gray[0], gray[1])] * 4  # fg = upper pixel row, bg = lower
    assert cells(strips[1]) == [(UPPER, gray[2], gray[3])] * 4


def test_letterbox_keeps_aspect_and_centres():
    frame = np.ones((10, 10), np.float32)
    strips, win = render_halfblock(frame, 20, 5, levels=4)  # 20 x 10 display px: a 10 x 10 square, centred
    assert win.pad_left == 5 and win.pad_top == 0 and len(win.cols) == 10
    row = cells(strips[0])
    assert [c[0] for c in row[:5]] == [" "] * 5 and row[5][0] == UPPER and row[15][0] == " "
    _, tall = render_halfblock(np.ones((4, 40), np.float32), 40, 3)  # wide frame in a 40 x 6 view
    assert tall.pad_top == 1 and len(tall.rows) == 4
    strips, _ = render_halfblock(np.ones((3, 40), np.float32), 40, 3)  # odd rows: half cells at the edges
    assert {c[0] for c in cells(strips[0])} == {LOWER}


def test_zoom_and_pan_sample_the_visible_region():
    frame = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    win = view_window(frame.shape, 50, 25, zoom=2.0)  # fitted: 0.5 display px per frame px; zoom 2: 1:1
    assert win.region == (25.0, 25.0, 75.0, 75.0) and win.rows[0] == 25 and win.cols[-1] == 74
    corner = view_window(frame.shape, 50, 25, zoom=2.0, center=(0.0, 1.0))  # clamped onto the frame
    assert corner.region == (0.0, 50.0, 50.0, 100.0) and corner.center == (0.25, 0.75)
    assert clamp_center((0.0, 1.0), 2.0) == (0.25, 0.75)


def test_contrast_stretch_uses_percentiles_and_survives_nan_and_constant_frames():
    values = np.linspace(0, 1, 1000, dtype=np.float32)
    values[:5] = -1000  # outliers below the 1st percentile
    q = quantize(values, 16)
    assert q.min() == 0 and q.max() == 15 and q[500] in (7, 8)  # a min-max stretch would put 0.5 at 15
    assert quantize(np.full(10, np.nan), 8).tolist() == [0] * 10
    strips, _ = render_halfblock(np.full((8, 8), 7, np.uint16), 8, 4)
    assert len(strips) == 4


def test_confidence_palette_goes_from_red_to_green():
    low, high = palette_rgb("confidence", 2)
    assert low[0] > low[1] and high[1] > high[0]
    with pytest.raises(ValueError, match="palette"):
        render_halfblock(np.zeros((8, 8)), 4, 4, palette="viridis")


def test_render_speed_of_a_full_frame():
    frame = (np.random.default_rng(0).random((944, 1280)) * 65535).astype(np.uint16)
    render_halfblock(frame, 60, 40)  # warm the style cache
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        render_halfblock(frame, 60, 40)
        times.append(time.perf_counter() - t0)
    median_ms = 1000 * float(np.median(times))
    print(f"render 1280x944 -> 60x40 cells: median {median_ms:.2f} ms")
    assert median_ms < 50  # typically 1-3 ms; generous for loaded CI machines
