"""Patch extraction and overlap-add aggregation on (H, W) images.

A patch of size ``n`` centred at pixel (i, j) covers rows ``i - n//2 .. i + n//2`` (``n`` odd). Images are
reflect-padded by ``n//2`` so that every pixel has a full patch. Patches are returned flattened, row-major,
as ``(N, n*n)`` arrays.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["check_patch_size", "pad_for_patches", "extract_patches", "patch_grid", "aggregate_patches"]


def check_patch_size(patch_size: int) -> int:
    """Return ``patch_size`` if it is an odd integer >= 3, else raise ValueError."""
    if int(patch_size) != patch_size or patch_size < 3 or patch_size % 2 == 0:
        raise ValueError(f"patch size must be an odd integer >= 3, got {patch_size!r}")
    return int(patch_size)


def pad_for_patches(image: np.ndarray, patch_size: int) -> np.ndarray:
    """Reflect-pad (H, W) by ``patch_size // 2`` on every side."""
    half = check_patch_size(patch_size) // 2
    return np.pad(image, half, mode="reflect")


def patch_grid(shape: tuple[int, int], stride: int) -> np.ndarray:
    """Centres (N, 2) of a regular grid with ``stride`` px spacing that always includes the last row/column."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    ys = np.unique(np.r_[np.arange(0, shape[0], stride), shape[0] - 1])
    xs = np.unique(np.r_[np.arange(0, shape[1], stride), shape[1] - 1])
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_y.ravel(), grid_x.ravel()], axis=1)


def extract_patches(image: np.ndarray, patch_size: int, centres: np.ndarray | None = None,
                    *, padded: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """Flattened ``patch_size``² patches of (H, W) at ``centres`` (N, 2) (all pixels when None).

    Returns (N, n*n) in ``dtype``. ``padded`` may pass a precomputed :func:`pad_for_patches` result.
    """
    n = check_patch_size(patch_size)
    if padded is None:
        padded = pad_for_patches(image, n)
    windows = sliding_window_view(padded, (n, n))
    if centres is None:
        return windows.reshape(-1, n * n).astype(dtype)
    centres = np.asarray(centres, dtype=np.intp)
    return windows[centres[:, 0], centres[:, 1]].reshape(len(centres), n * n).astype(dtype)


def aggregate_patches(patches: np.ndarray, centres: np.ndarray, shape: tuple[int, int],
                      weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Overlap-add (N, n*n) patches at ``centres`` into an (H, W) image.

    Returns ``(sum, weight)`` images; the aggregate estimate is ``sum / weight`` where ``weight > 0``.
    Parts of patches falling outside the image are dropped. ``weights`` (N,) scales each patch.
    """
    n = int(round(np.sqrt(patches.shape[1])))
    half = n // 2
    height, width = shape
    acc = np.zeros((height + 2 * half, width + 2 * half), dtype=np.float64)
    cnt = np.zeros_like(acc)
    w = np.ones(len(centres)) if weights is None else np.asarray(weights, dtype=np.float64)
    blocks = np.ascontiguousarray((patches.reshape(-1, n, n) * w[:, None, None]).transpose(1, 2, 0))  # (n, n, N)
    cy = np.asarray(centres[:, 0], dtype=np.intp)
    cx = np.asarray(centres[:, 1], dtype=np.intp)
    flat = cy * acc.shape[1] + cx
    unique = len(np.unique(flat)) == len(flat)
    acc_flat, cnt_flat = acc.reshape(-1), cnt.reshape(-1)
    for dy in range(n):
        for dx in range(n):
            target = flat + (dy * acc.shape[1] + dx)
            if unique:  # distinct centres: each target appears once per offset, plain fancy-index add is exact
                acc_flat[target] += blocks[dy, dx]
                cnt_flat[target] += w
            else:
                np.add.at(acc_flat, target, blocks[dy, dx])
                np.add.at(cnt_flat, target, w)
    return acc[half:half + height, half:half + width], cnt[half:half + height, half:half + width]
