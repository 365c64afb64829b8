"""How well a paired library supports each output pixel: a no-reference support measure and a confidence map.

For a query patch ``P`` of the S-times bicubic-upsampled LR frame (library units, :class:`~.pipeline.IntensityScale`)
the paired reconstruction works in the feature space of :class:`~.nlm.PairedRegressors`: ``f = (P - mean(P)) B - m``
(``B`` the PCA basis of the library keys, ``d`` columns). Its support is the squared distance to the nearest
library key in that space, normalised by what the patch itself carries::

    q = min_l ||f - f_l||² / (||f||² + d σ²)

with σ the LR noise (library units, :func:`~.noise.estimate_noise_sigma`). ``q`` is near 0 for a patch the
library holds almost exactly, and about 1 or more for one unlike every key (its nearest key is as far away as the
patch is from flat grey). Dividing by the patch energy makes ``q`` compare structure rather than contrast: the
raw distance is small for every smooth patch and large for every edge, whether or not the library covers it.

The confidence of an output pixel is ``c = 2^-(q / q_ref)²`` (in [0, 1]): 1 for an exact match, 0.5 where ``q``
equals ``q_ref`` -- the 90th percentile of ``q`` over the frames the model learned from
(:func:`reference_q`) -- and about 0.06 at twice that. ``q`` is computed on a grid of patch centres (spacing
``stride`` output px, coarser for large frames so that at most ``max_points`` patches are measured) and
interpolated bilinearly onto the output grid.

The grid also yields the trace-normalised covariance of the measured patches' features
(:attr:`SupportGrid.feature_cov`), the texture statistics :mod:`.quality_monitor` compares between frames.

Arrays in, arrays out; nothing here keeps state between calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .image_ops import upsample_bicubic_at
from .noise import estimate_noise_sigma

from .pipeline import FittedModel

__all__ = ["KeyIndex", "SupportGrid", "key_index", "support_grid", "reference_q", "confidence_map", "interpolate_grid",
           "DEFAULT_STRIDE", "DEFAULT_MAX_POINTS", "DEFAULT_MAX_KEYS"]

DEFAULT_STRIDE = 6
"""Spacing of the measured patch centres on the output grid, output px."""
DEFAULT_MAX_POINTS = 6000
"""Most patches measured per frame (the stride grows for large frames)."""
DEFAULT_MAX_KEYS = 3000
"""Most library keys searched (a fixed, seeded subset of a larger library)."""
_CHUNK = 2048


@dataclass(frozen=True, eq=False)
class KeyIndex:
    """Library keys in feature space, ready for nearest-key searches.

    Attributes:
        features: (L', d) float64 key features (L' <= :data:`DEFAULT_MAX_KEYS` by default).
        norms: (L',) squared norms of ``features``.
        patch_size: n, output px.
        scale: S.
    """

    features: np.ndarray
    norms: np.ndarray
    patch_size: int
    scale: int


@dataclass(frozen=True, eq=False)
class SupportGrid:
    """Support measured on a grid of patch centres of one frame.

    Attributes:
        q: (gh, gw) float64, normalised nearest-key distance (see the module docstring), >= 0.
        ys: (gh,) output-grid row of each grid row's patch centre (pixel index, centre at ``y + 0.5``).
        xs: (gw,) output-grid column of each grid column.
        out_shape: (S·H, S·W) output shape.
        noise_sigma: σ of the LR frame, library units.
        feature_cov: (d, d) covariance of the measured patches' features divided by its trace.
    """

    q: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    out_shape: tuple[int, int]
    noise_sigma: float
    feature_cov: np.ndarray | None = None

    @property
    def median(self) -> float:
        """Median of ``q`` over the grid."""
        return float(np.median(self.q))


def _features(model: FittedModel, patches: np.ndarray) -> np.ndarray:
    feats, _ = model.regressors.features(patches)
    return feats[:, :-1]  # drop the constant column


def key_index(model: FittedModel, *, max_keys: int = DEFAULT_MAX_KEYS, seed: int = 0) -> KeyIndex:
    """The model's library keys as a :class:`KeyIndex` (a seeded subset of ``max_keys`` keys when larger)."""
    keys = model.library.keys
    if len(keys) > max_keys:
        keys = keys[np.sort(np.random.default_rng(seed).choice(len(keys), max_keys, replace=False))]
    feats = _features(model, keys.astype(np.float64))
    return KeyIndex(feats, np.einsum("ij,ij->i", feats, feats), model.library.patch_size, model.scale)


def _grid(n: int, stride: int, scale: int) -> np.ndarray:
    """Patch centres along one axis: every ``stride`` px from the multiple of ``scale`` nearest stride / 2 (so the
    statistics of bicubic-upsampled patches do not depend on the frame size), plus the last pixel."""
    start = min((stride // 2) // scale * scale, n - 1)
    return np.unique(np.r_[np.arange(start, n, stride), n - 1])


def _nearest(feats: np.ndarray, keys: KeyIndex) -> np.ndarray:
    """Squared distance of each row of ``feats`` to its nearest key: min_l (|k_l|² - 2 f·k_l) + |f|², in float32
    (the distances are compared with the patch energy, so float32's 1e-7 relative error is far below noise)."""
    out = np.empty(len(feats))
    key_t = np.ascontiguousarray(keys.features.T, dtype=np.float32)
    norms = keys.norms.astype(np.float32)[None, :]
    for start in range(0, len(feats), _CHUNK):
        block = feats[start:start + _CHUNK]
        partial = block.astype(np.float32) @ key_t
        partial *= -2.0
        partial += norms
        out[start:start + len(block)] = partial.min(axis=1)
    return np.maximum(out + np.einsum("ij,ij->i", feats, feats), 0.0)


def _reflected(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into [0, size) as ``np.pad(mode="reflect")`` does (no edge repeat), for |overrun| < size."""
    index = np.where(index < 0, -index, index)
    return np.where(index > size - 1, 2 * (size - 1) - index, index)


def _patches_of_upsampled(units: np.ndarray, scale: int, ys: np.ndarray, xs: np.ndarray, n: int) -> np.ndarray:
    """(len(ys)·len(xs), n²) patches of the bicubic-upsampled ``units`` centred at the grid ``ys`` x ``xs``
    (reflect-padded at the borders), equal to ``extract_patches(up, n, centres, padded=pad_for_patches(up, n))``
    but computing only the output rows and columns the patches touch."""
    half = n // 2
    offsets = np.arange(-half, half + 1)
    row_index = _reflected(ys[:, None] + offsets[None, :], scale * units.shape[0])  # (ny, n)
    col_index = _reflected(xs[:, None] + offsets[None, :], scale * units.shape[1])  # (nx, n)
    rows, row_pos = np.unique(row_index, return_inverse=True)
    cols, col_pos = np.unique(col_index, return_inverse=True)
    sub = upsample_bicubic_at(units, scale, rows, cols)
    row_pos, col_pos = row_pos.reshape(row_index.shape), col_pos.reshape(col_index.shape)
    block = sub[row_pos[:, None, :, None], col_pos[None, :, None, :]]  # (ny, nx, n, n)
    return block.reshape(len(ys) * len(xs), n * n)


def support_grid(lr: np.ndarray, model: FittedModel, *, keys: KeyIndex | None = None, stride: int = DEFAULT_STRIDE,
                 max_points: int = DEFAULT_MAX_POINTS) -> SupportGrid:
    """Measure the support ``q`` of an (H, W) LR frame (the LR frame's own intensity units) on a grid.

    Args:
        lr: (H, W) real LR frame, at least 8 px per side.
        model: the fitted paired model (its intensity map, scale, regressors and keys).
        keys: :func:`key_index` of ``model`` (computed here when None; pass it to reuse it across frames).
        stride: spacing of measured patch centres, output px (>= 1); rounded up to a multiple of the scale and
            grown so that at most ``max_points`` patches are measured.
        max_points: most patches measured (>= 16).
    """
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be an integer >= 1 output px, got {stride!r}")
    if max_points < 16:
        raise ValueError(f"max_points must be >= 16, got {max_points!r}")
    array = np.asarray(lr, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 8:
        raise ValueError(f"an LR frame must be (H, W) with at least 8 px per side, got shape {array.shape}")
    if keys is None:
        keys = key_index(model)
    units = model.intensity.to_units(array)
    sigma = estimate_noise_sigma(units)
    out_shape = (model.scale * array.shape[0], model.scale * array.shape[1])
    step = max(int(stride), int(math.ceil(math.sqrt(out_shape[0] * out_shape[1] / max_points))))
    step = -(-step // model.scale) * model.scale  # a multiple of S: every centre at the same phase of the LR grid
    ys, xs = _grid(out_shape[0], step, model.scale), _grid(out_shape[1], step, model.scale)
    n = keys.patch_size
    patches = _patches_of_upsampled(units, model.scale, ys, xs, n)
    feats = _features(model, patches)
    energy = np.einsum("ij,ij->i", feats, feats)
    q = _nearest(feats, keys) / (energy + feats.shape[1] * sigma ** 2 + 1e-12)
    cov = np.cov(feats.T) if len(feats) > 1 else np.eye(feats.shape[1])
    cov = cov / max(float(np.trace(cov)), 1e-12)
    return SupportGrid(q.reshape(len(ys), len(xs)), ys, xs, out_shape, float(sigma),
                       np.atleast_2d(cov))


def reference_q(grids: list[SupportGrid], *, percentile: float = 90.0) -> float:
    """``q_ref``: the ``percentile`` of ``q`` pooled over the grids of the frames a model learned from (> 0)."""
    if not grids:
        raise ValueError("reference_q needs at least one support grid")
    pooled = np.concatenate([g.q.ravel() for g in grids])
    return max(float(np.percentile(pooled, percentile)), 1e-6)


def _linear_weights(centres: np.ndarray, n_out: int) -> np.ndarray:
    """(n_out, len(centres)) weights interpolating values at pixel ``centres`` linearly onto 0..n_out-1
    (constant beyond the first and last centre)."""
    pos = np.clip(np.arange(n_out, dtype=np.float64), centres[0], centres[-1])
    weights = np.zeros((n_out, len(centres)))
    if len(centres) == 1:
        weights[:, 0] = 1.0
        return weights
    right = np.clip(np.searchsorted(centres, pos, side="right"), 1, len(centres) - 1)
    left = right - 1
    frac = (pos - centres[left]) / (centres[right] - centres[left])
    rows = np.arange(n_out)
    weights[rows, left] = 1.0 - frac
    weights[rows, right] += frac
    return weights


def _check_q_ref(q_ref: float) -> None:
    if not (math.isfinite(q_ref) and q_ref > 0):
        raise ValueError(f"q_ref must be a finite number > 0, got {q_ref!r}")


def interpolate_grid(grid: SupportGrid, values: np.ndarray, rows: tuple[int, int] | None = None,
                     cols: tuple[int, int] | None = None) -> np.ndarray:
    """``values`` (gh, gw), one per patch centre of ``grid``, interpolated bilinearly onto output ``rows`` x
    ``cols`` ((start, stop); None: all): float32 (constant beyond the first and last centre)."""
    values = np.asarray(values)
    if values.shape != grid.q.shape:
        raise ValueError(f"values {values.shape} are not one per grid point {grid.q.shape}")
    spans = []
    for name, span, size in (("rows", rows, grid.out_shape[0]), ("cols", cols, grid.out_shape[1])):
        lo, hi = (0, size) if span is None else span
        if not 0 <= lo < hi <= size:
            raise ValueError(f"{name} {lo}:{hi} are not a non-empty range of the {size} output {name}")
        spans.append(slice(lo, hi))
    wy = _linear_weights(grid.ys.astype(np.float64), grid.out_shape[0])[spans[0]].astype(np.float32)
    wx = _linear_weights(grid.xs.astype(np.float64), grid.out_shape[1])[spans[1]].astype(np.float32)
    return (wy @ values.astype(np.float32)) @ wx.T


def confidence_map(grid: SupportGrid, q_ref: float) -> np.ndarray:
    """Per-pixel confidence ``2^-(q / q_ref)²`` on the output grid: (S·H, S·W) float32 in [0, 1]."""
    _check_q_ref(q_ref)
    return np.clip(interpolate_grid(grid, np.exp2(-(grid.q / q_ref) ** 2)), 0.0, 1.0)
