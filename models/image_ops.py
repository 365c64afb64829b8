"""Small array helpers shared by every method: validation, float conversion and interpolation.

All functions take and return 2-D ``float64`` arrays of shape (H, W) in the caller's intensity units
unless stated otherwise. Pixel-edge coordinates are used throughout refscope: pixel ``i`` covers
``[i, i + 1)`` and its centre is at ``i + 0.5``.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from .errors import ImageError

__all__ = ["as_gray_float", "keys_kernel", "upsample_bicubic", "upsample_bicubic_at"]


def as_gray_float(image: np.ndarray, *, name: str = "image", min_size: int = 8) -> np.ndarray:
    """Validate a grayscale image and return it as a float64 (H, W) array.

    Raises :class:`ImageError` for RGB/stacked input, non-finite values, a constant image or an image
    smaller than ``min_size`` pixels on a side. ``name`` is used in the message (e.g. the file name).
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ImageError(f"{name}: is an RGB(A) image of shape {array.shape}; refscope needs one grayscale channel")
    if array.ndim != 2:
        raise ImageError(f"{name}: expected a 2-D grayscale image, got an array of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ImageError(f"{name}: unsupported pixel type {array.dtype}")
    if min(array.shape) < min_size:
        raise ImageError(f"{name}: image of shape {array.shape} is too small (at least {min_size} px per side)")
    out = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        raise ImageError(f"{name}: contains NaN or infinite pixels")
    if float(out.max()) == float(out.min()):
        raise ImageError(f"{name}: is constant (every pixel = {out.flat[0]:g}); there is nothing to register or learn")
    return out


def keys_kernel(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic-convolution kernel (a = -0.5: MATLAB/PIL/OpenCV "bicubic")."""
    ax = np.abs(x)
    return np.where(ax <= 1, (a + 2) * ax**3 - (a + 3) * ax**2 + 1,
                    np.where(ax < 2, a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a, 0.0))


def _bicubic_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) sparse interpolation matrix, pixel-edge aligned, symmetric (half-sample) borders."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(centres).astype(np.intp)
    rows, cols, vals = [], [], []
    for tap in range(-1, 3):
        idx = base + tap
        weight = keys_kernel(centres - idx)
        idx = np.where(idx < 0, -idx - 1, idx)
        idx = np.where(idx >= n_in, 2 * n_in - idx - 1, idx)
        rows.append(np.arange(n_out))
        cols.append(np.clip(idx, 0, n_in - 1))
        vals.append(weight)
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(n_out, n_in))
    return matrix


def upsample_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    """Upsample (H, W) by an integer ``scale`` with Keys bicubic interpolation (a = -0.5), the baseline of
    every super-resolution comparison (Qian et al. 2020; MATLAB ``imresize(..., 'bicubic')``).

    Output pixel ``(y, x)`` of shape (S*H, S*W) samples the input at ``((y + 0.5)/S - 0.5, (x + 0.5)/S - 0.5)``,
    so that the output covers exactly the same field as the input. Borders use half-sample symmetric
    reflection.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    image = np.asarray(image, dtype=np.float64)
    height, width = image.shape
    rows = _bicubic_matrix(height, height * scale)
    cols = _bicubic_matrix(width, width * scale)
    return np.asarray((cols @ (rows @ image).T).T)


def upsample_bicubic_at(image: np.ndarray, scale: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``upsample_bicubic(image, scale)[np.ix_(rows, cols)]`` without computing the whole (S·H, S·W) image.

    ``rows`` / ``cols`` are indices into the output grid (0 <= r < S·H, 0 <= c < S·W). Costs
    O(len(rows)·W + len(rows)·len(cols)) instead of O(S²·H·W) memory; same arithmetic, same values.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    image = np.asarray(image, dtype=np.float64)
    height, width = image.shape
    rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
    for name, index, limit in (("rows", rows, height * scale), ("cols", cols, width * scale)):
        if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= limit)):
            raise ValueError(f"{name} must be a 1-D array of output indices in [0, {limit}), got {index!r}")
    row_matrix = _bicubic_matrix(height, height * scale)[rows]
    col_matrix = _bicubic_matrix(width, width * scale)[cols]
    return np.asarray((col_matrix @ (row_matrix @ image).T).T)
