"""Drift-corrected multi-frame fusion of repeated LR frames of one field (pure: arrays in, arrays out).

A live acquisition scans the same field again and again, drifting by fractions of a pixel between frames. The
newest frame is the *reference*; every older frame of the window is

1. **registered** to it -- shift and small rotation, by the global registration of :mod:`.registration`
   (:func:`~.registration.register_global` at factor 1 on the central part of the older frame, see
   :func:`~.frame_motion.register_frame`) -- giving a :class:`~.frame_motion.FrameMotion` ``u_i = A u + b`` from
   the reference's pixel-edge coordinates ``u`` (LR px, ``(y, x)``) to the older frame's;
2. **warped** onto the reference grid (:func:`~.frame_motion.warp_frame`, bilinear or cubic spline);
3. **tested** tile by tile: with ``d = f_i - f_0`` (warped older frame minus reference) and σ(u) the
   reference's noise at the intensity of each of its pixels (its noise-level function,
   :func:`~.noise.estimate_noise_curve`: SEM noise is mostly shot noise, larger where the specimen is bright), a
   tile of ``tile`` x ``tile`` px is kept only when ``mean(d²) <= residual_ratio · 2 mean(σ²)`` -- pure noise
   gives ``E[d²] ≈ 2σ²``, a region whose content changed (a moving object, a focus or contrast change) gives far
   more. Rejected tiles are grown by one tile on every side, and single pixels with ``|d| > pixel_k · √2 σ`` are
   dropped too, so a moving region falls back to the reference frame there and nothing ghosts. With
   :attr:`FusionConfig.match_intensity` the slowly varying part of ``d`` (a brightness drift) is first taken
   off the older frame;
4. **fused** by a weighted mean on the LR grid, ``F = Σ_i w_i f_i / Σ_i w_i`` with ``w_0 = 1`` and
   ``w_i ∈ {0, 1}`` from the test (:func:`fuse_frames`). Where ``n`` frames agree the noise drops by about
   ``1/√n``; the per-pixel count ``n`` is returned with the image.

The tile test keeps or drops a whole tile, so two scans minutes apart whose content differs at *low* spatial
frequencies (a brightness drift, charging) while their high frequencies are the same specimen plus noise are not
fused at all there. With :attr:`FusionConfig.merge` ``= "spectral"`` steps 3-4 are instead the pairwise Wiener merge
of Hasinoff et al. (2016, Sec. 5): per 16 px tile (overlapping by half) and per spatial frequency, an older frame's
difference to the reference is kept in proportion ``1 - A``, ``A = |D|² / (|D|² + c σ²)`` -- a frequency where the
frames differ by far more than noise is the reference's, one where they differ by noise is averaged. A per-pixel
test on the difference with its slowly varying part taken off (a moving object, not a drift) first puts the
reference's pixels in place of an older frame's where the content changed, as the per-bin weights alone let a faint
ghost of a moving object through (:func:`_merge_spectral`). The count is then the effective number of frames.

:func:`fuse_fine` is the shift-and-add variant onto an ``S``-times finer grid: every kept sample of every frame
is placed at its registered position on the fine grid of the reference and the samples are merged by normalised
convolution with a Gaussian kernel (Knutsson & Westin 1993; kernel regression, Takeda et al. 2007). When the
drift spreads the frames over different sub-pixel phases (:func:`subpixel_diversity`) this samples the specimen
at positions no single frame has: detail beyond a single frame's Nyquist limit. Where too few samples land, the
bicubic upsampling of the LR fusion is used.

Memory: the window's frames are the caller's; each call holds about ``(N + 8)·H·W`` float64 values
(``N`` frames of ``H x W``; measured with ``tracemalloc``: the warped frame, the test's masks and temporaries), with
the spectral merge ``(N + 14)·H·W`` (one older frame at a time: its float32 tiles, which overlap 4-fold, and their
spectra, the accumulated correction); :func:`fuse_fine` ``(N + 6)·S²·H·W``.

References
----------
.. [1] Farsiu, Robinson, Elad & Milanfar, "Fast and robust multiframe super resolution", IEEE TIP 13 (2004).
.. [2] Knutsson & Westin, "Normalized and differential convolution", CVPR 1993.
.. [3] Takeda, Farsiu & Milanfar, "Kernel regression for image processing and reconstruction", IEEE TIP 16 (2007).
.. [4] Hasinoff, Sharlet, Geiss, Adams, Barron, Kainz, Chen & Levoy, "Burst photography for high dynamic range and
   low-light imaging on mobile cameras", ACM TOG 35(6), SIGGRAPH Asia 2016, Sec. 5 (the pairwise Wiener merge).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from .errors import ImageError, RegistrationError
from .frame_motion import FrameMotion, _grid, register_frame, spline_coefficients, warp_frame
from .fusion_config import FusionConfig
from .image_ops import as_gray_float, upsample_bicubic
from .noise import estimate_noise_curve, estimate_noise_sigma_quantised
from .tile_spectra import (analysis_window, blur_noise_gain2, overlap_add, tile_view, window_interpolate,
                           window_value_at)

# FusionConfig, FrameMotion, register_frame, spline_coefficients and warp_frame live in .fusion_config and
# .frame_motion; this module is where callers find the whole fusion
__all__ = ["FusionConfig", "FrameMotion", "FusionResult", "register_frame", "spline_coefficients", "warp_frame",
           "fuse_frames", "fuse_fine", "subpixel_diversity", "count_confidence"]


@dataclass(frozen=True, eq=False)
class FusionResult:
    """One fused frame.

    Attributes:
        image: (H, W) float64 (LR grid, :func:`fuse_frames`) or (S·H, S·W) (:func:`fuse_fine`), the frames'
            intensity units.
        count: (H, W) uint16 number of frames used at each LR pixel (1 = the reference alone); for the spectral
            merge the effective count rounded (at least 1), see ``effective_count``.
        n_frames: frames offered (reference included).
        noise_sigma: σ of the reference frame (its units), from :func:`~.noise.estimate_noise_sigma_quantised`.
        rejected_fraction: share of (older frame, pixel) samples inside the frame that the test dropped (spectral
            merge: the share of their weight, ``1 - Σ e / offered`` with ``e`` as in ``effective_count``).
        effective_count: (H, W) float32, spectral merge only (None otherwise): ``1 + Σ_z e_z`` with ``e_z`` the
            mean over the tile's ``T²`` frequencies of older frame z's weight ``1 - A_z`` (1: fused in full, 0:
            not at all), overlap-added with the analysis window, 0 where its pixel test failed. N where every
            frequency of every frame is fused in full, as for pure noise a little less (:func:`fuse_frames`).
    """

    image: np.ndarray
    count: np.ndarray
    n_frames: int
    noise_sigma: float
    rejected_fraction: float
    effective_count: np.ndarray | None = None

    @property
    def mean_count(self) -> float:
        """Mean frames per pixel."""
        return float(self.count.mean())


def _tile_mean(values: np.ndarray, mask: np.ndarray, tile: int) -> np.ndarray:
    """Mean of ``values`` over the ``mask`` pixels of each tile (tiles of ``tile`` px, the last ones smaller);
    NaN for a tile without mask pixels. Shape ``(ceil(H/tile), ceil(W/tile))``."""
    h, w = values.shape
    rows, cols = np.arange(0, h, tile), np.arange(0, w, tile)

    def tile_sums(a: np.ndarray) -> np.ndarray:
        return np.add.reduceat(np.add.reduceat(a, rows, axis=0), cols, axis=1)

    v = tile_sums(np.where(mask, values, 0.0))
    n = tile_sums(mask.astype(np.float64))
    return np.divide(v, n, out=np.full_like(v, np.nan), where=n > 0)


def _agreement(warped: np.ndarray, valid: np.ndarray, ref: np.ndarray, var: float | np.ndarray,
               config: FusionConfig) -> np.ndarray:
    """Bool (H, W): where the warped older frame agrees with the reference (see the module docstring, step 3).
    ``var``: one frame's noise variance, a number or one per tile (``ceil(H/tile), ceil(W/tile)``)."""
    d = warped - ref
    h, w = ref.shape
    tiles = _tile_mean(d * d, valid, config.tile)
    var = np.maximum(np.broadcast_to(var, tiles.shape), 1e-24)
    bad = ~(tiles <= config.residual_ratio * 2.0 * var)  # NaN (no valid pixel) counts as bad
    bad = ndimage.binary_dilation(bad, structure=np.ones((3, 3), bool))
    bad_px = np.repeat(np.repeat(bad, config.tile, axis=0), config.tile, axis=1)[:h, :w]
    limit = np.repeat(np.repeat(config.pixel_k ** 2 * 2.0 * var, config.tile, axis=0), config.tile, axis=1)[:h, :w]
    return valid & ~bad_px & (d * d <= limit)


def _intensity_offset(d: np.ndarray, valid: np.ndarray, tile: int, *, fast: bool = False) -> np.ndarray:
    """Slowly varying part of the difference ``d`` (H, W) over the ``valid`` pixels: the median of each tile of
    ``tile`` px (tiles with fewer than half their pixels valid take the median of the others), median filtered over
    5 x 5 tiles (a changed region smaller than that does not move it) and interpolated bilinearly between tile
    centres. Same units as ``d`` (float32 with ``fast``). ``fast`` (the spectral merge's pixel test, on the live
    path): the medians of every fourth pixel along each axis (16 of a 16 px tile's 256: ~0.3σ of noise per tile,
    ~0.1σ after the 5 x 5-tile median filter, against a test threshold of several σ) and the interpolation as two
    1-D passes (equal to the 2-D resampling up to rounding); ~2 ms instead of ~15 on a 640 x 472 frame."""
    h, w = d.shape
    th, tw = -(-h // tile), -(-w // tile)
    step = 4 if fast and tile % 4 == 0 else 1
    sub = tile // step
    pad = ((0, th * sub - -(-h // step)), (0, tw * sub - -(-w // step)))
    cells = np.pad(np.where(valid[::step, ::step], d[::step, ::step], np.nan), pad, constant_values=np.nan)
    cells = cells.reshape(th, sub, tw, sub).transpose(0, 2, 1, 3).reshape(th, tw, sub * sub)
    finite = np.isfinite(cells).sum(axis=2)
    enough = finite >= sub * sub // 2
    if not enough.any():
        return np.zeros_like(d)
    medians = np.full((th, tw), np.nan)
    full, part = finite == sub * sub, enough & (finite < sub * sub)
    medians[full] = np.median(cells[full], axis=1)  # the same values as nanmedian, without its masked-array path
    if part.any() and fast:  # sorted, NaN last: the middle of each row's finite values
        ordered, k = np.sort(cells[part], axis=1), finite[part]
        rows = np.arange(k.size)
        medians[part] = 0.5 * (ordered[rows, (k - 1) // 2].astype(np.float64) + ordered[rows, k // 2])
    elif part.any():
        medians[part] = np.nanmedian(cells[part], axis=1)
    medians[~enough] = np.median(medians[enough])
    medians = ndimage.median_filter(medians, size=5, mode="nearest")
    ys = np.clip((np.arange(h) + 0.5) / tile - 0.5, 0, th - 1)
    xs = np.clip((np.arange(w) + 0.5) / tile - 0.5, 0, tw - 1)
    if fast:  # float32: the offset only sets a threshold
        def taps(pos: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            i0 = np.minimum(np.floor(pos).astype(np.intp), max(m - 2, 0))
            return i0, np.minimum(i0 + 1, m - 1), (pos - i0).astype(np.float32)

        y0, y1, fy = taps(ys, th)
        x0, x1, fx = taps(xs, tw)
        m32 = medians.astype(np.float32)
        rows = m32[:, x0] * (1 - fx) + m32[:, x1] * fx
        return rows[y0] * (1 - fy)[:, None] + rows[y1] * fy[:, None]
    return ndimage.map_coordinates(medians, np.meshgrid(ys, xs, indexing="ij"), order=1, mode="nearest")


def _spectral_keep(d: np.ndarray, valid: np.ndarray, limit: float | np.ndarray, config: FusionConfig) -> np.ndarray:
    """Bool (H, W): the older frame's pixels the spectral merge may use -- valid, and not part of a changed object:
    ``(G * (d - o))² <= limit`` with ``d = f_i - f_0`` (float32, (H, W)), ``o`` its slowly varying part
    (:func:`_intensity_offset`: a brightness drift is left to the merge's low-frequency bins) and ``G`` the Gaussian of
    ``spectral_blur_px`` (none at 0); ``limit`` (a number or (H, W)) is ``spectral_k² · 2σ² · g²``
    (:func:`_merge_spectral`). Failing pixels are grown by ``spectral_dilate_px`` (a square of ``2r + 1`` px)."""
    z = d - _intensity_offset(d, valid, config.tile, fast=True)
    np.multiply(z, valid, out=z)
    if config.spectral_blur_px > 0:
        z = ndimage.gaussian_filter(z, config.spectral_blur_px, mode="nearest")
    bad = z * z > limit
    for axis in (0, 1):  # grow by r px along each axis: a (2r + 1)² square (shifted ORs; failures are sparse)
        grown = bad.copy()
        for k in range(1, int(config.spectral_dilate_px) + 1):
            lo, hi = [slice(None)] * 2, [slice(None)] * 2
            lo[axis], hi[axis] = slice(None, -k), slice(k, None)
            grown[tuple(hi)] |= bad[tuple(lo)]
            grown[tuple(lo)] |= bad[tuple(hi)]
        bad = grown
    return valid & ~bad


def _merge_spectral(ref: np.ndarray, warps: Iterator[tuple[np.ndarray, np.ndarray]], var: float | np.ndarray,
                    noise_var: Callable[[np.ndarray], np.ndarray], config: FusionConfig
                    ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """The pairwise Wiener merge of Hasinoff et al. (2016, Sec. 5), as a correction of the reference.

    Tiles of ``T = config.tile`` px at stride ``T/2`` (the frame reflect-padded by ``T/2``: every pixel lies in four
    tiles), analysis window ``w`` (:func:`~.tile_spectra.analysis_window`). For older frame z with difference ``d_z = f_0 - f_z`` (0
    where the warp is invalid or :func:`_spectral_keep` fails), per tile ``D_z = rfft2(w · d_z)`` (batched over a
    strided view of all tiles), the noise per bin ``σ²_bin = σ²(m) Σ w²`` at the tile's windowed mean ``m`` of the
    reference (its noise-level function), ``A_z = |D_z|² / (|D_z|² + c σ²_bin)`` and the merged spectrum
    ``F0 - Σ_z (1 - A_z) D_z / N`` -- the same as Hasinoff's ``(F0 + Σ_z [Fz + A_z (F0 - Fz)]) / N``. Because the
    windows sum to 1 and the transform is linear, only the correction is transformed back and overlap-added, and the
    reference itself is never resampled: identical frames give the reference. The correction is computed in float32
    (it is of noise size).

    ``var``: one frame's noise variance for the pixel test, a number or one per tile of ``config.tile``.
    Returns (image (H, W) float64, effective count (H, W) float32 >= 1, kept weight, offered samples).
    """
    t, (h, w) = config.tile, ref.shape
    s = t // 2
    ny, nx = -(-h // s) + 1, -(-w // s) + 1
    shape = ((ny + 1) * s, (nx + 1) * s)
    pads = ((s, shape[0] - h - s), (s, shape[1] - w - s))
    crop = (slice(s, s + h), slice(s, s + w))
    window = analysis_window(t)
    ref32 = ref.astype(np.float32)
    mean = np.einsum("ijkl,kl->ij", tile_view(np.pad(ref32, pads, mode="reflect"), t), window) / window.sum()
    c_var = config.spectral_c * float(np.sum(window.astype(np.float64) ** 2)) * np.maximum(noise_var(mean), 1e-24)
    c_var = c_var.astype(np.float32)[..., None, None]
    limit = config.spectral_k ** 2 * 2.0 * blur_noise_gain2(config.spectral_blur_px) * np.maximum(var, 1e-24)
    if np.ndim(limit):
        limit = np.repeat(np.repeat(limit, t, axis=0), t, axis=1)[:h, :w].astype(np.float32)
    # the mean over the full T x T spectrum from the rfft half: inner columns stand for two bins each
    bins = np.full(t // 2 + 1, 2.0 / (t * t), dtype=np.float32)
    bins[0] = bins[-1] = 1.0 / (t * t)
    correction, shares = None, np.zeros((ny, nx))
    lost = np.zeros((h, w), dtype=np.float32)  # the weight of the samples the pixel tests dropped
    offered, n = 0, 1
    for warped, valid in warps:
        diff = np.subtract(warped, ref32, dtype=np.float32)  # f_z - f_0 = -d_z: the sign is restored at the end
        keep = _spectral_keep(diff, valid, limit, config)
        np.multiply(diff, keep, out=diff)
        spectrum = scipy.fft.rfft2(tile_view(np.pad(diff, pads, mode="reflect"), t) * window)
        weight = spectrum.real ** 2
        weight += spectrum.imag ** 2
        weight += c_var
        np.divide(c_var, weight, out=weight)  # 1 - A_z: the share of this bin of frame z that is fused
        spectrum *= weight
        if correction is None:
            correction = spectrum
        else:
            correction += spectrum
        share = np.einsum("ijkl,l->ij", weight, bins)
        shares += share
        fy, fx = np.nonzero(~keep)  # few: the frame's border and the changed objects
        lost[fy, fx] += window_value_at(share, fy + s, fx + s, t)
        offered += int(np.count_nonzero(valid))
        n += 1
    effective = window_interpolate(shares, shape, t)[crop] - lost
    kept = float(effective.sum(dtype=np.float64))
    effective += 1.0
    if correction is None:
        return ref.copy(), effective, kept, offered
    back = scipy.fft.irfft2(correction, s=(t, t), axes=(-2, -1))
    return ref + overlap_add(back, shape)[crop] / n, effective, kept, offered


def _check_stack(frames: Sequence[np.ndarray], motions: Sequence[FrameMotion] | None,
                 cached: Sequence[bool] | None = None) -> list[np.ndarray]:
    if len(frames) == 0:
        raise ImageError("fusion needs at least one frame (the reference)")
    arrays = [np.asarray(f) if cached is not None and cached[i] else as_gray_float(f, name=f"frame {i}")
              for i, f in enumerate(frames)]
    shape = arrays[0].shape
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape != shape:
            raise ImageError(f"frame {i} has shape {a.shape}, the reference {shape}: frames of one field must have "
                             "one shape (a change of frame size starts a new window)")
    if motions is not None and len(motions) != len(arrays):
        raise ValueError(f"{len(motions)} motions for {len(arrays)} frames (one per frame, the reference's first)")
    return arrays


def _prepare(frames: Sequence[np.ndarray], motions: Sequence[FrameMotion | None] | None, noise_sigma: float | None,
             config: FusionConfig, cached: Sequence[bool] | None = None
             ) -> tuple[list[np.ndarray], list[FrameMotion | None], float, float | np.ndarray,
                        Callable[[np.ndarray], np.ndarray]]:
    """Frames, motions, the reference's σ, the noise variance the residual test expects (a number when
    ``noise_sigma`` is given, else one per tile from the reference's noise curve) and the noise model: σ² at given
    intensities (an array of them)."""
    arrays = _check_stack(frames, motions, cached)
    ref = arrays[0]
    if noise_sigma is not None:
        sigma = float(noise_sigma)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"noise_sigma must be a finite number >= 0, got {noise_sigma!r}")
        var: float | np.ndarray = sigma * sigma

        def noise_var(levels: np.ndarray) -> np.ndarray:
            return np.full(np.shape(levels), sigma * sigma)
    else:
        sigma = estimate_noise_sigma_quantised(ref)
        levels, sigmas = estimate_noise_curve(ref)
        # σ² at each tile's mean intensity (the noise-level function varies slowly with intensity)
        var = np.interp(_tile_mean(ref, np.ones(ref.shape, bool), config.tile), levels, sigmas) ** 2

        def noise_var(at: np.ndarray) -> np.ndarray:
            return np.interp(at, levels, sigmas) ** 2
    found: list[FrameMotion | None] = [FrameMotion.identity()]
    for i, a in enumerate(arrays[1:], start=1):
        given = motions[i] if motions is not None else None
        if given is None and motions is None:
            try:
                given = register_frame(ref, a, config=config)
            except RegistrationError:
                given = None  # the scene changed: this frame is not used
        found.append(given)
    return arrays, found, sigma, var, noise_var


def fuse_frames(frames: Sequence[np.ndarray], *, motions: Sequence[FrameMotion | None] | None = None,
                noise_sigma: float | None = None, config: FusionConfig = FusionConfig(),
                coefficients: Sequence[np.ndarray | None] | None = None) -> FusionResult:
    """Fuse a window of frames of one field onto the grid of the reference ``frames[0]`` (the newest).

    ``F(u) = Σ_i w_i(u) f_i(A_i u + b_i) / Σ_i w_i(u)``, with ``w_0 = 1`` and ``w_i ∈ {0, 1}`` from the tile and
    pixel residual tests (module docstring). Farsiu et al.'s robust shift-and-add on the LR grid.

    With ``config.merge == "spectral"``: per tile ``T`` of ``config.tile`` px at stride ``T/2`` and per spatial
    frequency, ``F̂ = F̂_0 - Σ_z (1 - A_z) D_z / N`` with ``D_z = F̂_0 - F̂_z`` the windowed tile spectra's difference,
    ``A_z = |D_z|² / (|D_z|² + c σ²_bin)`` and ``σ²_bin = σ²(m) Σ w²`` (``σ(m)`` the reference's noise at the tile's
    mean ``m``, ``c = config.spectral_c``) -- Hasinoff et al. (2016, Sec. 5); older-frame pixels failing the pixel test
    (``spectral_k``, ``spectral_dilate_px``, ``spectral_blur_px``) are the reference's first. ``count`` is then the
    effective count ``1 + Σ_z e_z`` rounded (at least 1), with ``e_z`` the mean of ``1 - A_z`` over the tile's
    ``T²`` frequencies overlap-added with the window (0 where the pixel test failed); the unrounded map is
    ``effective_count``. For pure noise ``e_z = E[c / (2X + c)]`` with ``|D|² / σ²_bin = 2X``, ``X ~ Exp(1)``:
    0.83 at c = 8, 0.94 at c = 32, 0.97 at c = 64, and the fused noise is a little above ``σ/√N`` (the weights
    keep part of each difference).

    Parameters
    ----------
    frames : sequence of (H, W) arrays
        The reference first, then older frames (any real dtype, same shape).
    motions : sequence of FrameMotion or None, optional
        Reference -> frame maps, one per frame (``motions[0]`` is ignored); an entry None drops that frame.
        Not given: each frame is registered to the reference (:func:`register_frame`), and one that does not
        match is dropped.
    noise_sigma : float, optional
        σ of a single frame, in its units, the same everywhere (default: the reference's noise-level function,
        :func:`~.noise.estimate_noise_curve`, evaluated at each reference pixel).
    coefficients : sequence of (H, W) arrays or None, optional
        Each older frame's :func:`spline_coefficients` at ``config.order``, computed before (a live window keeps
        them: every older frame was the newest once), or None to compute them here; ``coefficients[0]`` is
        ignored. A frame with coefficients is taken as already validated (it is not converted again).

    Returns
    -------
    FusionResult
        ``image`` (H, W) float64 and ``count`` (H, W): the frames used per pixel (spectral merge: the effective
        count, rounded; ``effective_count`` unrounded).

    Raises
    ------
    ImageError
        No frames, or frames of different shapes.
    ValueError
        ``motions`` or ``coefficients`` of the wrong length, or a ``noise_sigma`` that is not a finite number
        >= 0.
    """
    if coefficients is not None and len(coefficients) != len(frames):
        raise ValueError(f"{len(coefficients)} coefficient arrays for {len(frames)} frames (one per frame, the "
                         "reference's first, None where not computed)")
    cached = [False] + [c is not None for c in (coefficients or [None] * len(frames))[1:]]
    arrays, found, sigma, var, noise_var = _prepare(frames, motions, noise_sigma, config, cached=cached)
    ref = arrays[0]
    if config.merge == "spectral":
        warps = (warp_frame(a, motion, order=config.order, shift_only_px=config.shift_only_px,
                            coefficients=coefficients[i] if coefficients is not None else None)
                 for i, (a, motion) in enumerate(zip(arrays[1:], found[1:]), start=1) if motion is not None)
        image, effective, kept, offered = _merge_spectral(ref, warps, var, noise_var, config)
        offered += ref.size * sum(1 for m in found[1:] if m is None)
        rejected = 1.0 - kept / offered if offered else 0.0
        count = np.maximum(np.rint(effective), 1).astype(np.uint16)
        return FusionResult(image, count, len(arrays), sigma, float(min(max(rejected, 0.0), 1.0)),
                            effective.astype(np.float32))
    total = ref.copy()
    count = np.ones(ref.shape, dtype=np.uint16)
    offered = kept = 0
    for i, (a, motion) in enumerate(zip(arrays[1:], found[1:]), start=1):
        if motion is None:
            offered += ref.size
            continue
        coef = coefficients[i] if coefficients is not None else None
        warped, valid = warp_frame(a, motion, order=config.order, shift_only_px=config.shift_only_px,
                                   coefficients=coef)
        if config.match_intensity:
            warped = warped - _intensity_offset(warped - ref, valid, config.tile)
        ok = _agreement(warped, valid, ref, var, config)
        total += np.where(ok, warped, 0.0)
        count += ok
        offered += int(valid.sum())
        kept += int(ok.sum())
    rejected = 1.0 - kept / offered if offered else 0.0
    return FusionResult(total / count, count, len(arrays), sigma, float(rejected))


def subpixel_diversity(motions: Sequence[FrameMotion | None], shape: tuple[int, int], *, scale: int = 2) -> float:
    """Share of the ``scale²`` sub-pixel phases of the fine grid that the frames' shifts occupy (0 to 1).

    Each frame's shift at the centre (:meth:`FrameMotion.shift_yx`) modulo one LR px is binned into ``scale x
    scale`` phase cells; 1/scale² means every frame samples the same positions (no gain from a finer grid), 1
    means every phase is sampled.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale!r}")
    cells = set()
    for m in motions:
        if m is None:
            continue
        dy, dx = m.shift_yx(shape)
        cells.add((int(math.floor((dy % 1.0) * scale)) % scale, int(math.floor((dx % 1.0) * scale)) % scale))
    return len(cells) / float(scale * scale)


def fuse_fine(frames: Sequence[np.ndarray], *, scale: int = 2, motions: Sequence[FrameMotion | None] | None = None,
              noise_sigma: float | None = None, kernel_sigma: float = 0.6, min_weight: float = 0.25,
              config: FusionConfig = FusionConfig()) -> FusionResult:
    """Shift-and-add onto the reference's grid refined ``scale`` times (normalised-convolution kernel regression).

    Every sample ``f_i[p]`` kept by the residual test (the tile and pixel test of :func:`fuse_frames`'s
    ``merge="tiles"``, whatever ``config.merge`` says: a sample is placed or not, it has no per-frequency weight;
    evaluated at the reference pixel the sample lands on) is placed at its position ``S · A_i⁻¹(p + 0.5 - b_i)`` on the
    fine grid and spread bilinearly to the four nearest fine nodes; the sums of values and of weights are smoothed by a
    Gaussian of ``kernel_sigma`` fine px, ``F = G * (Σ w f) / G * (Σ w)`` (Knutsson & Westin's normalised convolution).
    Where ``G * Σ w`` is below ``min_weight`` (a hole), the bicubic upsampling of the LR fusion fills in.

    Returns
    -------
    FusionResult
        ``image`` (S·H, S·W) float64; ``count`` (H, W) as :func:`fuse_frames`.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if not kernel_sigma > 0 or not min_weight > 0:
        raise ValueError("kernel_sigma and min_weight must be > 0")
    arrays, found, sigma, var, _ = _prepare(frames, motions, noise_sigma, config)
    ref = arrays[0]
    h, w = ref.shape
    fh, fw = h * scale, w * scale
    num = np.zeros(fh * fw)
    den = np.zeros(fh * fw)
    total, count = ref.copy(), np.ones(ref.shape, dtype=np.uint16)
    centres = _grid((h, w))
    for a, motion in zip(arrays, found):
        if motion is None:
            continue
        if a is ref:
            keep_src = np.ones(ref.shape, bool)
            pos = centres
        else:
            warped, valid = warp_frame(a, motion, order=config.order, shift_only_px=config.shift_only_px)
            ok = _agreement(warped, valid, ref, var, config)
            total += np.where(ok, warped, 0.0)
            count += ok
            pos = motion.inverse_apply(centres)  # where each of this frame's samples lies in the reference
            iy = np.clip(np.floor(pos[..., 0]).astype(np.int64), 0, h - 1)
            ix = np.clip(np.floor(pos[..., 1]).astype(np.int64), 0, w - 1)
            inside = (pos[..., 0] >= 0) & (pos[..., 0] < h) & (pos[..., 1] >= 0) & (pos[..., 1] < w)
            keep_src = inside & ok[iy, ix]
        fy = pos[..., 0][keep_src] * scale - 0.5  # fine-grid index coordinates
        fx = pos[..., 1][keep_src] * scale - 0.5
        vals = a[keep_src]
        y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
        ty, tx = fy - y0, fx - x0
        for dy, wy in ((0, 1.0 - ty), (1, ty)):
            for dx, wx in ((0, 1.0 - tx), (1, tx)):
                yy, xx = y0 + dy, x0 + dx
                inb = (yy >= 0) & (yy < fh) & (xx >= 0) & (xx < fw)
                idx = yy[inb] * fw + xx[inb]
                wgt = (wy * wx)[inb]
                num += np.bincount(idx, weights=wgt * vals[inb], minlength=fh * fw)
                den += np.bincount(idx, weights=wgt, minlength=fh * fw)
    num_s = ndimage.gaussian_filter(num.reshape(fh, fw), kernel_sigma, mode="nearest")
    den_s = ndimage.gaussian_filter(den.reshape(fh, fw), kernel_sigma, mode="nearest")
    lr_fused = total / count
    fallback = upsample_bicubic(lr_fused, scale)
    image = np.where(den_s >= min_weight, num_s / np.maximum(den_s, 1e-12), fallback)
    offered = sum(1 for m in found[1:] if m is not None)
    rejected = 1.0 - (float(count.sum()) - count.size) / (offered * count.size) if offered else 0.0
    return FusionResult(image, count, len(arrays), sigma, float(min(max(rejected, 0.0), 1.0)))


def count_confidence(confidence: np.ndarray, count: np.ndarray, *, scale: int) -> np.ndarray:
    """Fold the per-pixel frame count into a confidence map: ``c' = c · sqrt(n / n_max)``.

    ``sqrt(n / n_max)`` is the noise of the fused pixel relative to the best-fused one (noise ∝ 1/√n), so a
    region where only the newest frame could be used (a moving object) gets a lower confidence than its
    library support alone says. ``confidence`` (S·H, S·W) in [0, 1]; ``count`` (H, W) >= 1; returns float32
    (S·H, S·W). A window of one frame leaves the map unchanged.
    """
    c = np.asarray(confidence)
    n = np.asarray(count, dtype=np.float64)
    if n.ndim != 2 or c.shape != (n.shape[0] * scale, n.shape[1] * scale):
        raise ValueError(f"confidence {c.shape} is not {scale}x the count map {n.shape}")
    if n.size == 0 or n.min() < 1:
        raise ValueError("frame counts must be >= 1")
    factor = np.sqrt(n / n.max())
    factor = np.repeat(np.repeat(factor, scale, axis=0), scale, axis=1)
    return (c * factor).astype(np.float32)
