"""Never serve worse than the safe baseline where the model is not trusted (pure: arrays in, arrays out).

A model learned from a session's references is trusted where the frame looks like what they showed and where its
output explains its own input; elsewhere the served output is pulled toward the safe baseline ``B``
(:mod:`.baseline`, a tuned blur of bicubic) pixel by pixel:

    Y = B + w · (M − B)                                                                              (1)

with ``M`` the model's output and ``w`` in [0, 1] interpolated bilinearly from its values at the patch centres
of the frame's support grid (:func:`~.confidence.support_grid`),

    w_g = s(r_g; r_start, r_stop) · s(ρ_g; ρ_start, ρ_stop),     s(x; a, b) = 1 − smoothstep((x − a) / (b − a))  (2)

(``smoothstep(t) = 3t² − 2t³`` on [0, 1], clipped outside): 1 below ``a``, 0 above ``b``, smooth between, so no
seam shows where a region of new texture begins. The two trust signals at grid point ``g``:

* ``r = q / q_ref``, the library support (:mod:`.confidence`: normalised distance of the output patch to its
  nearest library key) relative to the references' own level -- *texture the references did not show*;
* ``ρ``, the local data consistency of the model's output (:func:`~.consistency.local_consistency`: rms of
  ``LR − D(M)`` over the LR noise, over the block of LR pixels the grid point stands for, with ``D`` the forward
  model learned from the same references) -- *an output that does not explain its own input*. Only when the
  model carries a forward model.

Calibration (:class:`SafeBlendConfig` defaults), measured on the six ``sem_pairs`` pairs, scored quarter, with
the library or the leave-one-out prior network fitted on the same pair or on the other pair of the same scale
(texture the reference did not show): the 99th percentile of ``r`` is 1.0-1.7 (same pair) and 1.1-2.6 (other
pair); the local ρ (8 x 8 LR px) of bicubic, the library and the prior network reaches at most 2.9, 3.2 and
3.5, while a scrambled output (the prior's pixels permuted: a model gone wrong) has a median of 2.9-7.1 and a
99th percentile of 8-17. ``r_start = 2`` and ``ρ_start = 4`` leave every one of those real outputs to the model;
``r_stop = 6`` and ``ρ_stop = 6`` hand over to the baseline where a patch is several times further from every
key than any reference patch, or where the output misses its input by six times the noise.

The blend runs block by block, in place on the model's output, only where some ``w_g < 1``: a frame the model
is trusted on costs one comparison per grid point and the local consistency (one pass of ``D``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .baseline import SafeBaseline, baseline_block
from .confidence import (DEFAULT_MAX_POINTS, DEFAULT_STRIDE, KeyIndex, SupportGrid, interpolate_grid, key_index,
                         reference_q, support_grid)
from .consistency import ForwardModel, consistency_residual, consistency_ratio, local_consistency
from .noise import estimate_noise_sigma
from .peers import tuned_blur
from .pipeline import FittedModel

__all__ = ["SafeBlendConfig", "BlendSummary", "hand_over", "trust_grid", "consistency_window",
           "blend_toward_baseline", "blend_with_library", "choose_safe_baseline", "blend_bytes", "DEFAULT_BAND_ROWS",
           "MIN_CONSISTENCY_WINDOW"]

DEFAULT_BAND_ROWS = 256
"""Output rows blended at a time."""
MIN_CONSISTENCY_WINDOW = 8
"""Smallest side of the LR block over which ρ is measured, LR px (larger when the grid is coarser)."""


@dataclass(frozen=True)
class SafeBlendConfig:
    """Where equation (2) hands over from the model to the baseline.

    Attributes:
        start, stop: support ratio ``r = q / q_ref`` up to which the model serves alone, and from which the
            baseline does (0 < start < stop).
        rho_start, rho_stop: the same for the local data consistency ``ρ`` (0 < rho_start < rho_stop).
    """

    start: float = 2.0
    stop: float = 6.0
    rho_start: float = 4.0
    rho_stop: float = 6.0

    def __post_init__(self) -> None:
        for name, lo, hi in (("start/stop", self.start, self.stop), ("rho_start/rho_stop", self.rho_start,
                                                                     self.rho_stop)):
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
                raise ValueError(f"a safe blend needs 0 < {name.replace('/', ' < ')}, got {lo!r}, {hi!r}")


@dataclass(frozen=True)
class BlendSummary:
    """What one blend did.

    Attributes:
        blended_share: share of output pixels with ``w < 1`` (the baseline contributes), 0 to 1.
        baseline_share: share of output pixels with ``w = 0`` (the baseline alone), 0 to 1.
        mean_weight: mean of ``w`` over the frame (1: the model everywhere).
        residual_rms: rms over the frame of ``LR − D(M)``, the model's output before the blend degraded by the
            forward model (:func:`~.consistency.consistency_residual`; the consistency signal's one pass), LR units;
            None without a forward model.
        lr_noise_sigma: the LR noise σ estimated from the frame (:func:`~.noise.estimate_noise_sigma`, no floor);
            None without a forward model.
    """

    blended_share: float
    baseline_share: float
    mean_weight: float
    residual_rms: float | None = None
    lr_noise_sigma: float | None = None

    @property
    def model_consistency(self) -> float | None:
        """ρ of the model's output before the blend (:func:`~.consistency.data_consistency`'s value for it,
        from the blend's own pass of the forward model); the served frame's ρ when ``blended_share`` is 0.
        None without a forward model."""
        if self.residual_rms is None or self.lr_noise_sigma is None:
            return None
        return consistency_ratio(self.residual_rms, self.lr_noise_sigma)


def hand_over(x: np.ndarray, start: float, stop: float) -> np.ndarray:
    """``s(x; start, stop)`` of equation (2): 1 at and below ``start``, 0 at and above ``stop``, float64."""
    t = np.clip((np.asarray(x, dtype=np.float64) - start) / (stop - start), 0.0, 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def trust_grid(grid: SupportGrid, q_ref: float, *, consistency: np.ndarray | None = None,
               config: SafeBlendConfig = SafeBlendConfig()) -> np.ndarray:
    """``w_g`` of equation (2) at every patch centre of ``grid``: (gh, gw) float64 in [0, 1].

    ``consistency``: the (H, W) local ρ of the model's output on the LR grid (:func:`~.consistency.
    local_consistency`), sampled at the LR pixel under each centre; None: the support alone.
    """
    if not (math.isfinite(q_ref) and q_ref > 0):
        raise ValueError(f"q_ref must be a finite number > 0, got {q_ref!r}")
    w = hand_over(grid.q / q_ref, config.start, config.stop)
    if consistency is not None:
        scale = grid.out_shape[0] // consistency.shape[0] if consistency.ndim == 2 and consistency.shape[0] else 0
        if scale < 1 or grid.out_shape != (scale * consistency.shape[0], scale * consistency.shape[1]):
            raise ValueError(f"the consistency map {np.shape(consistency)} is not on the LR grid of an output "
                             f"{grid.out_shape}")
        rho = consistency[np.ix_(grid.ys // scale, grid.xs // scale)]
        w = w * hand_over(np.nan_to_num(rho, nan=np.inf), config.rho_start, config.rho_stop)
    return w


def blend_bytes(shape: tuple[int, int], scale: int, *, band_rows: int = DEFAULT_BAND_ROWS,
                patch_size: int = 15) -> int:
    """Most memory :func:`blend_with_library` holds besides the output it works on, bytes, for an (H, W) LR
    frame at ``scale``: three float64 LR-size arrays for the local consistency (``D(M)``, the squared residual,
    its box mean), the support grid's float64 patches and features (at most :data:`~.confidence.
    DEFAULT_MAX_POINTS` patches of ``patch_size``² px, twice) and, for one band of ``band_rows`` output rows, the
    float64 baseline with its Gaussian halo and a float32 weight and blend temporary."""
    height, width = (int(v) for v in shape)
    band = int(band_rows) * int(scale) * width
    return 24 * height * width + 16 * DEFAULT_MAX_POINTS * int(patch_size) ** 2 + band * (2 * 8 + 2 * 4)


def _influence(centres: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each patch centre of one axis, the output range [lo, hi) whose bilinear interpolation uses it."""
    centres = np.asarray(centres, dtype=np.int64)
    return np.r_[0, centres[:-1] + 1], np.r_[centres[1:], n_out]


def consistency_window(grid: SupportGrid, scale: int) -> int:
    """Side of the LR block whose ρ a grid point stands for: the grid spacing in LR px, at least
    :data:`MIN_CONSISTENCY_WINDOW` (so that no LR pixel falls between the sampled blocks)."""
    spacing = max(int(np.max(np.diff(grid.ys), initial=0)), int(np.max(np.diff(grid.xs), initial=0)))
    return max(MIN_CONSISTENCY_WINDOW, -(-spacing // int(scale)))


def blend_toward_baseline(output: np.ndarray, lr: np.ndarray, grid: SupportGrid, baseline: SafeBaseline, *,
                          forward: ForwardModel | None = None, noise_floor: float = 0.0,
                          config: SafeBlendConfig = SafeBlendConfig(), band_rows: int = DEFAULT_BAND_ROWS
                          ) -> BlendSummary:
    """Apply equation (1) to ``output`` in place.

    Args:
        output: (S·H, S·W) float array, the model's output ``M`` for ``lr`` (overwritten with ``Y``).
        lr: (H, W) the LR frame it was made from (its intensity units, as ``output``'s).
        grid: the library support of ``lr`` (:func:`~.confidence.support_grid`), output shape ``output.shape``.
        baseline: σ of the baseline and the references' ``q_ref``.
        forward: the forward model learned with the library (adds the consistency signal), or None.
        noise_floor: ρ is measured against the larger of the noise estimated from ``lr``
            (:func:`~.noise.estimate_noise_sigma`) and this σ (LR units; the session's LR noise,
            :attr:`~.pipeline.FittedModel.lr_noise_sigma`): a frame with large noiseless areas (clipped, blanked,
            a synthetic pattern) under-reads its own noise, which would make every residual look large.
        config: where the hand-over starts and ends.
        band_rows: output rows processed at a time (>= 1).

    Returns:
        :class:`BlendSummary`. Where ``w = 1`` ``output`` is left untouched.
    """
    if output.ndim != 2 or output.dtype.kind != "f":
        raise ValueError(f"output must be a 2-D float array, got {output.dtype} of shape {output.shape}")
    if not output.flags.writeable:
        raise ValueError("output must be writeable: the blend works in place")
    lr = np.asarray(lr)
    scale = output.shape[0] // lr.shape[0] if lr.ndim == 2 and lr.shape[0] else 0
    if lr.ndim != 2 or scale < 1 or output.shape != (scale * lr.shape[0], scale * lr.shape[1]):
        raise ValueError(f"output {output.shape} is not an integer multiple of the LR frame {lr.shape}")
    if grid.out_shape != output.shape:
        raise ValueError(f"the support grid is for an output of {grid.out_shape}, not {output.shape}")
    if int(band_rows) != band_rows or band_rows < 1:
        raise ValueError(f"band_rows must be an integer >= 1, got {band_rows!r}")
    rho = rms = frame_sigma = None
    if forward is not None:
        residual = consistency_residual(lr, output, forward)
        rms = float(np.sqrt(np.mean(residual ** 2)))
        frame_sigma = estimate_noise_sigma(np.asarray(lr, dtype=np.float64))
        rho = local_consistency(lr, output, forward, window=consistency_window(grid, scale),
                                sigma=max(frame_sigma, float(noise_floor)), residual=residual)
        del residual
    weights = trust_grid(grid, baseline.q_ref, consistency=rho, config=config)
    hot = weights < 1.0  # grid points that pull their neighbourhood toward the baseline
    if not hot.any():
        return BlendSummary(0.0, 0.0, 1.0, rms, frame_sigma)
    row_lo, row_hi = _influence(grid.ys, output.shape[0])
    col_lo, col_hi = _influence(grid.xs, output.shape[1])
    hot_rows = hot.any(axis=1)
    blended = alone = 0
    weight_sum = 0.0
    for start in range(0, output.shape[0], int(band_rows)):
        stop = min(start + int(band_rows), output.shape[0])
        rows = hot_rows & (row_lo < stop) & (row_hi > start)
        if not rows.any():
            weight_sum += (stop - start) * output.shape[1]
            continue
        hot_cols = hot[rows].any(axis=0)
        c0, c1 = int(col_lo[hot_cols].min()), int(col_hi[hot_cols].max())
        w = np.clip(interpolate_grid(grid, weights, (start, stop), (c0, c1)), 0.0, 1.0)
        w[w > 1.0 - 1e-6] = 1.0  # float32 interpolation of ones
        blended += int(np.count_nonzero(w < 1.0))
        alone += int(np.count_nonzero(w == 0.0))
        weight_sum += float(w.sum(dtype=np.float64)) + (stop - start) * (output.shape[1] - (c1 - c0))
        if bool(np.all(w == 1.0)):
            continue
        base = baseline_block(lr, scale=scale, sigma_px=baseline.sigma_px, rows=(start, stop), cols=(c0, c1))
        block = output[start:stop, c0:c1]
        block[...] = base + w * (block - base)
    return BlendSummary(blended / output.size, alone / output.size, weight_sum / output.size, rms, frame_sigma)


def blend_with_library(output: np.ndarray, lr: np.ndarray, library: FittedModel, *, keys: KeyIndex | None = None,
                       stride: int = DEFAULT_STRIDE, config: SafeBlendConfig = SafeBlendConfig()
                       ) -> tuple[SupportGrid, BlendSummary]:
    """:func:`blend_toward_baseline` of ``output`` (in place) with everything taken from the session's library:
    its support of ``lr`` (measured here, ``stride`` output px; ``keys`` its :func:`~.confidence.key_index`,
    computed when None), its safe baseline, forward model and LR noise. ValueError when the library carries no
    safe baseline. Returns the support measured and what the blend did."""
    if library.safe is None:
        raise ValueError("the library carries no safe baseline to blend toward (FittedModel.safe is None)")
    grid = support_grid(lr, library, keys=keys, stride=stride)
    summary = blend_toward_baseline(output, lr, grid, library.safe, forward=library.forward,
                                    noise_floor=library.lr_noise_sigma, config=config)
    return grid, summary


def choose_safe_baseline(library: FittedModel, lr_regions: Sequence[np.ndarray],
                         held_out: Sequence[tuple[np.ndarray, np.ndarray]], *,
                         previous: SafeBaseline | None = None) -> SafeBaseline:
    """The safe baseline of ``library`` (:mod:`.baseline`): the blur of bicubic best on the ``held_out`` (LR, HR
    grid) subimages (:func:`~.peers.tuned_blur`, bicubic among the candidates) and ``q_ref``, the 90th percentile
    of the library's support ``q`` over the LR ``lr_regions`` it learned from -- the larger of that and
    ``previous.q_ref`` when the library extends one that had a safe baseline (its keys hold the earlier ones, so
    the earlier references are at most as far from it as they were)."""
    if not lr_regions or not held_out:
        raise ValueError("choosing a safe baseline needs the LR regions learned from and held-out subimages")
    sigma, delta = tuned_blur(list(held_out), scale=library.scale)
    keys = key_index(library)
    q_ref = reference_q([support_grid(region, library, keys=keys) for region in lr_regions])
    if previous is not None:
        q_ref = max(q_ref, previous.q_ref)
    return SafeBaseline(sigma, delta, q_ref)
