"""Noise-level estimation for setting the NLM filtering strength from the data itself."""
from __future__ import annotations

import numpy as np

__all__ = ["estimate_noise_sigma", "estimate_noise_sigma_quantised", "estimate_noise_curve", "correlation_ceiling"]


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Standard deviation of white Gaussian noise in (H, W), in the image's units.

    Uses the robust median absolute deviation of the finest diagonal wavelet (Haar) coefficients,
    σ = median(|HH|) / 0.6745 (Donoho & Johnstone 1994), which texture barely affects.
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    a = img[0:h:2, 0:w:2]
    b = img[0:h:2, 1:w:2]
    c = img[1:h:2, 0:w:2]
    d = img[1:h:2, 1:w:2]
    hh = (a - b - c + d) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


def _haar_hh(img: np.ndarray) -> np.ndarray:
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    return (img[0:h:2, 0:w:2] - img[0:h:2, 1:w:2] - img[1:h:2, 0:w:2] + img[1:h:2, 1:w:2]) / 2.0


def estimate_noise_sigma_quantised(image: np.ndarray) -> float:
    """:func:`estimate_noise_sigma` for integer-valued frames whose noise is near the grey-level step, and frames
    with clipped regions: σ in the image's units.

    Two things bias the plain Haar MAD on a quiet 8-bit scan. (1) Clipped pixels (at the image's minimum or
    maximum, e.g. a black region at 0) have no noise: every 2 x 2 block touching one is left out. (2) ``|HH|`` of
    integer data takes only the values 0, 0.5, 1, ...: the median is one of them, so σ can only read 0.741,
    1.483, ... (0.741 is the floor a whole class of real scans sits on). The median is interpolated inside its
    bin instead (the median of grouped data: bins of width 0.5 centred on the values). For non-integer data this
    is :func:`estimate_noise_sigma` on the unclipped blocks. Returns 0.0 when no unclipped block is left.

    References
    ----------
    .. [1] Donoho & Johnstone, "Ideal spatial adaptation by wavelet shrinkage", Biometrika 81 (1994).
    """
    img = np.asarray(image, dtype=np.float64)
    hh, _, integer = _unclipped_blocks(img)
    return _mad_sigma(hh, integer) if hh.size else 0.0


def _unclipped_blocks(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``|HH|`` and the mean of every 2 x 2 block with no pixel at the image's minimum or maximum, and whether
    the image is integer-valued."""
    if img.ndim != 2:
        raise ValueError(f"noise estimation needs one (H, W) image, got shape {img.shape}")
    lo, hi = float(img.min()), float(img.max())
    inside = (img > lo) & (img < hi)
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    keep = inside[0:h:2, 0:w:2] & inside[0:h:2, 1:w:2] & inside[1:h:2, 0:w:2] & inside[1:h:2, 1:w:2]
    mean = (img[0:h:2, 0:w:2] + img[0:h:2, 1:w:2] + img[1:h:2, 0:w:2] + img[1:h:2, 1:w:2]) / 4.0
    return np.abs(_haar_hh(img)[keep]), mean[keep], bool(np.array_equal(img, np.round(img)))


def _mad_sigma(hh: np.ndarray, integer: bool) -> float:
    """σ = median(|HH|) / 0.6745, the median interpolated inside its 0.5-wide bin for integer data."""
    if not integer:
        return float(np.median(hh) / 0.6745)
    counts = np.bincount(np.round(hh * 2.0).astype(np.int64))  # |HH| of integer data: multiples of 0.5
    cdf = np.cumsum(counts) / hh.size
    j = int(np.searchsorted(cdf, 0.5))
    below = float(cdf[j - 1]) if j > 0 else 0.0
    start, width = (0.0, 0.25) if j == 0 else (0.5 * j - 0.25, 0.5)  # the bin of 0 is [0, 0.25)
    return float((start + (0.5 - below) / (counts[j] / hh.size) * width) / 0.6745)


def estimate_noise_curve(image: np.ndarray, *, bins: int = 8, min_blocks: int = 256, max_blocks: int = 32768
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Noise σ as a function of intensity (the noise-level function of a signal-dependent noise): ``(levels,
    sigmas)``, each (K,) float64 in the image's units, ``levels`` increasing.

    SEM noise is mostly shot noise, so a bright region is noisier than a dark one (a real 8-bit InLens scan:
    0.74 grey levels at 0-24, 1.47 at 96-120); one σ for the whole frame, a median dominated by the commonest
    intensities, is too small for the bright parts. The unclipped 2 x 2 blocks (see
    :func:`estimate_noise_sigma_quantised`) are split by their mean into ``bins`` groups of equal count (at least
    ``min_blocks`` each, fewer groups when the frame is small); each gets the (quantisation-aware) Haar MAD σ of
    its blocks at the group's median intensity; at most ``max_blocks`` blocks are used (every n-th: 4096 per
    group give σ within about 2 %). Interpolate with :func:`numpy.interp` (constant beyond the ends).
    A frame without unclipped blocks gives ``([0.0], [0.0])``.
    """
    if int(bins) != bins or bins < 1 or min_blocks < 1 or max_blocks < min_blocks:
        raise ValueError(f"bins and min_blocks must be integers >= 1 and max_blocks >= min_blocks, got {bins!r}, "
                         f"{min_blocks!r}, {max_blocks!r}")
    img = np.asarray(image, dtype=np.float64)
    hh, mean, integer = _unclipped_blocks(img)
    if hh.size == 0:
        return np.zeros(1), np.zeros(1)
    if hh.size > max_blocks:  # a regular subset: the curve's precision is set by the blocks per group
        step = -(-hh.size // max_blocks)
        hh, mean = hh[::step], mean[::step]
    k = int(max(1, min(bins, hh.size // min_blocks)))
    order = np.argsort(mean, kind="stable")
    levels, sigmas = [], []
    for part in np.array_split(order, k):
        levels.append(float(np.median(mean[part])))
        sigmas.append(_mad_sigma(hh[part], integer))
    return np.asarray(levels), np.asarray(sigmas)


def correlation_ceiling(image: np.ndarray) -> float:
    """Largest zero-mean NCC a noise-free template of the same scene can reach against the noisy (H, W) ``image``.

    With ``image = s + n`` (signal s, white noise n of variance σ² independent of s) and a template ∝ s,
    ``NCC = cov(s + n, s) / (std(s + n) std(s)) = sqrt(1 - σ² / var(image))``; σ from
    :func:`estimate_noise_sigma`. A registration score divided by this ceiling says how well two images agree
    whatever the noise of the fast scan. Returns a value in [0, 1] (0 for a constant or pure-noise image).
    """
    img = np.asarray(image, dtype=np.float64)
    variance = float(img.var())
    if not variance > 0:
        return 0.0
    sigma = estimate_noise_sigma(img)
    return float(np.sqrt(max(0.0, 1.0 - sigma * sigma / variance)))
