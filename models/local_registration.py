"""Local (patch-wise) registration of the HR image and the upsampled LR image on a common grid (paper eq. 1).

After global registration both images live on the same grid: ``hr_grid`` is the HR scan resampled onto the LR box
refined S times (:func:`refscope.models.registration.resample_hr_to_lr_grid`) and ``lr_up`` is the LR box upsampled
S times (bicubic). Scans taken minutes apart are distorted locally (drift, charging), so each textured ``n x n``
HR patch is paired with the best-matching LR-up patch within a few grid pixels (paper Sec. III-A, eq. 1 and
Algorithm 1 step 3):

    d*(i, j) = argmax_{|d|_inf <= R}  <P_h(i, j), P_r((i, j) + d)> / (||P_h(i, j)||_2 ||P_r((i, j) + d)||_2)

Eq. 1 in the paper is printed as a ``min`` but the normalised inner product is a similarity and must be maximised.
By default the patches are centred on their means first (Pearson correlation, ``zero_mean=True``), which also
cancels the brightness offset ``b`` of ``LR ~ a * HR + b``; ``zero_mean=False`` is eq. 1 literally.
All coordinates are integer grid indices ``(row, col)`` of the patch centre (grid px).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ImageError

__all__ = ["LocalMatches", "register_local", "matched_patches", "PAPER_VARIANCE_THRESHOLD"]

#: The paper's texture threshold (patch variance 100 on a 0-255 scale) as a fraction of the squared data range.
PAPER_VARIANCE_THRESHOLD = 100.0 / 255.0**2


@dataclass(frozen=True)
class LocalMatches:
    """Result of :func:`register_local`.

    Attributes
    ----------
    centres : (N, 2) int array
        Patch centres (row, col) in ``hr_grid`` (grid px).
    displacements : (N, 2) int array
        ``(i* - i, j* - j)``: the matched ``lr_up`` patch is centred at ``centres + displacements`` (grid px);
        0 for untextured patches.
    scores : (N,) float array
        Normalised inner product of the matched pair (1 = identical up to gain [and offset]).
    textured : (N,) bool array
        Whether the ``lr_up`` patch variance exceeded the threshold (only those were searched).
    patch_size : int
        Patch side ``n`` (odd), grid px.
    """

    centres: np.ndarray
    displacements: np.ndarray
    scores: np.ndarray
    textured: np.ndarray
    patch_size: int

    def __len__(self) -> int:
        return int(self.centres.shape[0])

    def patches(self, hr_grid: np.ndarray, lr_up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The matched ``(hr_patches, lr_patches)``, each (N, n*n); see :func:`matched_patches`."""
        return matched_patches(hr_grid, lr_up, self, self.patch_size)


def _box_sum(a: np.ndarray, n: int) -> np.ndarray:
    """Sums over every ``n x n`` window (valid positions), shape (H-n+1, W-n+1), via an integral image."""
    c = np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]


def register_local(hr_grid: np.ndarray, lr_up: np.ndarray, *, patch_size: int = 9, search_radius: int = 2,
                   variance_threshold: float = PAPER_VARIANCE_THRESHOLD, stride: int = 1,
                   zero_mean: bool = True) -> LocalMatches:
    """Match every ``patch_size`` patch of ``hr_grid`` with the most similar nearby patch of ``lr_up`` (eq. 1).

    Parameters
    ----------
    hr_grid, lr_up : (H, W) arrays
        HR image resampled on the S-times LR grid and the bicubic-upsampled LR image, same shape and grid.
    patch_size : int
        Odd patch side ``n`` in grid px (paper: 9).
    search_radius : int
        Displacements ``d`` with ``max(|d_y|, |d_x|) <= search_radius`` grid px are tried.
    variance_threshold : float
        A patch is textured, and searched, when the variance of its ``lr_up`` patch exceeds
        ``variance_threshold * range**2``, with ``range`` the 99.9th minus the 0.1th percentile of ``lr_up``.
        The default, 100 / 255**2, is the paper's threshold of 100 for 8-bit images. 0 searches every patch.
    stride : int
        Spacing of the patch centres in grid px (1 = every position).
    zero_mean : bool
        Subtract each patch's mean before the inner product (Pearson correlation); False = eq. 1 literally.

    Returns
    -------
    LocalMatches
        Centres are ``c0 + stride * k`` with ``c0 = n//2 + search_radius``, for all positions where the patch and
        every displaced patch fit inside the grid. Untextured patches keep displacement 0 and the score at 0.
        Ties are resolved towards the smallest displacement.

    Raises
    ------
    ImageError
        Mismatched shapes, an even patch size, or a grid too small for one patch plus the search radius.
    """
    hr = np.asarray(hr_grid, dtype=np.float64)
    lr = np.asarray(lr_up, dtype=np.float64)
    n, rad, stride = int(patch_size), int(search_radius), int(stride)
    if hr.ndim != 2 or hr.shape != lr.shape:
        raise ImageError(f"hr_grid {hr.shape} and lr_up {lr.shape} must be 2-D images of the same shape")
    if n < 1 or n % 2 == 0:
        raise ImageError(f"patch_size must be odd and positive, got {patch_size}")
    if rad < 0 or stride < 1:
        raise ImageError(f"search_radius must be >= 0 and stride >= 1, got {search_radius} and {stride}")
    if not (np.all(np.isfinite(hr)) and np.all(np.isfinite(lr))):
        raise ImageError("hr_grid / lr_up contain NaN or infinite pixels")
    half = n // 2
    big_h, big_w = hr.shape
    if min(big_h, big_w) < n + 2 * rad:
        raise ImageError(f"grid {hr.shape} is too small for {n}x{n} patches searched +-{rad} px")
    if zero_mean:                                            # removing global means conditions the sums
        hr, lr = hr - hr.mean(), lr - lr.mean()
    nn = float(n * n)
    # Window statistics at top-left index t (centre t + half), shape (H-n+1, W-n+1).
    s_h, s_l = _box_sum(hr, n), _box_sum(lr, n)
    q_h, q_l = _box_sum(hr * hr, n), _box_sum(lr * lr, n)
    if zero_mean:
        norm_h = np.sqrt(np.maximum(q_h - s_h * s_h / nn, 0.0))
        norm_l = np.sqrt(np.maximum(q_l - s_l * s_l / nn, 0.0))
    else:
        norm_h, norm_l = np.sqrt(q_h), np.sqrt(q_l)
    var_l = np.maximum(q_l - s_l * s_l / nn, 0.0) / nn
    # Centres (top-left indices t = centre - half) on the stride grid, leaving room for the search.
    ty = np.arange(rad, big_h - n + 1 - rad, stride)
    tx = np.arange(rad, big_w - n + 1 - rad, stride)
    gy, gx = np.meshgrid(ty, tx, indexing="ij")

    def at(a: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
        """Values of a window map at the grid top-left indices shifted by (dy, dx) (strided slicing)."""
        return a[ty[0] + dy:ty[-1] + dy + 1:stride, tx[0] + dx:tx[-1] + dx + 1:stride]

    lo, hi = np.percentile(lr, [0.1, 99.9])
    textured = at(var_l) > variance_threshold * (hi - lo) ** 2
    offsets = sorted(((dy, dx) for dy in range(-rad, rad + 1) for dx in range(-rad, rad + 1)),
                     key=lambda d: (d[0] ** 2 + d[1] ** 2, d))
    best = np.zeros(gy.shape)
    best_d = np.zeros(gy.shape + (2,), dtype=np.int64)
    eps = 1e-12 * max(float(norm_h.max()) * float(norm_l.max()), 1e-300)
    for dy, dx in offsets:
        # sum over the window of hr(p) * lr(p + d), for windows whose displaced copy lies inside the grid
        prod = hr[max(-dy, 0):big_h - max(dy, 0), max(-dx, 0):big_w - max(dx, 0)] * \
            lr[max(dy, 0):big_h - max(-dy, 0), max(dx, 0):big_w - max(-dx, 0)]
        cross = at(_box_sum(prod, n), -max(-dy, 0), -max(-dx, 0))
        if zero_mean:
            cross = cross - at(s_h) * at(s_l, dy, dx) / nn
        den = at(norm_h) * at(norm_l, dy, dx)
        score = np.where(den > eps, cross / np.maximum(den, eps), 0.0)
        if dy == 0 and dx == 0:                              # first offset: every patch starts at d = 0
            best = score
            continue
        better = textured & (score > best + 1e-12)
        best = np.where(better, score, best)
        best_d[better] = (dy, dx)
    centres = np.stack([gy.ravel(), gx.ravel()], axis=-1) + half
    return LocalMatches(centres=centres.astype(np.int64), displacements=best_d.reshape(-1, 2),
                        scores=best.ravel(), textured=textured.ravel(), patch_size=n)


_GATHER_BLOCK = 16384
"""Patches gathered per block by :func:`matched_patches`."""


def matched_patches(hr_grid: np.ndarray, lr_up: np.ndarray, matches: LocalMatches, patch_size: int | None = None,
                    *, dtype: np.dtype | type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Extract the matched patch pairs as flattened rows.

    Returns ``(hr_patches, lr_patches)``, each (N, n*n) of ``dtype``: the ``hr_grid`` patch centred at
    ``matches.centres`` and the ``lr_up`` patch centred at ``matches.centres + matches.displacements`` (grid px,
    row-major pixels). Gathered in blocks of :data:`_GATHER_BLOCK` patches, so the working memory beyond the
    two results is bounded.
    """
    n = int(matches.patch_size if patch_size is None else patch_size)
    if n % 2 == 0 or n < 1:
        raise ImageError(f"patch_size must be odd and positive, got {patch_size}")
    half = n // 2
    hr = np.asarray(hr_grid, dtype=np.float64)
    lr = np.asarray(lr_up, dtype=np.float64)
    c_h = matches.centres - half
    c_l = matches.centres + matches.displacements - half
    for name, img, c in (("hr_grid", hr, c_h), ("lr_up", lr, c_l)):
        if len(c) and (c.min() < 0 or np.any(c.max(0) > np.array(img.shape) - n)):
            raise ImageError(f"{name} {img.shape}: some {n}x{n} patches of the matches fall outside the image")
    oy, ox = np.divmod(np.arange(n * n), n)                # row-major offsets inside the patch

    def gather(img: np.ndarray, c: np.ndarray) -> np.ndarray:
        out = np.empty((len(c), n * n), dtype=dtype)
        pixels, inside = img.ravel(), (oy * img.shape[1] + ox)[None, :]
        for start in range(0, len(c), _GATHER_BLOCK):
            block = c[start:start + _GATHER_BLOCK]
            out[start:start + len(block)] = np.take(pixels, (block[:, 0] * img.shape[1] + block[:, 1])[:, None] + inside)
        return out

    return gather(hr, c_h), gather(lr, c_l)
