"""Data consistency of a super-resolved frame: degraded as the microscope degrades, does it give back its own LR
frame within the LR noise? (pure: arrays in, numbers out)

**Forward model**, learned from the session's registered pairs (:func:`fit_forward_model`): every LR pixel is an
affine function of the HR grid around its S x S block,

    LR[i, j] ≈ Σ_{u, v} k[u, v] · HR[S·i − r + u, S·j − r + v] + c,      u, v = 0 .. S + 2r − 1        (1)

with the HR in LR intensity units (least-squares calibration first). ``k`` (K x K, K = S + 2r) holds the probe
blur, the detector's pixel response and any residual misregistration; ridge-regularised least squares over the
pairs' pixels. :meth:`ForwardModel.degrade` applies (1) to any S-times grid (half-sample symmetric borders).

**Consistency** of an output ``SR`` of ``LR`` (:func:`data_consistency`):

    ρ = rms(LR − D(SR)) / σ_LR,        σ_LR = estimate_noise_sigma(LR)                                  (2)

ρ ≈ 1: the output explains its input up to the noise of the fast scan (a faithful denoised estimate leaves only
that noise); ρ well above 1: the output departs from its own input more than the noise allows (detail invented,
a model applied out of its domain). Bicubic interpolates its input, so its ρ sits below 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .image_ops import upsample_bicubic
from .metrics import fit_intensity_coefficients
from .noise import estimate_noise_sigma

__all__ = ["ForwardModel", "fit_forward_model", "merge_forward_models", "data_consistency", "local_consistency",
           "consistency_residual", "consistency_ratio", "FLAG_RATIO"]

#: ρ above which a served frame is flagged: its departure from its own input is clearly beyond the LR noise.
#: The HR reference scans of the six scored ``sem_pairs`` pairs themselves (forward model fitted on the left 75 %
#: of each overlap, ρ on the 3 subimages of the right 25 %) reach ρ = 0.86-1.78 on 17 of 18 subimages and 3.9 on
#: one of pair08, where the specimen visibly changed between the scans; bicubic 0.45-1.17
#: (``tests/models/test_consistency.py`` checks two pairs).
FLAG_RATIO = 2.0


@dataclass(frozen=True)
class ForwardModel:
    """Equation (1): ``kernel`` (K x K, K = ``scale`` + 2 ``radius``) and ``offset`` c, LR intensity units;
    ``pixels``: how many LR pixels it was fitted on (the weight of :func:`merge_forward_models`)."""

    scale: int
    radius: int
    kernel: np.ndarray
    offset: float
    pixels: int = 0

    def __post_init__(self) -> None:
        size = self.scale + 2 * self.radius
        if self.scale < 1 or self.radius < 0 or np.shape(self.kernel) != (size, size):
            raise ValueError(f"forward model: kernel {np.shape(self.kernel)} must be {size} x {size} "
                             f"(scale {self.scale}, radius {self.radius})")
        if not np.all(np.isfinite(self.kernel)) or not np.isfinite(self.offset):
            raise ValueError("forward model: kernel and offset must be finite")

    def degrade(self, hr: np.ndarray, *, block_rows: int = 16) -> np.ndarray:
        """(S·h, S·w) HR grid (any real dtype) -> (h, w) float64 LR prediction by equation (1), ``block_rows`` LR
        rows at a time (memory: that many rows of the HR grid in float64, whatever its size). Each kernel tap is one
        strided multiply-add over the block: about 90 ms for a 1536 x 1024 LR frame at S = 4 on one core, on the
        serving path of every frame."""
        s, r = self.scale, self.radius
        if np.ndim(hr) != 2 or hr.shape[0] % s or hr.shape[1] % s or min(hr.shape) < s:
            raise ValueError(f"forward model: HR grid {np.shape(hr)} is not a whole number of {s} x {s} blocks")
        h, w = hr.shape[0] // s, hr.shape[1] // s
        out = np.empty((h, w))
        for y0, y1, rows in _row_blocks(hr, s, r, block_rows):
            block = out[y0:y1]
            block.fill(self.offset)
            for u in range(s + 2 * r):
                for v in range(s + 2 * r):
                    block += self.kernel[u, v] * rows[u:u + s * (y1 - y0):s, v:v + s * w:s]
        return out


def _row_blocks(hr: np.ndarray, scale: int, radius: int, block_rows: int):
    """Yield (y0, y1, rows): LR rows y0..y1 and the HR rows they see (``radius`` beyond on every side, half-sample
    symmetric at the grid's edges), float64."""
    h = hr.shape[0] // scale
    for y0 in range(0, h, block_rows):
        y1 = min(y0 + block_rows, h)
        top, bottom = scale * y0 - radius, scale * y1 + radius
        rows = np.asarray(hr[max(top, 0):min(bottom, hr.shape[0])], dtype=np.float64)
        pad = ((max(-top, 0), max(bottom - hr.shape[0], 0)), (radius, radius))
        yield y0, y1, np.pad(rows, pad, mode="symmetric") if radius else rows


def _block_design(rows: np.ndarray, scale: int, radius: int, h: int, w: int) -> np.ndarray:
    """(h·w, K²) rows of equation (1) for ``h`` LR rows whose padded HR rows are ``rows``."""
    size = scale + 2 * radius
    cols = [rows[u:u + scale * h:scale, v:v + scale * w:scale].ravel() for u in range(size) for v in range(size)]
    return np.stack(cols, axis=1)


def fit_forward_model(regions: Sequence[tuple[np.ndarray, np.ndarray]], *, scale: int, radius: int = 1,
                      ridge: float = 1e-3, block_rows: int = 64) -> ForwardModel:
    """Least-squares fit of equation (1) on registered pairs.

    The normal equations are accumulated over blocks of ``block_rows`` LR rows, so memory stays at
    ``block_rows`` x w x K² doubles whatever the size of the pairs.

    Parameters
    ----------
    regions : sequence of (lr_region (h, w), hr_grid (S·h, S·w))
        The session's registered training areas, HR in any units (calibrated into LR units here, against the
        bicubic-upsampled LR, as the networks' targets are).
    scale : int
        S.
    radius : int
        r: HR px of support beyond each LR pixel's own block on every side.
    ridge : float
        Tikhonov weight on the kernel, relative to the mean diagonal of the centred normal matrix.

    Raises
    ------
    ValueError
        Without regions, for a mismatched grid, or with fewer LR pixels than 4 x the unknowns.
    """
    scale = int(scale)
    if not len(regions):
        raise ValueError("forward model: needs at least one registered LR/HR pair")
    size = scale + 2 * radius
    n, shift = 0, None  # sums of (x - shift, y - shift): no cancellation with 16-bit intensities
    sum_x, sum_y = np.zeros(size * size), 0.0
    xtx, xty = np.zeros((size * size, size * size)), np.zeros(size * size)
    for index, (lr, hr) in enumerate(regions):
        lr, hr = np.asarray(lr, np.float64), np.asarray(hr, np.float64)
        if lr.ndim != 2 or hr.shape != (scale * lr.shape[0], scale * lr.shape[1]):
            raise ValueError(f"forward model: region {index}: HR grid {hr.shape} must be {scale} x the LR "
                             f"region {lr.shape}")
        shift = float(lr.mean()) if shift is None else shift
        a, b = fit_intensity_coefficients(hr, upsample_bicubic(lr, scale))
        for y0, y1, rows in _row_blocks(a * hr + (b - shift), scale, radius, block_rows):
            x = _block_design(rows, scale, radius, y1 - y0, lr.shape[1])
            y = lr[y0:y1].ravel() - shift
            n += len(y)
            sum_x += x.sum(axis=0)
            sum_y += float(y.sum())
            xtx += x.T @ x
            xty += x.T @ y
    unknowns = size * size + 1
    if n < 4 * unknowns:
        raise ValueError(f"forward model: {n} LR pixels are too few for {unknowns} unknowns")
    mean_x, mean_y = sum_x / n, sum_y / n
    normal = xtx - n * np.outer(mean_x, mean_x)  # centred: the offset is solved for separately
    normal[np.diag_indices_from(normal)] += ridge * float(np.mean(np.diag(normal)) or 1.0)
    k = np.linalg.solve(normal, xty - n * mean_x * mean_y)
    # y - shift = k . (x - shift) + c'  =>  y = k . x + c' + shift (1 - sum k)
    offset = float(mean_y - mean_x @ k) + shift * (1.0 - float(k.sum()))
    return ForwardModel(scale, radius, k.reshape(size, size), offset, int(n))


def merge_forward_models(old: ForwardModel | None, new: ForwardModel | None) -> ForwardModel | None:
    """The forward model of a library extended by new pairs: kernel and offset averaged with the LR pixel counts
    as weights (the joint least-squares fit when both sets of pairs have the same statistics). None-safe."""
    if old is None or new is None:
        return new if old is None else old
    if (old.scale, old.radius) != (new.scale, new.radius):
        raise ValueError(f"forward models of scale/radius {old.scale}/{old.radius} and {new.scale}/{new.radius} "
                         f"cannot be merged")
    w_old, w_new = max(old.pixels, 1), max(new.pixels, 1)
    total = w_old + w_new
    return ForwardModel(old.scale, old.radius, (w_old * old.kernel + w_new * new.kernel) / total,
                        (w_old * old.offset + w_new * new.offset) / total, old.pixels + new.pixels)


def consistency_residual(lr: np.ndarray, sr: np.ndarray, model: ForwardModel) -> np.ndarray:
    """``LR − D(SR)`` of equation (2): (h, w) float64 for an (S·h, S·w) output ``sr`` of ``lr`` (one pass of the
    forward model; :func:`data_consistency` and :func:`local_consistency` take it when already computed)."""
    lr = np.asarray(lr, dtype=np.float64)
    sr = np.asarray(sr)
    if sr.shape != (model.scale * lr.shape[0], model.scale * lr.shape[1]):
        raise ValueError(f"data consistency: output {sr.shape} is not {model.scale} x the input {lr.shape}")
    return lr - model.degrade(sr)


def consistency_ratio(rms: float, noise: float) -> float:
    """ρ = ``rms / noise``: ``inf`` for a noise-free LR with any residual, 0.0 when both vanish."""
    if noise > 0:
        return float(rms) / float(noise)
    return 0.0 if rms == 0 else float("inf")


def data_consistency(lr: np.ndarray, sr: np.ndarray, model: ForwardModel, *, sigma: float | None = None,
                     residual: np.ndarray | None = None) -> float:
    """ρ of equation (2): rms(LR − D(SR)) over the LR noise σ (estimated from ``lr`` unless given).

    ``sr`` is (S·h, S·w) in the LR's intensity units; ``residual``: :func:`consistency_residual` of ``lr`` and
    ``sr`` when already computed. Returns ``inf`` for a noise-free LR with any residual and 0.0 when both vanish.
    """
    if residual is None:
        residual = consistency_residual(lr, sr, model)
    rms = float(np.sqrt(np.mean(residual ** 2)))
    return consistency_ratio(rms, estimate_noise_sigma(np.asarray(lr, np.float64)) if sigma is None else float(sigma))


def local_consistency(lr: np.ndarray, sr: np.ndarray, model: ForwardModel, *, window: int = 8,
                      sigma: float | None = None, residual: np.ndarray | None = None) -> np.ndarray:
    """Equation (2) over a ``window`` x ``window`` LR px neighbourhood of every LR pixel: (h, w) float64,
    ``sqrt(box_mean(( LR − D(SR))²)) / σ`` (reflecting borders; σ estimated from ``lr`` unless given). Where a
    model departs from its own input more than the noise allows -- a texture it renders wrongly -- this rises
    far above 1 there, while the frame's ρ may hide it. ``residual``: :func:`consistency_residual` when already
    computed."""
    if int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1 LR px, got {window!r}")
    if residual is None:
        residual = consistency_residual(lr, sr, model)
    noise = estimate_noise_sigma(np.asarray(lr, np.float64)) if sigma is None else float(sigma)
    rms = np.sqrt(np.maximum(ndimage.uniform_filter(residual * residual, int(window), mode="reflect"), 0.0))
    if noise > 0:
        return rms / noise
    return np.where(rms == 0, 0.0, np.inf)
