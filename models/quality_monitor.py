"""No-reference quality drift of live LR frames relative to the frames a model learned from (pure functions).

A paired model is only as good as its library's resemblance to what the microscope shows now. Four signals
compare each live LR frame with the training LR regions of the serving model (each a :class:`FrameStats`):

``coverage``
    ratio of the frame's median support ``q`` (:mod:`.confidence`: normalised nearest-library-key distance) to
    the training region's own median ``q``. About 1 on the sample the library was learned from; 1.5-2.5 on a
    different kind of synthetic specimen or a defocused frame. (On real, noisy SEM frames of different
    biological samples it stays near 1: their 9x9 patches look alike at the noise level.)
``texture``
    distance between the patch-feature statistics of frame and training region (:func:`texture_distance`: the
    affine-invariant distance of their trace-normalised feature covariances, mean |log| of the generalised
    eigenvalues, less what sampling alone gives for the numbers of patches measured). About 0-0.1 for other
    frames of the training specimen, 0.1-0.25 for other frames of the same real sample, 0.3-0.9 for other
    samples, magnifications or a synthetic specimen of another kind.
``intensity``
    largest shift of the frame's mean, 5th and 95th percentiles from the training region's, in units of the
    training region's standard deviation (a brightness/contrast change, another detector setting or material).
``focus``
    loss of sharpness, ``1 - f / f_train`` clipped at 0, with ``f`` the :func:`focus_index` (how much of the
    signal's difference energy sits at the finest lag): 0 as sharp as the training frames, ~0.45 for a probe
    60 % wider; insensitive to gain, offset and the kind of specimen.

Each signal is taken against the *closest* training region (the minimum over regions), so a model that learned
two specimens covers both. A fourth signal comes from the references themselves: the serving model's held-out
ΔPSNR on a new reference *before* learning from it (the learner measures it, see
:func:`refscope.models.promotion.held_out_delta_psnr`), a true out-of-sample score.

:func:`hysteresis` turns a signal into a raised/cleared flag with two thresholds (raise at ``on``, clear at
``off``), :func:`suggest_region` places a reference box where support is worst.

References
----------
.. [1] C. Batten, "Autofocusing and astigmatism correction in the scanning electron microscope", M.Phil.
   thesis, Cambridge, 2000 (difference-based focus measures and their noise bias).
.. [2] D. L. Donoho, I. M. Johnstone, Biometrika 81(3), 1994 (MAD noise estimate used for the correction).
.. [3] X. Pennec, P. Fillard, N. Ayache, "A Riemannian framework for tensor computing", IJCV 66(1), 2006
   (affine-invariant distance between covariance matrices).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh

from .confidence import SupportGrid
from .noise import estimate_noise_sigma

__all__ = ["SIGNALS", "FrameStats", "Threshold", "frame_stats", "focus_index", "texture_distance", "drift_signals",
           "hysteresis", "region_shape", "suggest_region", "badness_on_lr_grid", "summarize"]

SIGNALS: tuple[str, ...] = ("coverage", "texture", "intensity", "focus")
"""Frame signals computed by :func:`drift_signals` (all: higher is worse)."""


@dataclass(frozen=True, eq=False)
class FrameStats:
    """Summary of one LR frame (or training region), in the frame's own intensity units.

    Attributes:
        mean, std, p05, p95: intensity mean, standard deviation, 5th and 95th percentiles.
        focus_index: :func:`focus_index`, 0..1.
        noise_sigma: MAD noise estimate, intensity units.
        support_median: median support ``q`` (:class:`~.confidence.SupportGrid`), None when not measured.
        feature_cov: trace-normalised (d, d) feature covariance (:class:`~.confidence.SupportGrid`), or None.
        feature_n: number of patches behind ``feature_cov``.
    """

    mean: float
    std: float
    p05: float
    p95: float
    focus_index: float
    noise_sigma: float
    support_median: float | None = None
    feature_cov: np.ndarray | None = None
    feature_n: int = 0


@dataclass(frozen=True)
class Threshold:
    """Two-level threshold of one signal: raised when the value reaches ``on``, cleared when it is back past
    ``off``. ``higher_is_worse`` (default): ``off < on``; otherwise (a score where low is bad) ``off > on``."""

    on: float
    off: float
    higher_is_worse: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.on) and math.isfinite(self.off)):
            raise ValueError(f"thresholds must be finite, got on={self.on!r}, off={self.off!r}")
        if self.higher_is_worse and not self.off < self.on:
            raise ValueError(f"clear level off={self.off} must be below the raise level on={self.on}")
        if not self.higher_is_worse and not self.off > self.on:
            raise ValueError(f"for a low-is-bad score the clear level off={self.off} must be above on={self.on}")


def _lag_energy(img: np.ndarray, lag: int) -> float:
    return float(np.mean((img[:, lag:] - img[:, :-lag]) ** 2) + np.mean((img[lag:] - img[:-lag]) ** 2))


def focus_index(image: np.ndarray, *, noise_sigma: float | None = None) -> float:
    """How sharp an (H, W) image is, from the ratio of its lag-1 to lag-2 difference energies, 0..1.

    With ``D_k`` the mean squared differences at lag k along rows plus columns, noise σ removed (each difference
    carries ``2σ²`` per axis), ``r = (D_1 - 4σ²) / (D_2 - 4σ²)`` runs from 1/4 (a smooth image: differences
    grow linearly with the lag) to 1 (white: all energy at the finest scale); the index is ``(r - 1/4) / (3/4)``.
    Low-frequency content hardly enters either difference, so the index depends on the probe and the finest
    detail, not on gain, offset or large-scale brightness. For Gaussian-blurred white noise of standard
    deviation ``b`` px, ``r = (1 - exp(-1/(4b²))) / (1 - exp(-1/b²))``. σ is estimated (MAD, Donoho-Johnstone)
    when None; the estimate is biased on very smooth images, so pass it when it is known. Returns 0 when no
    signal is left above the noise.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 4:
        raise ValueError(f"focus_index needs an (H, W) image of at least 4x4 px, got shape {img.shape}")
    sigma = estimate_noise_sigma(img) if noise_sigma is None else float(noise_sigma)
    d1 = _lag_energy(img, 1) - 4.0 * sigma ** 2
    d2 = _lag_energy(img, 2) - 4.0 * sigma ** 2
    if d1 <= 0 or d2 <= 0:
        return 0.0
    return float(np.clip((d1 / d2 - 0.25) / 0.75, 0.0, 1.0))


def texture_distance(cov: np.ndarray, reference: np.ndarray, *, n: int = 0, n_reference: int = 0) -> float:
    """Affine-invariant distance of two trace-normalised (d, d) covariances: the mean |log λ| over the
    generalised eigenvalues λ of ``(cov, reference)`` (0 for equal matrices; both regularised by 1e-6 / d).

    Given the numbers of samples behind them (``n``, ``n_reference`` > 0), the distance two sample covariances
    of one distribution show by chance, about ``sqrt(d (1/n + 1/n_reference))``, is subtracted (clipped at 0), so
    that small regions do not look different just for being small.
    """
    a, b = np.asarray(cov, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"texture_distance needs two (d, d) matrices of one size, got {a.shape} and {b.shape}")
    eye = np.eye(a.shape[0]) * (1e-6 / a.shape[0])
    lam = eigh(a + eye, b + eye, eigvals_only=True)
    distance = float(np.mean(np.abs(np.log(np.maximum(lam, 1e-300)))))
    if n > 0 and n_reference > 0:
        distance = max(0.0, distance - math.sqrt(a.shape[0] * (1.0 / n + 1.0 / n_reference)))
    return distance


def frame_stats(image: np.ndarray, *, support: SupportGrid | None = None) -> FrameStats:
    """:class:`FrameStats` of an (H, W) LR frame; ``support`` (its :func:`~.confidence.support_grid`) adds the
    median support and the feature covariance."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 8:
        raise ValueError(f"frame_stats needs an (H, W) frame of at least 8x8 px, got shape {img.shape}")
    sigma = estimate_noise_sigma(img)
    p05, p95 = np.percentile(img, [5.0, 95.0])
    return FrameStats(mean=float(img.mean()), std=float(img.std()), p05=float(p05), p95=float(p95),
                      focus_index=focus_index(img, noise_sigma=sigma), noise_sigma=sigma,
                      support_median=support.median if support is not None else None,
                      feature_cov=support.feature_cov if support is not None else None,
                      feature_n=int(support.q.size) if support is not None else 0)


def _coverage(frame: FrameStats, ref: FrameStats) -> float | None:
    if frame.support_median is None or ref.support_median is None:
        return None
    return frame.support_median / max(ref.support_median, 1e-12)


def _intensity(frame: FrameStats, ref: FrameStats) -> float:
    spread = max(ref.std, 1e-12)
    return max(abs(frame.mean - ref.mean), abs(frame.p05 - ref.p05), abs(frame.p95 - ref.p95)) / spread


def _focus(frame: FrameStats, ref: FrameStats) -> float | None:
    if ref.focus_index <= 0:
        return None
    return max(0.0, 1.0 - frame.focus_index / ref.focus_index)


def _texture(frame: FrameStats, ref: FrameStats) -> float | None:
    if frame.feature_cov is None or ref.feature_cov is None or frame.feature_cov.shape != ref.feature_cov.shape:
        return None
    return texture_distance(frame.feature_cov, ref.feature_cov, n=frame.feature_n, n_reference=ref.feature_n)


def drift_signals(frame: FrameStats, training: Sequence[FrameStats]) -> dict[str, float | None]:
    """The :data:`SIGNALS` of ``frame`` against the closest of the ``training`` regions (None: not measurable,
    e.g. no training region yet or no support measured)."""
    out: dict[str, float | None] = {}
    for name, fn in (("coverage", _coverage), ("texture", _texture), ("intensity", _intensity), ("focus", _focus)):
        values = [v for v in (fn(frame, ref) for ref in training) if v is not None and math.isfinite(v)]
        out[name] = min(values) if values else None
    return out


def hysteresis(active: bool, value: float | None, threshold: Threshold) -> bool:
    """Next state of a raised/cleared flag given a new ``value`` (None or NaN: unchanged).

    Cleared -> raised when ``value >= on`` (``<= on`` for a low-is-bad score); raised -> cleared when
    ``value <= off`` (``>= off``). In between the flag keeps its state.
    """
    if value is None or not math.isfinite(value):
        return active
    if threshold.higher_is_worse:
        return value > threshold.off if active else value >= threshold.on
    return value < threshold.off if active else value <= threshold.on


def region_shape(frame_shape: tuple[int, int], *, fraction: float = 0.5) -> tuple[int, int]:
    """(h, w) of a reference box covering ``fraction`` of each side of the LR field (0.5: a quarter of its
    area), at least 8 px, at most the field."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    height, width = frame_shape
    return (min(height, max(8, int(round(fraction * height)))), min(width, max(8, int(round(fraction * width)))))


def badness_on_lr_grid(confidence: np.ndarray, scale: int) -> np.ndarray:
    """``1 - confidence`` averaged over each LR pixel's S x S output pixels: (S·H, S·W) -> (H, W)."""
    conf = np.asarray(confidence, dtype=np.float64)
    h, w = conf.shape[0] // scale, conf.shape[1] // scale
    blocks = conf[: h * scale, : w * scale].reshape(h, scale, w, scale).mean(axis=(1, 3))
    return 1.0 - blocks


def suggest_region(badness: np.ndarray | None, frame_shape: tuple[int, int],
                   box_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The (y0, x0, y1, x1) LR-pixel box of ``box_shape`` inside ``frame_shape`` with the largest summed
    ``badness`` (an (H, W) map on the LR grid, e.g. :func:`badness_on_lr_grid`); ties and ``None`` give the
    box nearest to the centre. Half-open: rows y0..y1-1."""
    height, width = frame_shape
    bh, bw = min(box_shape[0], height), min(box_shape[1], width)
    cy, cx = (height - bh) // 2, (width - bw) // 2
    if badness is None:
        return (cy, cx, cy + bh, cx + bw)
    bad = np.asarray(badness, dtype=np.float64)
    if bad.shape != (height, width):
        raise ValueError(f"badness map {bad.shape} does not match the frame {frame_shape}")
    table = np.zeros((height + 1, width + 1))
    table[1:, 1:] = np.cumsum(np.cumsum(np.nan_to_num(bad), axis=0), axis=1)
    sums = table[bh:, bw:] - table[:-bh, bw:] - table[bh:, :-bw] + table[:-bh, :-bw]  # (H-bh+1, W-bw+1)
    yy, xx = np.mgrid[0:sums.shape[0], 0:sums.shape[1]]
    tie = 1e-9 * float(np.abs(sums).max() + 1.0) * ((yy - cy) ** 2 + (xx - cx) ** 2) / (height ** 2 + width ** 2)
    y0, x0 = np.unravel_index(int(np.argmax(sums - tie)), sums.shape)
    return (int(y0), int(x0), int(y0) + bh, int(x0) + bw)


def summarize(signals: Mapping[str, float | None]) -> str:
    """One short line, e.g. ``coverage 1.82, intensity 0.41, focus 0.05``."""
    return ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in signals.items())
