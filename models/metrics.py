"""Image-quality metrics for scoring a super-resolved SEM image against an HR reference.

Every function takes 2-D arrays of the same shape (H, W) in the same intensity units, the reference (ground
truth, e.g. the HR scan resampled onto the output grid) first. Unless ``data_range`` is given, PSNR and
(MS-)SSIM use the *reference's* ``max - min``. Real LR/HR pairs differ in contrast, so :func:`score_all`
first fits the estimate to the reference with a least-squares affine map (:func:`fit_intensity`).

References
----------
.. [1] Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from error visibility
   to structural similarity," IEEE TIP 13(4), 2004, eq. (13) (SSIM).
.. [2] Z. Wang, E. P. Simoncelli, A. C. Bovik, "Multiscale structural similarity for image quality
   assessment," Asilomar 2003, eq. (7) (MS-SSIM).
.. [3] Paired LB-NLM SEM super-resolution (shared/papers/000), Sections III-D and IV-D: fg/bg PSNR after Otsu
   segmentation and the Canny edge similarity of eq. (4).
.. [4] EMSR (shared/papers/004), eq. (19): Fourier ring correlation and its mean; N. Banterle et al., J. Struct.
   Biol. 183(3), 2013 (the 1/7 FRC threshold).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import canny
from skimage.filters import threshold_otsu
from skimage.metrics import structural_similarity

from .errors import ImageError

__all__ = [
    "FRCCurve", "FRCResolution", "QualityScores", "MS_SSIM_WEIGHTS", "SSIM_SIGMA", "SSIM_RADIUS", "SSIM_K1", "SSIM_K2",
    "SSIM_WINDOW", "fit_intensity_coefficients",
    "fit_intensity", "psnr", "ssim", "ms_ssim", "frc", "frc_resolution", "frc_mean", "foreground_mask",
    "masked_psnr", "fg_bg_psnr", "canny_edges", "edge_similarity_maps", "edge_similarity", "score_all",
]

#: Wang et al. 2003 per-scale exponents, finest scale first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: The Gaussian SSIM window: σ (px) and radius (px); skimage: int(3.5 * 1.5 + 0.5) = 5 -> 11x11.
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5
#: Side of the SSIM window, px: the smallest image (or patch) SSIM is defined on.
SSIM_WINDOW = 2 * SSIM_RADIUS + 1
#: SSIM's stabilising constants: C1 = (K1 L)^2, C2 = (K2 L)^2 for a data range L (Wang et al. 2004).
SSIM_K1, SSIM_K2 = 0.01, 0.03


# ----------------------------------------------------------------------------------------------- validation
def _as_image(image: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise ImageError(f"{name}: expected a 2-D grayscale image, got an array of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ImageError(f"{name}: unsupported pixel type {array.dtype}")
    out = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        raise ImageError(f"{name}: contains NaN or infinite pixels")
    return out


def _as_pair(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, est = _as_image(reference, "reference"), _as_image(estimate, "estimate")
    if ref.shape != est.shape:
        raise ImageError(f"reference has shape {ref.shape} but estimate has shape {est.shape}; "
                         "resample the estimate onto the reference grid first")
    return ref, est


def _data_range(ref: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        data_range = float(ref.max() - ref.min())
        if data_range == 0.0:
            raise ImageError("reference is constant, so its data range is 0; pass data_range explicitly")
    elif not (data_range > 0 and math.isfinite(data_range)):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return float(data_range)


def _check_window(shape: tuple[int, ...]) -> None:
    if min(shape) < SSIM_WINDOW:
        raise ImageError(f"image of shape {shape} is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window")


# ------------------------------------------------------------------------------------------- intensity fit
def fit_intensity_coefficients(estimate: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Least-squares gain ``a`` and offset ``b`` minimising ``sum((a * estimate + b - reference) ** 2)``.

    Parameters
    ----------
    estimate, reference : (H, W) array_like
        Same shape, any intensity units.

    Returns
    -------
    (float, float)
        ``(a, b)``; a constant estimate gives ``(0, mean(reference))``.

    References
    ----------
    .. [1] Ordinary least squares: the per-pair contrast matching applied to real pairs before PSNR/SSIM.
    """
    ref, est = _as_pair(reference, estimate)
    e0 = (est - est.mean()).ravel()
    var = float(e0 @ e0)
    if var == 0.0:
        return 0.0, float(ref.mean())
    a = float(e0 @ (ref - ref.mean()).ravel() / var)
    return a, float(ref.mean() - a * est.mean())


def fit_intensity(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``a * estimate + b`` as float64 (H, W), with (a, b) from :func:`fit_intensity_coefficients`."""
    a, b = fit_intensity_coefficients(estimate, reference)
    return a * np.asarray(estimate, dtype=np.float64) + b


# -------------------------------------------------------------------------------------------- PSNR / SSIM
def _psnr(ref: np.ndarray, est: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((ref - est) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def psnr(reference: np.ndarray, estimate: np.ndarray, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` in dB (``inf`` if identical).

    Parameters
    ----------
    reference, estimate : (H, W) array_like
        Same shape and intensity units.
    data_range : float, optional
        Peak-to-peak range; default ``reference.max() - reference.min()``.

    References
    ----------
    .. [1] Paper 000, Section IV-C (PSNR).
    """
    ref, est = _as_pair(reference, estimate)
    return _psnr(ref, est, _data_range(ref, data_range))


def _ssim(ref: np.ndarray, est: np.ndarray, data_range: float) -> float:
    return float(structural_similarity(ref, est, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False))


def ssim(reference: np.ndarray, estimate: np.ndarray, *, data_range: float | None = None) -> float:
    """Mean SSIM with the settings of Wang et al. 2004, via :func:`skimage.metrics.structural_similarity`.

    Gaussian 11x11 window (sigma 1.5 px), population covariances, K1 = 0.01, K2 = 0.03; the 5-px border is
    left out of the mean.

    Parameters
    ----------
    reference, estimate : (H, W) array_like
        Same shape, at least 11 px per side.
    data_range : float, optional
        Default ``reference.max() - reference.min()``.

    Returns
    -------
    float
        In [-1, 1]; 1 for identical images.

    References
    ----------
    .. [1] Wang et al. 2004, eq. (13).
    """
    ref, est = _as_pair(reference, estimate)
    _check_window(ref.shape)
    return _ssim(ref, est, _data_range(ref, data_range))


def _ssim_and_cs(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[float, float]:
    """Mean SSIM (luminance x contrast-structure) and mean contrast-structure over the border-free region."""
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, SSIM_SIGMA, truncate=SSIM_RADIUS / SSIM_SIGMA, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    crop = (slice(SSIM_RADIUS, -SSIM_RADIUS),) * 2
    return float(np.mean((lum * cs)[crop])), float(np.mean(cs[crop]))


def _downsample2(a: np.ndarray) -> np.ndarray:
    a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2]
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def _ms_ssim(ref: np.ndarray, est: np.ndarray, data_range: float, weights: tuple[float, ...]) -> float:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be a non-empty sequence of non-negative numbers, got {weights!r}")
    n_scales = min(w.size, 1 + int(math.floor(math.log2(min(ref.shape) / SSIM_WINDOW))))
    w = w[:n_scales] / w[:n_scales].sum()
    result = 1.0
    for j in range(n_scales):
        s, cs = _ssim_and_cs(ref, est, data_range)
        result *= max(s if j == n_scales - 1 else cs, 0.0) ** w[j]
        ref, est = _downsample2(ref), _downsample2(est)
    return float(result)


def ms_ssim(reference: np.ndarray, estimate: np.ndarray, *, data_range: float | None = None,
            weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> float:
    """Multi-scale SSIM, ``SSIM_M ** w_M * prod_{j<M} cs_j ** w_j`` (Wang et al. 2003).

    Scale 1 is the full image; each further scale is a 2x2 block average of the previous one (an odd last
    row/column is dropped). ``cs_j`` is the mean contrast-structure term at scale j, ``SSIM_M`` the mean SSIM
    at the coarsest scale, all with the window of :func:`ssim` and the full-resolution ``data_range``.
    Negative terms are clipped to 0 before the fractional powers.

    Small images use fewer scales: ``M = min(len(weights), 1 + floor(log2(min(H, W) / 11)))``, as many as
    keep the coarsest scale at least 11 px per side (all five need 176 px), and the first ``M`` weights are
    renormalised to sum to 1. With ``M = 1`` the result equals :func:`ssim`.

    Parameters
    ----------
    reference, estimate : (H, W) array_like
        Same shape, at least 11 px per side.
    data_range : float, optional
        Default ``reference.max() - reference.min()``.
    weights : tuple of float
        Per-scale exponents, finest first.

    Returns
    -------
    float
        In [0, 1]; 1 for identical images.

    References
    ----------
    .. [1] Wang, Simoncelli and Bovik 2003, eq. (7) and Section 3.1 (the weights).
    """
    ref, est = _as_pair(reference, estimate)
    _check_window(ref.shape)
    return _ms_ssim(ref, est, _data_range(ref, data_range), weights)


# --------------------------------------------------------------------------------------------------- FRC
@dataclass(frozen=True)
class FRCCurve:
    """Fourier ring correlation: ``frequency`` (K,) ring centres in cycles/pixel, ``k / min(H, W)`` for
    k = 1..min(H, W)//2 (DC excluded, last ring at or just below Nyquist 0.5); ``correlation`` (K,) in
    [-1, 1]; ``n_pixels`` (K,) int64 Fourier samples per ring."""

    frequency: np.ndarray
    correlation: np.ndarray
    n_pixels: np.ndarray


@dataclass(frozen=True)
class FRCResolution:
    """First threshold crossing of an FRC curve: ``frequency`` (cycles/pixel), ``period_px = 1 / frequency``
    and ``crossed`` (False, with frequency 0.5 and period 2 px, if the curve never drops below)."""

    frequency: float
    period_px: float
    crossed: bool


def frc(image_a: np.ndarray, image_b: np.ndarray, *, tukey_alpha: float = 0.25) -> FRCCurve:
    """Fourier ring correlation of two images of the same field.

    Each image has its mean removed and is multiplied by a separable Tukey window (cosine taper over
    ``tukey_alpha / 2`` of each side; 1 gives a Hann window) against the edge discontinuity of the periodic
    FFT. ``r = sqrt(fy**2 + fx**2)`` (cycles/pixel) is binned in rings of width ``1 / min(H, W)``: ring k
    holds ``round(r * min(H, W)) == k``.

    Parameters
    ----------
    image_a, image_b : (H, W) array_like
        Same shape, at least 8 px per side.
    tukey_alpha : float
        Taper fraction in [0, 1].

    Returns
    -------
    FRCCurve
        ``Re(sum F_a conj(F_b)) / sqrt(sum |F_a|^2 sum |F_b|^2)`` per ring; 0 for a ring without power.

    References
    ----------
    .. [1] Paper 004, eq. (19); Banterle et al. 2013.
    """
    a, b = _as_pair(image_a, image_b)
    if min(a.shape) < 8:
        raise ImageError(f"image of shape {a.shape} is too small for FRC (at least 8 px per side)")
    if not 0.0 <= tukey_alpha <= 1.0:
        raise ValueError(f"tukey_alpha must be in [0, 1], got {tukey_alpha!r}")
    h, w = a.shape
    from scipy.signal.windows import tukey  # here: scipy.signal costs ~0.4 s to import, a cold `enhance` never needs it

    window = np.outer(tukey(h, tukey_alpha), tukey(w, tukey_alpha))
    fa, fb = np.fft.fft2((a - a.mean()) * window).ravel(), np.fft.fft2((b - b.mean()) * window).ravel()
    n = min(h, w)
    ring = np.rint(np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]) * n).astype(np.int64).ravel()
    keep = (ring >= 1) & (ring <= n // 2)
    ring, fa, fb = ring[keep], fa[keep], fb[keep]

    def ring_sum(values=None) -> np.ndarray:
        return np.bincount(ring, weights=values, minlength=n // 2 + 1)[1:]

    cross = ring_sum((fa * np.conj(fb)).real)
    denom = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    corr = np.divide(cross, denom, out=np.zeros_like(cross), where=denom > 0)
    return FRCCurve(frequency=np.arange(1, n // 2 + 1, dtype=np.float64) / n,
                    correlation=np.clip(corr, -1.0, 1.0), n_pixels=ring_sum().astype(np.int64))


def frc_resolution(curve: FRCCurve, *, threshold: float = 1.0 / 7.0) -> FRCResolution:
    """First frequency where the FRC falls below ``threshold`` (default the fixed 1/7 criterion).

    Linear interpolation between the last ring at/above and the first ring below the threshold (the first
    ring itself if that is already below); no smoothing.

    References
    ----------
    .. [1] Banterle et al. 2013 (1/7 threshold).
    """
    f, c = curve.frequency, curve.correlation
    below = np.flatnonzero(c < threshold)
    if below.size == 0:
        return FRCResolution(frequency=0.5, period_px=2.0, crossed=False)
    k = int(below[0])
    freq = float(f[0]) if k == 0 else float(f[k - 1] + (c[k - 1] - threshold) / (c[k - 1] - c[k]) * (f[k] - f[k - 1]))
    return FRCResolution(frequency=freq, period_px=1.0 / freq, crossed=True)


def frc_mean(curve: FRCCurve) -> float:
    """Mean FRC over all rings up to Nyquist, a scalar for tables (paper 004, the FRC-bar after eq. (19))."""
    return float(np.mean(curve.correlation))


# ---------------------------------------------------------------------------------- foreground/background
def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask
    keep = np.bincount(labels.ravel()) >= min_px
    keep[0] = False
    return keep[labels]


def foreground_mask(reference: np.ndarray, *, min_object_px: int = 16, smooth_sigma: float = 0.0) -> np.ndarray:
    """Foreground (bright specimen) mask of an SEM image: Otsu threshold, then removal of isolated specks.

    Pixels above Otsu's threshold are foreground; foreground components (8-connected) smaller than
    ``min_object_px`` become background and background holes smaller than that become foreground.

    Parameters
    ----------
    reference : (H, W) array_like
        Usually the HR ground truth; must not be constant.
    min_object_px : int
        Smallest component kept, in pixels; 0 disables the clean-up.
    smooth_sigma : float
        Optional Gaussian pre-smoothing in pixels (0 = none, as in the paper).

    Returns
    -------
    (H, W) bool
        True on the foreground.

    References
    ----------
    .. [1] Paper 000, Section IV-D (Otsu segmentation, isolated noise points removed); Otsu 1979.
    """
    ref = _as_image(reference, "reference")
    if ref.max() == ref.min():
        raise ImageError("reference is constant; there is no foreground to separate")
    work = ndimage.gaussian_filter(ref, smooth_sigma) if smooth_sigma > 0 else ref
    mask = work > threshold_otsu(work)
    if min_object_px > 0:
        mask = ~_drop_small(~_drop_small(mask, min_object_px), min_object_px)
    return mask


def masked_psnr(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray, *,
                data_range: float | None = None) -> float:
    """PSNR in dB over the pixels where ``mask`` (H, W) is True; ``data_range`` defaults to the whole
    reference's. An empty mask or one of another shape raises :class:`ImageError`.

    References
    ----------
    .. [1] Paper 000, Section IV-D, Table IV (PSNR per region).
    """
    ref, est = _as_pair(reference, estimate)
    m = np.asarray(mask, dtype=bool)
    if m.shape != ref.shape:
        raise ImageError(f"mask has shape {m.shape} but the images have shape {ref.shape}")
    if not m.any():
        raise ImageError("mask selects no pixels")
    return _psnr(ref[m], est[m], _data_range(ref, data_range))


def _fg_bg(ref: np.ndarray, est: np.ndarray, dr: float) -> tuple[float, float]:
    fg = foreground_mask(ref)
    return tuple(_psnr(ref[m], est[m], dr) if m.any() else math.nan for m in (fg, ~fg))  # type: ignore[return-value]


def fg_bg_psnr(reference: np.ndarray, estimate: np.ndarray, *,
               data_range: float | None = None) -> tuple[float, float]:
    """(foreground, background) PSNR in dB with :func:`foreground_mask` of the reference; ``nan`` for a region
    left empty by the speck removal. ``data_range`` defaults to the whole reference's.

    References
    ----------
    .. [1] Paper 000, Section IV-D, Table IV.
    """
    ref, est = _as_pair(reference, estimate)
    return _fg_bg(ref, est, _data_range(ref, data_range))


# ----------------------------------------------------------------------------------------- edge similarity
def canny_edges(image: np.ndarray, *, sigma: float = math.sqrt(2.0), high_threshold: float = 0.2,
                low_ratio: float = 0.4) -> np.ndarray:
    """Canny edge map with MATLAB-style thresholds relative to the image's own maximum gradient.

    The image is normalised to [0, 1], smoothed by a Gaussian of ``sigma`` px (``mode='nearest'``) and
    differentiated by Sobel filters exactly as :func:`skimage.feature.canny` does; the hysteresis thresholds
    (``use_quantiles=False``) are then ``high_threshold * G`` and ``low_ratio * high_threshold * G`` with G the
    largest gradient magnitude off the 1-px border, like MATLAB's ``edge(I, 'canny', 0.2)`` (low/high ratio
    0.4, sigma sqrt(2)). The map is therefore invariant to gain and offset.

    Parameters
    ----------
    image : (H, W) array_like
        Grayscale image; a constant image has no edges.
    sigma : float
        Gaussian smoothing, pixels.
    high_threshold, low_ratio : float
        Relative high threshold and low/high ratio, both in (0, 1].

    Returns
    -------
    (H, W) bool
        True on edge pixels.

    References
    ----------
    .. [1] Paper 000, Section IV-D ("a key Canny parameter set as 0.2"); J. Canny, IEEE TPAMI 8, 1986.
    """
    img = _as_image(image, "image")
    if not (0 < high_threshold <= 1 and 0 < low_ratio <= 1):
        raise ValueError(f"need 0 < high_threshold, low_ratio <= 1; got {high_threshold}, {low_ratio}")
    span = float(img.max() - img.min())
    if span == 0.0 or min(img.shape) < 3:
        return np.zeros(img.shape, dtype=bool)
    img = (img - img.min()) / span
    smoothed = ndimage.gaussian_filter(img, sigma, mode="nearest", truncate=4.0)
    g_max = float(np.hypot(ndimage.sobel(smoothed, axis=0), ndimage.sobel(smoothed, axis=1))[1:-1, 1:-1].max())
    if g_max <= 1e-12:
        return np.zeros(img.shape, dtype=bool)
    high = high_threshold * g_max
    return canny(img, sigma=sigma, low_threshold=low_ratio * high, high_threshold=high, mode="nearest")


def edge_similarity_maps(edges_reference: np.ndarray, edges_estimate: np.ndarray) -> float:
    """Eq. (4): ``sim = 1 - ||B_HR != B_SR||_1 / (||B_HR||_1 + ||B_SR||_1)`` for binary maps of one shape;
    1.0 when both maps are empty.

    References
    ----------
    .. [1] Paper 000, eq. (4).
    """
    b_hr, b_sr = np.asarray(edges_reference, dtype=bool), np.asarray(edges_estimate, dtype=bool)
    if b_hr.shape != b_sr.shape:
        raise ImageError(f"reference edges have shape {b_hr.shape} but estimate edges have shape {b_sr.shape}")
    total = int(b_hr.sum()) + int(b_sr.sum())
    return 1.0 if total == 0 else 1.0 - int(np.count_nonzero(b_hr != b_sr)) / total


def edge_similarity(reference: np.ndarray, estimate: np.ndarray, *, sigma: float = math.sqrt(2.0),
                    high_threshold: float = 0.2, low_ratio: float = 0.4) -> float:
    """Canny edge similarity of eq. (4) in [0, 1], both maps from :func:`canny_edges` with the same settings.

    References
    ----------
    .. [1] Paper 000, eq. (4) and Section IV-D.
    """
    ref, est = _as_pair(reference, estimate)
    kw = dict(sigma=sigma, high_threshold=high_threshold, low_ratio=low_ratio)
    return edge_similarity_maps(canny_edges(ref, **kw), canny_edges(est, **kw))


# ------------------------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class QualityScores:
    """Scores of one estimate against one reference. ``psnr``, ``fg_psnr``, ``bg_psnr`` in dB (``inf`` for a
    perfect match, ``nan`` for an empty region); ``ssim``, ``ms_ssim``, ``edge_sim``, ``frc_mean`` unitless
    (1 = perfect); ``frc_resolution_px``: period in pixels at the 1/7 FRC crossing (2.0 if never crossed)."""

    psnr: float
    ssim: float
    ms_ssim: float
    fg_psnr: float
    bg_psnr: float
    edge_sim: float
    frc_mean: float
    frc_resolution_px: float


def score_all(reference: np.ndarray, estimate: np.ndarray, *, intensity_fit: bool = True) -> QualityScores:
    """Every metric of this module for one (reference, estimate) pair.

    With ``intensity_fit`` the estimate is first replaced by ``fit_intensity(estimate, reference)``. PSNR,
    SSIM, MS-SSIM and fg/bg PSNR share one data range, the reference's ``max - min``.

    Parameters
    ----------
    reference, estimate : (H, W) array_like
        Same shape, at least 11 px per side.
    intensity_fit : bool
        Fit gain and offset of the estimate to the reference before scoring.

    Returns
    -------
    QualityScores

    References
    ----------
    .. [1] Paper 000, eq. (4) and Section IV-D; paper 004, eq. (19); Wang et al. 2003, 2004.
    """
    ref, est = _as_pair(reference, estimate)
    _check_window(ref.shape)
    if intensity_fit:
        est = fit_intensity(est, ref)
    dr = _data_range(ref, None)
    fg, bg = _fg_bg(ref, est, dr)
    curve = frc(ref, est)
    return QualityScores(psnr=_psnr(ref, est, dr), ssim=_ssim(ref, est, dr),
                         ms_ssim=_ms_ssim(ref, est, dr, MS_SSIM_WEIGHTS), fg_psnr=fg, bg_psnr=bg,
                         edge_sim=edge_similarity(ref, est), frc_mean=frc_mean(curve),
                         frc_resolution_px=frc_resolution(curve).period_px)
