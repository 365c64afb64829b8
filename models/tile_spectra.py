"""Overlapping analysis tiles for per-frequency merging (pure: arrays in, arrays out).

An image is cut into ``T x T`` tiles at stride ``T/2`` and windowed by a periodic Hann window whose copies
shifted by ``T/2`` sum to exactly 1, so windowed tiles overlap-add back to the image with no synthesis window
(the tiling of Hasinoff et al. 2016, Sec. 5; :mod:`.fusion`'s spectral merge). Here: the window, a strided view
of the tiles, their overlap-add, the spreading of one value per tile over the image with the window, and the
noise gain of a Gaussian low-pass.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

__all__ = ["analysis_window", "tile_view", "overlap_add", "window_interpolate", "window_value_at",
           "blur_noise_gain2"]


def analysis_window(tile: int) -> np.ndarray:
    """(tile, tile) float32 ``w(y) w(x)`` with ``w(x) = 1/2 - 1/2 cos(2π (x + 1/2) / T)``: a periodic Hann window
    whose copies shifted by ``T/2`` sum to exactly 1 (``w(x) + w(x + T/2) = 1``), so overlap-adding windowed tiles
    at stride ``T/2`` gives the image back without a synthesis window."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(tile) + 0.5) / tile)
    return np.outer(w, w).astype(np.float32)


def tile_view(padded: np.ndarray, tile: int) -> np.ndarray:
    """Read-only view (ny, nx, T, T) of the ``T x T`` tiles of ``padded`` at stride ``T/2``."""
    return sliding_window_view(padded, (tile, tile))[::tile // 2, ::tile // 2]


def overlap_add(tiles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sum the (ny, nx, T, T) ``tiles`` at stride ``T/2`` into a (``(ny + 1)·T/2``, ``(nx + 1)·T/2``) = ``shape``
    array: four parity groups (tiles of equal ``(iy mod 2, ix mod 2)`` abut without overlapping), each placed by
    one reshape."""
    ny, nx, t = tiles.shape[:3]
    s = t // 2
    out = np.zeros(shape, dtype=tiles.dtype)
    for p in (0, 1):
        for q in (0, 1):
            group = tiles[p::2, q::2]
            a, b = group.shape[:2]
            out[p * s:p * s + a * t, q * s:q * s + b * t] += group.transpose(0, 2, 1, 3).reshape(a * t, b * t)
    return out


def window_interpolate(values: np.ndarray, shape: tuple[int, int], tile: int) -> np.ndarray:
    """``overlap_add(values[..., None, None] · w)`` without building the tiles: one number per tile (ny, nx)
    spread over its tile with the analysis window and summed, float32 ``shape``. Separable: along an axis, the
    pixels of block ``j`` (``j·T/2`` to ``(j + 1)·T/2``) lie in tiles ``j - 1`` and ``j``, with weights the two
    halves of the 1-D window."""
    s = tile // 2
    w1 = (0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(tile) + 0.5) / tile)).astype(np.float32)
    v = np.pad(values.astype(np.float32), 1)  # tiles -1 and n: zero weight

    def spread(a: np.ndarray) -> np.ndarray:  # along the last axis: (..., n + 2) -> (..., (n + 1)·s)
        out = a[..., :-1, None] * w1[s:] + a[..., 1:, None] * w1[:s]
        return out.reshape(*a.shape[:-1], -1)

    rows = spread(v[1:-1])  # (ny, (nx + 1)·s)
    cols = spread(np.pad(rows, ((1, 1), (0, 0))).T)  # ((nx + 1)·s, (ny + 1)·s)
    return cols.T[:shape[0], :shape[1]]


def window_value_at(values: np.ndarray, ys: np.ndarray, xs: np.ndarray, tile: int) -> np.ndarray:
    """:func:`window_interpolate` at the padded-grid pixels ``(ys, xs)`` only (1-D int arrays, each at least
    ``T/2`` inside: every such pixel lies in tiles ``j - 1`` and ``j`` along each axis, ``j = index // (T/2)``)."""
    s = tile // 2
    w1 = 0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(tile) + 0.5) / tile)
    jy, ry = np.divmod(ys, s)
    jx, rx = np.divmod(xs, s)
    out = np.zeros(ys.shape)
    for dy, wy in ((0, w1[ry]), (-1, w1[ry + s])):
        for dx, wx in ((0, w1[rx]), (-1, w1[rx + s])):
            out += wy * wx * values[jy + dy, jx + dx]
    return out


def blur_noise_gain2(sigma_px: float) -> float:
    """``Σ G²`` of the 2-D Gaussian of ``sigma_px`` (1 at 0): the factor by which it lowers white noise's
    variance."""
    if sigma_px <= 0:
        return 1.0
    delta = np.zeros(2 * int(4 * sigma_px + 0.5) + 1)
    delta[delta.size // 2] = 1.0
    return float(np.sum(ndimage.gaussian_filter1d(delta, sigma_px, mode="constant") ** 2)) ** 2
