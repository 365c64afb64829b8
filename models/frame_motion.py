"""Where an older frame of one field lies relative to the newest, and the older frame resampled onto the newest's grid
(pure: arrays in, arrays out): steps 1-2 of the multi-frame fusion (:mod:`.fusion`).

:func:`register_frame` finds the motion ``u_i = A u + b`` (shift and small rotation, optionally a residual field of
block displacements: the drift during a slow scan) from the reference's pixel-edge coordinates ``u`` (LR px,
``(y, x)``) to the older frame's (:class:`FrameMotion`), by the global registration of :mod:`.registration` on
the central part of the older frame; :func:`warp_frame` resamples the older frame there (bilinear or cubic
spline; a shift as two separable 1-D passes on the spline coefficients, :func:`spline_coefficients`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import ImageError, RegistrationError
from .fusion_config import FusionConfig
from .image_ops import as_gray_float
from .registration import register_global

__all__ = ["FrameMotion", "register_frame", "spline_coefficients", "warp_frame"]


@dataclass(frozen=True, eq=False)
class FrameMotion:
    """Affine map from the reference frame's pixel-edge coordinates to another frame's: ``u_i = A u + b``.

    Attributes:
        matrix: (2, 2) float64 ``A`` acting on ``(y, x)`` column vectors (a rotation for a rigid drift).
        offset: (2,) float64 ``b``, LR px.
        score: registration NCC (1 = perfect; NaN when not measured).
        field: None for a rigid motion; else (gy, gx, 2) float64 residual displacement ``D`` (LR px) measured at
            the centres of a ``gy x gx`` grid of equal blocks of the reference, so that ``u_i = A u + b + D(u)``
            with ``D`` interpolated bilinearly between block centres (constant beyond them) -- the non-rigid drift
            of a slow scan (:func:`register_frame` with ``blocks``).
        field_shape: (H, W) of the frame the block grid divides (with ``field``).
    """

    matrix: np.ndarray
    offset: np.ndarray
    score: float = float("nan")
    field: np.ndarray | None = None
    field_shape: tuple[int, int] | None = None

    @staticmethod
    def identity() -> FrameMotion:
        """The reference's own motion."""
        return FrameMotion(np.eye(2), np.zeros(2), 1.0)

    @staticmethod
    def translation(shift_yx: Sequence[float]) -> FrameMotion:
        """A pure shift: the specimen moved by ``shift_yx`` px (y, x) from this frame to the reference
        (``shift_yx`` of the result)."""
        return FrameMotion(np.eye(2), -np.asarray(shift_yx, dtype=np.float64), 1.0)

    def apply(self, yx: np.ndarray) -> np.ndarray:
        """Map reference coordinates ``(..., 2)`` to this frame's."""
        u = np.asarray(yx, dtype=np.float64)
        out = u @ self.matrix.T + self.offset
        if self.field is not None and self.field_shape is not None:
            gy, gx = self.field.shape[:2]
            h, w = self.field_shape
            flat = u.reshape(-1, 2)
            idx = np.stack([np.clip(flat[:, 0] * gy / h - 0.5, 0, gy - 1), np.clip(flat[:, 1] * gx / w - 0.5, 0, gx - 1)])
            extra = np.stack([ndimage.map_coordinates(self.field[..., k], idx, order=1, mode="nearest")
                              for k in range(2)], axis=-1)
            out = out + extra.reshape(u.shape)
        return out

    def inverse_apply(self, yx: np.ndarray) -> np.ndarray:
        """Map this frame's coordinates ``(..., 2)`` to the reference's (the residual field, if any, inverted by
        fixed-point iteration: it varies slowly)."""
        v = np.asarray(yx, dtype=np.float64)
        inv = np.linalg.inv(self.matrix).T
        u = (v - self.offset) @ inv
        if self.field is not None:
            for _ in range(3):
                u = u - (self.apply(u) - v) @ inv
        return u

    def then(self, other: FrameMotion) -> FrameMotion:
        """``other ∘ self``: reference -> (this frame) -> the frame ``other`` maps to (scores: the smaller).
        Rigid motions only (a residual field is not composed)."""
        if self.field is not None or other.field is not None:
            raise ValueError("motions with a residual field cannot be composed; register against the reference")
        score = min(self.score, other.score) if not (math.isnan(self.score) or math.isnan(other.score)) else math.nan
        return FrameMotion(other.matrix @ self.matrix, other.matrix @ self.offset + other.offset, score)

    def shift_yx(self, shape: tuple[int, int]) -> tuple[float, float]:
        """Displacement (y, x) of the specimen between the reference and this frame, at the frame centre, LR px
        (positive: the content moved down/right in the reference relative to this frame)."""
        centre = np.array([shape[0] / 2.0, shape[1] / 2.0])
        d = centre - self.apply(centre)
        return float(d[0]), float(d[1])

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of ``A``, degrees."""
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))


def register_frame(reference: np.ndarray, moving: np.ndarray, *, config: FusionConfig = FusionConfig(),
                   blocks: tuple[int, int] | None = None) -> FrameMotion:
    """Register ``moving`` (an older frame of the same field) to ``reference``: shift and small rotation.

    The central part of ``moving`` (inset by ``max_shift_px``, at most ``register_px`` px per side) is placed in
    ``reference`` by :func:`~.registration.register_global` at factor 1 (coarse FFT NCC over shifts and
    rotations, then Levenberg-Marquardt refinement; sub-pixel). With its result ``u_c = R(θ)(u - o)`` in the
    crop's coordinates and the crop's origin ``c0`` in ``moving``, ``u_moving = R u - R o + c0``.

    With ``blocks = (gy, gx)`` the reference is also cut into ``gy x gx`` blocks and each block is placed in
    ``moving`` the same way (shift only, searched within ``max_shift_px`` of the rigid prediction); the
    differences to the rigid map form the motion's residual field (the drift *during* a slow scan bends the
    field, so two scans minutes apart differ by several px between their top and bottom). A block that does not
    match (NCC below ``min_score``, or a flat block) takes the median residual of the others.

    Parameters
    ----------
    reference, moving : (H, W) arrays
        Same shape, any real dtype.
    blocks : (int, int), optional
        Grid of blocks for the residual field (each at least 48 px per side); None: rigid.

    Returns
    -------
    FrameMotion
        Reference -> ``moving`` coordinates, with the registration NCC as ``score``.

    Raises
    ------
    RegistrationError
        The frames do not match (NCC below ``config.min_score``: the scene changed) or are too small for
        ``max_shift_px``.
    ImageError
        Shapes differ, or a frame is not a usable grayscale image.
    """
    ref = as_gray_float(reference, name="reference frame")
    mov = as_gray_float(moving, name="older frame")
    if ref.shape != mov.shape:
        raise ImageError(f"frames of one field must have one shape: reference {ref.shape}, older frame {mov.shape}")
    m = int(math.ceil(config.max_shift_px)) + 1
    h, w = mov.shape
    ch, cw = min(h - 2 * m, config.register_px), min(w - 2 * m, config.register_px)
    if min(ch, cw) < 16:
        raise RegistrationError(f"frames of {h}x{w} px are too small to register with max_shift_px="
                                f"{config.max_shift_px:g} (need at least {2 * m + 16} px per side)")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    geom = register_global(ref, mov[y0:y0 + ch, x0:x0 + cw], factor=1.0, max_rotation_deg=config.max_rotation_deg,
                           refine_scale=False, min_score=config.min_score, coarse_size=48)
    rot = geom.matrix  # factor 1: a pure rotation
    offset = -rot @ np.asarray(geom.offset_yx) + np.array([y0, x0], dtype=np.float64)
    rigid = FrameMotion(rot, offset, geom.score)
    return rigid if blocks is None else _block_field(ref, mov, rigid, blocks, config)


def _block_field(ref: np.ndarray, mov: np.ndarray, rigid: FrameMotion, blocks: tuple[int, int],
                 config: FusionConfig) -> FrameMotion:
    """The rigid motion plus the residual displacement of each of ``blocks`` reference blocks (see
    :func:`register_frame`)."""
    gy, gx = (int(b) for b in blocks)
    h, w = ref.shape
    bh, bw = h // max(gy, 1), w // max(gx, 1)
    if gy < 1 or gx < 1 or min(bh, bw) < 48:
        raise ValueError(f"blocks={blocks!r} cut a {h}x{w} frame into blocks smaller than 48 px (or none)")
    m = int(math.ceil(config.max_shift_px)) + 1
    field = np.full((gy, gx, 2), np.nan)
    for i in range(gy):
        for j in range(gx):
            centre = np.array([(i + 0.5) * bh, (j + 0.5) * bw])
            pred = rigid.apply(centre)  # where the block's centre lies in `moving` by the rigid map
            cy, cx = (int(round(v)) for v in pred)
            y0, x0 = max(cy - bh // 2 - m, 0), max(cx - bw // 2 - m, 0)
            y1, x1 = min(cy + bh // 2 + m, h), min(cx + bw // 2 + m, w)
            ch, cw = min(bh, config.register_px), min(bw, config.register_px)  # the block's central part
            by, bx = i * bh + (bh - ch) // 2, j * bw + (bw - cw) // 2
            block = ref[by:by + ch, bx:bx + cw]
            if y1 - y0 < bh or x1 - x0 < bw or not block.std() > 0:
                continue
            try:
                g = register_global(mov[y0:y1, x0:x1], block, factor=1.0, max_rotation_deg=0.0, refine_scale=False,
                                    min_score=config.min_score, coarse_size=48)
            except RegistrationError:
                continue
            # the crop's origin (reference px by, bx) lies at g.offset in the search window
            found = np.asarray(g.offset_yx) + [y0, x0] + (centre - [by, bx])
            if np.abs(found - pred).max() <= config.max_shift_px:  # else a false match at the window's edge
                field[i, j] = found - pred
    ok = np.isfinite(field[..., 0])
    if not ok.any():
        return rigid
    field[~ok] = np.median(field[ok], axis=0)
    return FrameMotion(rigid.matrix, rigid.offset, rigid.score, field, (h, w))


_SHIFT_ONLY_PX = 0.01
"""Default of :func:`warp_frame`: a motion whose matrix moves no pixel of the frame by more than this (LR px) is
warped as a pure shift (numerically a shift; :attr:`~.fusion_config.FusionConfig.shift_only_px` is the fusion's own, larger one)."""


def _grid(shape: tuple[int, int], scale: int = 1) -> np.ndarray:
    """Pixel-centre edge coordinates (S·H, S·W, 2) of the reference grid refined ``scale`` times, LR px."""
    ys = (np.arange(shape[0] * scale) + 0.5) / scale
    xs = (np.arange(shape[1] * scale) + 0.5) / scale
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gy, gx], axis=-1)


def spline_coefficients(frame: np.ndarray, *, order: int = 3) -> np.ndarray:
    """Spline coefficients of ``frame`` for :func:`warp_frame` (``coefficients=``), float32 (H, W).

    Order 3: the cubic B-spline interpolation prefilter with mirror boundaries (Unser 1999), the same as
    :func:`scipy.ndimage.spline_filter`; order 1: the frame itself (linear interpolation needs none). A frame of a
    live window is warped at every later call, so its coefficients are worth computing once and keeping.
    """
    if order not in (1, 3):
        raise ValueError(f"order must be 1 or 3, got {order!r}")
    src = np.asarray(frame)
    if src.ndim != 2:
        raise ImageError(f"spline coefficients need one (H, W) frame, got shape {src.shape}")
    if order == 1:
        return src.astype(np.float32)
    return ndimage.spline_filter(src.astype(np.float32), 3, output=np.float32, mode="mirror")


def _bspline_weights(t: float, order: int) -> tuple[tuple[int, float], ...]:
    """Taps ``(k, weight)`` interpolating at ``n + t`` (0 <= t < 1) from coefficients ``c[n + k]``."""
    if order == 1:
        return (0, 1.0 - t), (1, t)
    s = 1.0 - t
    return ((-1, s ** 3 / 6.0), (0, (4.0 - 6.0 * t * t + 3.0 * t ** 3) / 6.0),
            (1, (4.0 - 6.0 * s * s + 3.0 * s ** 3) / 6.0), (2, t ** 3 / 6.0))


def _shift_axis(coef: np.ndarray, offset: float, axis: int, order: int) -> np.ndarray:
    """``out[i] = Σ_k w_k(t) c[i + n + k]`` along ``axis`` with ``n + t = offset`` (source index = i + offset);
    zero where the source lies outside ``[0, L - 1]``."""
    length = coef.shape[axis]
    n = math.floor(offset)
    t = offset - n
    lo, hi = max(0, math.ceil(-offset)), min(length, math.floor(length - 1 - offset) + 1)
    out = np.zeros_like(coef)
    if hi <= lo:
        return out
    pad = [(0, 0), (0, 0)]
    pad[axis] = (2, 2)
    padded = np.pad(coef, pad, mode="reflect")  # scipy's "mirror": the taps one past the edge
    dst = [slice(None), slice(None)]
    dst[axis] = slice(lo, hi)
    acc = out[tuple(dst)]
    for k, weight in _bspline_weights(t, order):
        if weight == 0.0:
            continue
        src = [slice(None), slice(None)]
        src[axis] = slice(lo + n + k + 2, hi + n + k + 2)
        acc += np.float32(weight) * padded[tuple(src)] if coef.dtype == np.float32 else weight * padded[tuple(src)]
    return out


def warp_frame(frame: np.ndarray, motion: FrameMotion, *, order: int = 1,
               shift_only_px: float = _SHIFT_ONLY_PX, coefficients: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``frame`` onto the reference grid: ``out(u) = frame(A u + b)``; a rigid motion whose matrix moves
    no pixel by more than ``shift_only_px`` is applied as the pure shift of the frame's centre.

    A shift is separable: two 1-D passes of ``order + 1`` taps on the spline coefficients (8 multiply-adds per
    pixel at order 3, against 16 for a general 2-D resampling). ``coefficients``: the frame's
    :func:`spline_coefficients` at ``order``, computed before (a live window keeps them); then ``frame`` is only
    used for its shape, and the warp is computed in float32.

    Returns ``(warped, valid)``: (H, W) float64 (float32 with ``coefficients``) and a bool mask of the pixels
    whose source lies inside the frame (the others are 0).
    """
    if coefficients is None:
        src = as_gray_float(frame, name="frame")
        coef = src if order == 1 else ndimage.spline_filter(src, order, mode="mirror")
    else:
        coef = np.asarray(coefficients)
        if coef.shape != np.shape(frame) or coef.ndim != 2:
            raise ImageError(f"spline coefficients of shape {coef.shape} do not belong to a frame of shape "
                             f"{np.shape(frame)}")
    h, w = coef.shape
    centre = np.array([h / 2.0, w / 2.0])
    if motion.field is None and np.abs(motion.matrix - np.eye(2)).max() * math.hypot(h, w) / 2 <= shift_only_px:
        # a shift up to a rotation that moves no pixel by more than shift_only_px: separable, no coordinate arrays
        offset = motion.apply(centre) - centre
        warped = _shift_axis(_shift_axis(coef, float(offset[0]), 0, order), float(offset[1]), 1, order)
        ys = np.arange(h) + 0.5 + offset[0]
        xs = np.arange(w) + 0.5 + offset[1]
        valid = ((ys >= 0.5) & (ys <= h - 0.5))[:, None] & ((xs >= 0.5) & (xs <= w - 0.5))[None, :]
        return warped, valid
    pts = motion.apply(_grid((h, w)))
    warped = ndimage.map_coordinates(coef, np.moveaxis(pts, -1, 0) - 0.5, order=order, mode="mirror",
                                     prefilter=False, output=coef.dtype)
    valid = ((pts[..., 0] >= 0.5) & (pts[..., 0] <= h - 0.5) & (pts[..., 1] >= 0.5) & (pts[..., 1] <= w - 0.5))
    return np.where(valid, warped, 0.0).astype(coef.dtype, copy=False), valid
