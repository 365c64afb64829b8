"""Global registration of an HR reference scan inside an LR frame (paper Sec. III-A, Algorithm 1 step 2).

The HR scan covers a small part of the LR field at a known, usually non-integer, pixel-size ratio. We find the
shift, a small rotation and a small (per-axis) scale correction of the HR field inside the LR frame:

1. the HR image is anti-aliased and sampled on the (coarsened) LR grid for a few candidate rotations, and each
   rotated template is located by zero-mean normalised cross-correlation (NCC) over the whole LR frame - the
   paper's coarse grid search over (x, y, theta);
2. the estimate is refined on the original-resolution LR pixels by Gauss-Newton/Levenberg-Marquardt least squares
   ``LR(u) ~ a * HR_s(T(u)) + b`` over (offset, rotation, scale, a, b). With a free gain ``a`` and bias ``b`` this
   maximises the NCC of the overlap, i.e. it is Algorithm 1 step 2's MSE criterion made insensitive to the
   contrast difference between the two scans.

Coordinates are pixel-edge coordinates: pixel ``i`` covers ``[i, i + 1)``, its centre is at ``i + 0.5``.
Points are ``(..., 2)`` arrays ordered ``(y, x)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from .errors import RegistrationError
from .image_ops import as_gray_float

__all__ = ["PairGeometry", "register_global", "factor_scores", "FACTOR_RATIOS", "overlap_box", "resample_hr_to_lr_grid"]


@dataclass(frozen=True)
class PairGeometry:
    """Similarity-like map between LR-frame and HR-scan pixel-edge coordinates.

    ``u_hr = diag(factor_yx) @ R(theta) @ (u_lr - offset_yx)`` with ``R(theta) = [[cos, -sin], [sin, cos]]``
    acting on ``(y, x)`` column vectors. With rows drawn downwards (image display), a positive ``rotation_deg``
    means the specimen appears rotated *counter-clockwise* by ``theta`` in the HR image relative to the LR image
    (the same sense as ``skimage.transform.rotate(image, +theta)``). ``rotation_deg = 0`` reproduces the
    convention of ``sem_pairs/pairs.json``: ``u_hr = (u_lr - offset_yx_lr_px) * fitted_factor_yx``.

    Attributes
    ----------
    offset_yx : (float, float)
        LR pixel-edge coordinates of the HR image's origin (its top-left corner), LR px.
    factor_yx : (float, float)
        HR px per LR px along y and x (e.g. 4.17).
    rotation_deg : float
        Rotation of the HR scan relative to the LR frame about the HR origin, degrees.
    score : float
        Zero-mean normalised cross-correlation of the final match (1 = perfect), NaN when unknown.
    """

    offset_yx: tuple[float, float]
    factor_yx: tuple[float, float]
    rotation_deg: float = 0.0
    score: float = float("nan")

    def __post_init__(self) -> None:
        off = tuple(float(v) for v in self.offset_yx)
        fac = tuple(float(v) for v in self.factor_yx)
        if len(off) != 2 or len(fac) != 2:
            raise ValueError("offset_yx and factor_yx must both have two entries (y, x)")
        if not all(math.isfinite(v) for v in off + fac) or min(fac) <= 0:
            raise ValueError(f"invalid geometry: offset_yx={off}, factor_yx={fac} (factors must be finite and > 0)")
        object.__setattr__(self, "offset_yx", off)
        object.__setattr__(self, "factor_yx", fac)
        object.__setattr__(self, "rotation_deg", float(self.rotation_deg))
        object.__setattr__(self, "score", float(self.score))

    @property
    def matrix(self) -> np.ndarray:
        """The 2x2 matrix ``A = diag(factor_yx) @ R(theta)`` (HR px per LR px), acting on (y, x) vectors."""
        return np.diag(self.factor_yx) @ _rot(math.radians(self.rotation_deg))

    def lr_to_hr(self, yx_lr: np.ndarray) -> np.ndarray:
        """Map LR pixel-edge coordinates ``(..., 2)`` (LR px) to HR pixel-edge coordinates (HR px)."""
        u = np.asarray(yx_lr, dtype=np.float64)
        return (u - np.asarray(self.offset_yx)) @ self.matrix.T

    def hr_to_lr(self, yx_hr: np.ndarray) -> np.ndarray:
        """Map HR pixel-edge coordinates ``(..., 2)`` (HR px) to LR pixel-edge coordinates (LR px)."""
        v = np.asarray(yx_hr, dtype=np.float64)
        return v @ np.linalg.inv(self.matrix).T + np.asarray(self.offset_yx)

    def subsampled(self, step: int, phase_yx: tuple[int, int] = (0, 0)) -> "PairGeometry":
        """The geometry of the LR frame's sub-grid ``lr[py::step, px::step]``: a scan of the same field ``step``
        times coarser (an SEM point-samples, so every ``step``-th pixel of a scan *is* a coarser scan of it).

        Sub-grid pixel ``i'`` is LR pixel ``step·i' + p``, so sub-grid edge coordinates map to LR ones by
        ``u = step·u' + c`` with ``c = p + 1/2 − step/2`` (centres onto centres), hence
        ``u_hr = (step·A) (u' − (offset − c)/step)``: factor ``step·factor_yx``, offset ``(offset_yx − c)/step``
        (sub-grid px), the same rotation and score.
        """
        if int(step) != step or step < 1:
            raise ValueError(f"step must be a positive integer, got {step!r}")
        step = int(step)
        if len(phase_yx) != 2 or any(int(p) != p or not 0 <= p < step for p in phase_yx):
            raise ValueError(f"phase_yx must be two integers in [0, {step}), got {phase_yx!r}")
        centre = np.asarray(phase_yx, dtype=np.float64) + 0.5 - step / 2.0
        offset = (np.asarray(self.offset_yx) - centre) / step
        return PairGeometry(tuple(offset), (step * self.factor_yx[0], step * self.factor_yx[1]), self.rotation_deg,
                            self.score)

    def hr_corners_lr(self, hr_shape: tuple[int, int]) -> np.ndarray:
        """LR coordinates (4, 2) of the HR field's corners: top-left, top-right, bottom-left, bottom-right."""
        h, w = hr_shape
        return self.hr_to_lr(np.array([[0.0, 0.0], [0.0, w], [h, 0.0], [h, w]]))


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _factor_pair(factor: float | tuple[float, float]) -> tuple[float, float]:
    fy, fx = (factor, factor) if np.ndim(factor) == 0 else tuple(factor)  # type: ignore[misc]
    fy, fx = float(fy), float(fx)
    if not (math.isfinite(fy) and math.isfinite(fx)):
        raise RegistrationError(f"factor {factor!r} is not finite")
    if min(fy, fx) < 1.0:
        raise RegistrationError(
            f"factor {fy:.4g}x{fx:.4g} < 1: mismatched scale - the HR pixel size must be finer than the LR pixel "
            "size (factor = lr_px_nm / hr_px_nm); are the two images swapped?")
    return fy, fx


def _antialias(image: np.ndarray, ratio_yx: tuple[float, float]) -> np.ndarray:
    """Gaussian prefilter, sigma = 0.5 * sqrt(r^2 - 1) input px per axis, before sampling every ``r`` px."""
    sigma = [0.5 * math.sqrt(max(r * r - 1.0, 0.0)) for r in ratio_yx]
    return ndimage.gaussian_filter(image, sigma, mode="nearest") if max(sigma) > 0 else image


def _standardise(image: np.ndarray) -> np.ndarray:
    return (image - image.mean()) / image.std()


def _block_mean(image: np.ndarray, d: int) -> np.ndarray:
    h, w = (image.shape[0] // d) * d, (image.shape[1] // d) * d
    return image[:h, :w].reshape(h // d, d, w // d, d).mean(axis=(1, 3))


def _sample(image: np.ndarray, yx_edge: np.ndarray, order: int = 1, mode: str = "nearest") -> np.ndarray:
    """Sample ``image`` at pixel-edge coordinates ``(..., 2)`` (index = edge coordinate - 0.5)."""
    return ndimage.map_coordinates(image, np.moveaxis(yx_edge, -1, 0) - 0.5, order=order, mode=mode)


def _ncc_maps(image: np.ndarray, tshape: tuple[int, int]):
    """Return ``ncc(template)``: zero-mean NCC at every valid top-left position of a ``tshape`` template.

    The image FFT and its local (integral-image) statistics are computed once and shared by all templates.
    """
    th, tw = tshape
    shape = [sfft.next_fast_len(n, real=True) for n in image.shape]
    img_fft = sfft.rfft2(image, shape)
    vh, vw = image.shape[0] - th + 1, image.shape[1] - tw + 1

    def box(a: np.ndarray) -> np.ndarray:
        c = np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return c[th:, tw:] - c[:-th, tw:] - c[th:, :-tw] + c[:-th, :-tw]

    s1 = box(image)
    local_sd = np.sqrt(np.maximum(box(image * image) - s1 * s1 / (th * tw), 0.0))
    floor = 1e-6 * max(float(local_sd.max()), 1e-300)

    def ncc(template: np.ndarray) -> np.ndarray:
        t0 = template - template.mean()
        tnorm = max(math.sqrt(float((t0 * t0).sum())), 1e-300)
        num = sfft.irfft2(img_fft * np.conj(sfft.rfft2(t0, shape)), shape)[:vh, :vw]
        return np.where(local_sd > floor, num / (np.maximum(local_sd, floor) * tnorm), 0.0)

    return ncc


def _subpixel_peak(score: np.ndarray) -> tuple[float, float, float]:
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    peak = [float(iy), float(ix)]
    for axis, i in ((0, iy), (1, ix)):
        if 0 < i < score.shape[axis] - 1:
            lo = score[(iy - 1, ix) if axis == 0 else (iy, ix - 1)]
            hi = score[(iy + 1, ix) if axis == 0 else (iy, ix + 1)]
            curv = lo - 2 * score[iy, ix] + hi
            if curv < 0:
                peak[axis] += float(np.clip(0.5 * (lo - hi) / curv, -0.5, 0.5))
    return peak[0], peak[1], float(score[iy, ix])


def _coarse_search(lr: np.ndarray, hr_f: np.ndarray, fyx: tuple[float, float], d: int, max_rot: float
                   ) -> tuple[PairGeometry, float]:
    """Grid search over rotations; each rotated template located by FFT NCC on the d-times coarsened LR."""
    h, w = hr_f.shape
    lr_c = _block_mean(lr, d)
    hf, wf = h / fyx[0], w / fyx[1]                       # HR field size, LR px
    sin_m = math.sin(math.radians(max_rot))
    ay = hf / 2 - (wf / 2) * sin_m - 1.0                  # half-size (LR px) of an axis-aligned crop that stays
    ax = wf / 2 - (hf / 2) * sin_m - 1.0                  # inside the field for every candidate rotation
    th, tw = int(2 * ay // d), int(2 * ax // d)
    if min(th, tw) < 4:
        raise RegistrationError(f"HR field ({hf:.1f} x {wf:.1f} LR px) is too small to register")
    half = np.array([th * d / 2, tw * d / 2])
    ty, tx = np.meshgrid((np.arange(th) + 0.5) * d, (np.arange(tw) + 0.5) * d, indexing="ij")
    e = np.stack([ty, tx], axis=-1) - half                 # LR displacement from the field centre
    c_hr = np.array([h / 2, w / 2])
    half_diag = 0.5 * math.hypot(th, tw)
    n_half = int(math.ceil(max_rot / math.degrees(0.7 / half_diag))) if max_rot > 0 else 0
    angles = np.linspace(-max_rot, max_rot, 2 * n_half + 1) if n_half else np.zeros(1)
    best = (-np.inf, 0.0, 0.0, 0.0)
    ncc = _ncc_maps(lr_c, (th, tw))
    for ang in angles:
        a_mat = np.diag(fyx) @ _rot(math.radians(ang))
        template = _sample(hr_f, c_hr + e @ a_mat.T)
        py, px, s = _subpixel_peak(ncc(template))
        if s > best[0]:
            best = (s, py, px, float(ang))
    s, py, px, ang = best
    a_mat = np.diag(fyx) @ _rot(math.radians(ang))
    c_lr = d * np.array([py, px]) + half
    offset = c_lr - np.linalg.solve(a_mat, c_hr)
    return PairGeometry(tuple(offset), fyx, ang, s), s


def _refine(lr: np.ndarray, hr_f: np.ndarray, geom: PairGeometry, *, d: int, refine_rot: bool,
            refine_scale: bool, anisotropic: bool, n_iter: int = 25) -> PairGeometry:
    """Levenberg-Marquardt fit of ``lr_d(U) ~ a * hr_f(T(U)) + b`` on the d-times coarsened LR grid.

    ``T(U) = diag(f0 * exp(k)) R(theta) (U - o)`` with parameters (o_y, o_x, theta, k_y, k_x); the gain ``a`` and
    bias ``b`` are solved in closed form at every step (variable projection), so the fit maximises the NCC.
    """
    lr_c = lr if d == 1 else _block_mean(lr, d)
    gy_img, gx_img = np.gradient(hr_f)
    h, w = hr_f.shape
    f0 = np.array(geom.factor_yx) * d
    o = np.array(geom.offset_yx) / d
    start = PairGeometry(tuple(o), tuple(f0), geom.rotation_deg)
    corners = start.hr_corners_lr((h, w))
    y0, x0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    y1, x1 = np.minimum(np.ceil(corners.max(0)).astype(int), lr_c.shape)
    if y1 - y0 < 4 or x1 - x0 < 4:
        return geom
    uy, ux = np.meshgrid(np.arange(y0, y1) + 0.5, np.arange(x0, x1) + 0.5, indexing="ij")
    v = start.lr_to_hr(np.stack([uy, ux], axis=-1))
    m = 0.02 * max(h, w) + 2.0                             # keep points well inside the field (HR px)
    keep = (v[..., 0] > m) & (v[..., 0] < h - m) & (v[..., 1] > m) & (v[..., 1] < w - m)
    if keep.sum() < 64:
        return geom
    uy, ux, target = uy[keep], ux[keep], lr_c[y0:y1, x0:x1][keep]
    target = (target - target.mean()) / (target.std() + 1e-12)
    free = np.array([True, True, refine_rot, refine_scale, refine_scale and anisotropic])

    def coords(p: np.ndarray) -> tuple[np.ndarray, ...]:
        ky = p[3] if refine_scale else 0.0
        kx = p[4] if (refine_scale and anisotropic) else ky
        fy, fx = f0[0] * math.exp(ky), f0[1] * math.exp(kx)
        c, s = math.cos(p[2]), math.sin(p[2])
        dy, dx = uy - p[0], ux - p[1]
        ry, rx = c * dy - s * dx, s * dy + c * dx
        return np.stack([fy * ry - 0.5, fx * rx - 0.5]), dy, dx, ry, rx, fy, fx, c, s

    def fit(val: np.ndarray) -> tuple[float, float, np.ndarray]:
        # einsum, not `@`: a BLAS dot of more than 10k values wakes OpenBLAS's threads, which cost milliseconds per
        # call on a busy 2-core machine (the live fusion window registers one frame per second with this)
        vm = val - val.mean()
        a = float(np.einsum("i,i->", vm, target)) / max(float(np.einsum("i,i->", vm, vm)), 1e-300)
        res = a * vm - target                               # target has zero mean, so b = -a * mean(val)
        return a, float(np.einsum("i,i->", res, res)), res

    def sample(img: np.ndarray, cc: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(img, cc, order=1, mode="nearest")

    def jacobian(p: np.ndarray, cc: tuple, val: np.ndarray, a: float) -> np.ndarray:
        pts, dy, dx, ry, rx, fy, fx, c, s = cc
        gy, gx = a * sample(gy_img, pts), a * sample(gx_img, pts)
        cols = [-(gy * fy * c + gx * fx * s), -(-gy * fy * s + gx * fx * c),
                gy * fy * (-s * dy - c * dx) + gx * fx * (c * dy - s * dx)]
        cy, cx = gy * fy * ry, gx * fx * rx
        cols += [cy if anisotropic else cy + cx, cx]
        return np.stack([col for col, f in zip(cols, free) if f] + [val - val.mean()], -1)

    p = np.array([o[0], o[1], math.radians(geom.rotation_deg), 0.0, 0.0])
    idx = np.flatnonzero(free)
    cc = coords(p)
    val = sample(hr_f, cc[0])
    a, cost, res = fit(val)
    jac = jacobian(p, cc, val, a)
    lam = 1e-3
    tol = np.array([2e-3, 2e-3, 1e-5, 1e-5, 1e-5])[idx]
    for _ in range(n_iter):
        jtj, jtr = jac.T @ jac, jac.T @ res
        step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -jtr)[: idx.size]
        trial = p.copy()
        trial[idx] += step
        cc_t = coords(trial)
        val_t = sample(hr_f, cc_t[0])
        a_t, cost_t, res_t = fit(val_t)
        if cost_t < cost:
            p, cc, val, a, cost, res, lam = trial, cc_t, val_t, a_t, cost_t, res_t, max(lam / 3, 1e-7)
            if np.all(np.abs(step) < tol):
                break
            jac = jacobian(p, cc, val, a)
        else:
            lam *= 5
            if lam > 1e6:
                break
    ky = p[3] if refine_scale else 0.0
    kx = p[4] if (refine_scale and anisotropic) else ky
    score = float(np.corrcoef(val, target)[0, 1])
    return PairGeometry((p[0] * d, p[1] * d), (f0[0] * math.exp(ky) / d, f0[1] * math.exp(kx) / d),
                        math.degrees(p[2]), score)


def register_global(lr: np.ndarray, hr: np.ndarray, *, factor: float | tuple[float, float],
                    max_rotation_deg: float = 3.0, refine_scale: bool = True, anisotropic_scale: bool = True,
                    max_scale_change: float = 0.05, min_score: float = 0.3, coarse_size: int = 64) -> PairGeometry:
    """Locate the HR field inside the LR frame: shift, small rotation and small scale correction.

    Implements the global registration of paper Sec. III-A / Algorithm 1 step 2 (coarse grid search over
    (x, y, theta) on downsampled images, then refinement on the original images), with the MSE criterion
    replaced by the zero-mean normalised cross-correlation, which is maximised.

    Parameters
    ----------
    lr : (H, W) array
        LR frame (any real dtype; the FEI data bar must already be cropped).
    hr : (h, w) array
        HR reference scan.
    factor : float or (float, float)
        Nominal HR px per LR px along (y, x) = lr_px_nm / hr_px_nm; need not be an integer, must be >= 1.
    max_rotation_deg : float
        Rotations in [-max, +max] degrees are searched and refined; 0 fixes the rotation at 0.
    refine_scale : bool
        Refine the factor by a small relative amount (per axis when ``anisotropic_scale``).
    max_scale_change : float
        Largest accepted relative change of the factor (0.05 = 5 %); a refinement beyond it is discarded.
    min_score : float
        Smallest accepted NCC of the final match.
    coarse_size : int
        The coarse search coarsens the LR grid by ``d`` so that the template's short side is about this many px.

    Returns
    -------
    PairGeometry
        ``offset_yx`` in LR px, ``factor_yx`` in HR px per LR px, ``rotation_deg`` in degrees, ``score`` = NCC.

    Raises
    ------
    RegistrationError
        factor < 1, HR field larger than the LR frame, or no place with NCC >= ``min_score``.
    ValueError
        ``max_rotation_deg`` > 20.
    ImageError
        An input is not a usable grayscale image (e.g. constant).
    """
    fyx = _factor_pair(factor)
    max_rot = abs(float(max_rotation_deg))
    if max_rot > 20:
        raise ValueError(f"max_rotation_deg={max_rotation_deg} is too large: only small rotations (<= 20 deg) "
                         "are searched")
    lr_f = as_gray_float(lr, name="LR frame")
    hr_f = as_gray_float(hr, name="HR reference")
    h, w = hr_f.shape
    hf, wf = h / fyx[0], w / fyx[1]
    if hf > lr_f.shape[0] + 1e-6 or wf > lr_f.shape[1] + 1e-6:
        raise RegistrationError(
            f"HR field ({hf:.1f} x {wf:.1f} LR px at factor {fyx[0]:.4g}x{fyx[1]:.4g}) is larger than the LR frame "
            f"({lr_f.shape[0]} x {lr_f.shape[1]} LR px), so it cannot lie inside it; check the pixel sizes")
    lr_s, hr_s = _standardise(lr_f), _standardise(hr_f)
    d = max(1, int(min(hf, wf) // max(coarse_size, 8)))
    hr_d = _antialias(hr_s, (fyx[0] * d, fyx[1] * d))
    geom, coarse_score = _coarse_search(lr_s, hr_d, fyx, d, max_rot)
    if coarse_score < min_score:
        raise RegistrationError(
            f"HR reference does not match any place in the LR frame (best NCC {coarse_score:.2f} < {min_score:.2f}); "
            "are these images of the same area, with the right pixel sizes?")
    opts = dict(refine_rot=max_rot > 0, refine_scale=refine_scale, anisotropic=anisotropic_scale)
    levels = [d, 1] if d > 1 else [1]
    hr_1 = _antialias(hr_s, fyx)
    for level in levels:
        cand = _refine(lr_s, hr_d if level == d else hr_1, geom, d=level, **opts)
        rel = np.abs(np.log(np.array(cand.factor_yx) / np.array(fyx)))
        moved = np.abs(np.array(cand.offset_yx) - np.array(geom.offset_yx)).max()
        if (np.isfinite(cand.score) and rel.max() <= max_scale_change and abs(cand.rotation_deg) <= max_rot + 0.5
                and moved <= 2.0 * level + 2.0):
            geom = cand
    if not (math.isfinite(geom.score) and math.isfinite(geom.rotation_deg)):
        raise RegistrationError("global registration failed to converge")
    if geom.score < min_score:
        raise RegistrationError(
            f"HR reference does not match any place in the LR frame (best NCC {geom.score:.2f} < {min_score:.2f})")
    return geom


FACTOR_RATIOS = (0.5, 2 ** -0.5, 2 ** 0.5, 2.0)
"""Factors tried beside the nominal one by :func:`factor_scores`, relative to it (half to twice, in √2 steps)."""


def factor_scores(lr: np.ndarray, hr: np.ndarray, *, factor: float | tuple[float, float],
                  ratios: tuple[float, ...] = FACTOR_RATIOS, max_rotation_deg: float = 3.0,
                  coarse_size: int = 64) -> dict[float, float]:
    """How well the HR reference matches the LR frame at its nominal factor and at ``factor · r`` for each ratio.

    A check of the stated pixel sizes: :func:`register_global` refines the factor by a few percent only, and a
    textured specimen can match somewhere with a usable NCC at a factor that is wrong by 2x (an HR labelled 2x
    finer than the LR when it was 4.17x finer). Each factor gets the same coarse search as the registration's
    first step (FFT NCC over positions and small rotations on the LR coarsened so that the HR field spans about
    ``coarse_size`` px), so the scores are comparable.

    Parameters
    ----------
    lr, hr : (H, W), (h, w) arrays
        LR frame and HR reference (any real dtype).
    factor : float or (float, float)
        Nominal HR px per LR px along (y, x), from the pixel sizes.
    ratios : tuple of float
        Factors tried relative to ``factor``; 1.0 (the nominal factor) is always scored.

    Returns
    -------
    dict
        ratio -> best coarse NCC (NaN where the HR field at that factor is larger than the LR frame, smaller
        than the search needs, or below one LR px per HR px).
    """
    fyx = _factor_pair(factor)
    lr_s = _standardise(as_gray_float(lr, name="LR frame"))
    hr_s = _standardise(as_gray_float(hr, name="HR reference"))
    h, w = hr_s.shape
    scores: dict[float, float] = {}
    for ratio in sorted({1.0, *(float(r) for r in ratios)}):
        f = (fyx[0] * ratio, fyx[1] * ratio)
        hf, wf = h / f[0], w / f[1]
        if min(f) < 1.0 or hf > lr_s.shape[0] or wf > lr_s.shape[1]:
            scores[ratio] = float("nan")
            continue
        d = max(1, int(min(hf, wf) // max(coarse_size, 8)))
        try:
            _, score = _coarse_search(lr_s, _antialias(hr_s, (f[0] * d, f[1] * d)), f, d, abs(float(max_rotation_deg)))
        except RegistrationError:
            score = float("nan")
        scores[ratio] = float(score)
    return scores


def overlap_box(geometry: PairGeometry, lr_shape: tuple[int, int], hr_shape: tuple[int, int]
                ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Integer LR pixel box ``((y0, y1), (x0, x1))`` (half-open, LR px) inside both the LR frame and the HR field.

    For a rotated field the box is bounded by the innermost corner on each side (valid for |theta| < 45 deg).
    Raises :class:`RegistrationError` when the HR field does not overlap the LR frame by at least one pixel.
    """
    c = geometry.hr_corners_lr(hr_shape)                 # TL, TR, BL, BR
    y0 = max(math.ceil(max(c[0, 0], c[1, 0]) - 1e-9), 0)
    y1 = min(math.floor(min(c[2, 0], c[3, 0]) + 1e-9), int(lr_shape[0]))
    x0 = max(math.ceil(max(c[0, 1], c[2, 1]) - 1e-9), 0)
    x1 = min(math.floor(min(c[1, 1], c[3, 1]) + 1e-9), int(lr_shape[1]))
    if y1 <= y0 or x1 <= x0:
        raise RegistrationError(
            f"HR field (LR corners y {c[:, 0].min():.1f}..{c[:, 0].max():.1f}, x {c[:, 1].min():.1f}.."
            f"{c[:, 1].max():.1f}) lies outside the LR frame ({lr_shape[0]} x {lr_shape[1]})")
    return (y0, y1), (x0, x1)


def _box_grid(lr_box: tuple[tuple[int, int], tuple[int, int]], scale: int) -> np.ndarray:
    """LR edge coordinates (S*bh, S*bw, 2) of the centres of the box refined ``scale`` times."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    (y0, y1), (x0, x1) = lr_box
    ys = y0 + (np.arange((y1 - y0) * scale) + 0.5) / scale
    xs = x0 + (np.arange((x1 - x0) * scale) + 0.5) / scale
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gy, gx], axis=-1)


def resample_hr_to_lr_grid(hr: np.ndarray, geometry: PairGeometry, lr_box: tuple[tuple[int, int], tuple[int, int]],
                           scale: int, *, order: int = 3, antialias: bool = True) -> np.ndarray:
    """Resample the HR scan onto the LR box refined ``scale`` times (the S-times ground truth / training target).

    Output pixel ``(Y, X)`` (shape ``((y1-y0)*S, (x1-x0)*S)``) has its centre at LR edge coordinates
    ``(y0 + (Y + 0.5)/S, x0 + (X + 0.5)/S)``, mapped into the HR scan by ``geometry`` and sampled with an
    ``order`` spline. When the HR sampling is finer than the target grid (``r = factor/S > 1``) the HR image is
    first smoothed with a Gaussian of sigma ``0.5 * sqrt(r^2 - 1)`` HR px per axis (anti-aliasing).

    Raises :class:`RegistrationError` when the box reaches more than half an HR pixel outside the HR field.
    """
    hr_f = as_gray_float(hr, name="HR reference")
    pts = geometry.lr_to_hr(_box_grid(lr_box, scale))
    tol = 0.5
    if (pts[..., 0].min() < -tol or pts[..., 1].min() < -tol or pts[..., 0].max() > hr_f.shape[0] + tol
            or pts[..., 1].max() > hr_f.shape[1] + tol):
        raise RegistrationError(
            f"LR box {lr_box} at x{scale} reaches outside the HR field (HR coords y {pts[..., 0].min():.1f}.."
            f"{pts[..., 0].max():.1f}, x {pts[..., 1].min():.1f}..{pts[..., 1].max():.1f}; HR shape {hr_f.shape})")
    if antialias:
        hr_f = _antialias(hr_f, (geometry.factor_yx[0] / scale, geometry.factor_yx[1] / scale))
    return _sample(hr_f, pts, order=order)
