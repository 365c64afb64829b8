"""SEM-like synthetic specimens, scans and LR/HR pairs with known geometry, for tests and the offline demo.

Coordinates are pixel-edge throughout refscope: pixel ``i`` covers ``[i, i + 1)``, its centre is ``i + 0.5``.
Points are ``(y, x)``. A scan of rotation ``theta`` maps specimen coordinates ``s`` to image coordinates
``u = R(theta) (s - origin) / pixel_size`` with ``R(theta) = [[cos, -sin], [sin, cos]]`` acting on ``(y, x)``
column vectors, as in :class:`refscope.models.registration.PairGeometry` (a positive angle shows the specimen
rotated counter-clockwise on screen, like ``skimage.transform.rotate(image, +theta)``). For a pair this gives
the refscope convention ``u_hr = factor * R(theta) (u_lr - offset)``.

Nothing here reads or writes files; randomness comes only from the ``rng`` argument.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .degradations import add_poisson_gaussian

__all__ = ["KINDS", "NOISE_PRESETS", "ScanNoise", "SyntheticPair", "rotation_matrix_yx", "render_specimen", "scan",
           "make_pair"]

KINDS = ("particles", "fibres", "cells", "mixed")


def rotation_matrix_yx(rotation_deg: float) -> np.ndarray:
    """(2, 2) matrix R(theta) acting on ``(y, x)`` column vectors: ``[[cos, -sin], [sin, cos]]``."""
    t = math.radians(rotation_deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s], [s, c]])


# ------------------------------------------------------------------------------------------------ specimen
def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, n_modes: int = 6) -> np.ndarray:
    """Slowly varying field in [-1, 1]: random low-frequency separable cosines plus a tilt, as one matmul."""
    h, w = shape
    y = np.arange(h, dtype=np.float32) / max(h, w)
    x = np.arange(w, dtype=np.float32) / max(h, w)
    fy, fx = rng.uniform(0.2, 2.5, (2, n_modes, 1)).astype(np.float32)
    py, px = rng.uniform(0, 2 * np.pi, (2, n_modes, 1)).astype(np.float32)
    amp = rng.normal(size=(n_modes + 2, 1)).astype(np.float32)
    left = np.vstack([np.cos(2 * np.pi * fy * y + py), y - 0.5, np.ones_like(y)]) * amp
    right = np.vstack([np.cos(2 * np.pi * fx * x + px), np.ones_like(x), x - 0.5])
    field = left.T @ right
    return field / max(float(np.abs(field).max()), 1e-6)


def _texture(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Fine isotropic texture, zero mean and unit standard deviation, float32."""
    tex = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return tex / max(float(tex.std()), 1e-6)


class _Objects:
    """Objects laid one per occupied tile of a randomly offset grid, each drawn only in its own window.

    Windows of different tiles never overlap, so a layer is rendered as one batch of (N, win, win) arrays and
    scattered into full-size coverage/value maps without loops.
    """

    def __init__(self, shape, rng, reach: float, occupancy: float, slack: float = 1.6):
        self.shape = shape
        self.tile = tile = int(math.ceil(slack * 2 * (reach + 1.5))) + 2
        off = rng.integers(0, tile, 2)
        ny, nx = -(-(shape[0] + off[0]) // tile), -(-(shape[1] + off[1]) // tile)
        ty, tx = np.nonzero(rng.random((ny, nx)) < occupancy)
        self.n = n = ty.size
        span = tile - 2 * (reach + 1.5)
        self.cy = (ty * tile - off[0] + reach + 1.5 + rng.random(n) * span).astype(np.float32)
        self.cx = (tx * tile - off[1] + reach + 1.5 + rng.random(n) * span).astype(np.float32)
        self.win = win = int(math.ceil(2 * reach)) + 2
        y0 = np.floor(self.cy - reach).astype(np.int64)
        x0 = np.floor(self.cx - reach).astype(np.int64)
        self.iy = y0[:, None, None] + np.arange(win)[None, :, None]
        self.ix = x0[:, None, None] + np.arange(win)[None, None, :]
        # offsets of pixel centres from the object centres, (N, win, 1) and (N, 1, win)
        self.dy = (self.iy + np.float32(0.5) - self.cy[:, None, None]).astype(np.float32)
        self.dx = (self.ix + np.float32(0.5) - self.cx[:, None, None]).astype(np.float32)

    def param(self, rng, lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, self.n).astype(np.float32)[:, None, None]

    def scatter(self, *maps: np.ndarray) -> list[np.ndarray]:
        """Place (N, win, win) maps into zero-filled (H, W) float32 images (parts outside are dropped)."""
        h, w = self.shape
        iy = np.broadcast_to(self.iy, (self.n, self.win, self.win))
        ix = np.broadcast_to(self.ix, (self.n, self.win, self.win))
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        flat = iy[inside] * w + ix[inside]
        out = []
        for m in maps:
            canvas = np.zeros(h * w, np.float32)
            canvas[flat] = np.broadcast_to(m, inside.shape)[inside]
            out.append(canvas.reshape(h, w))
        return out


def _particles(shape, rng, r_lo, r_hi, occupancy):
    """Coverage and value maps of ellipses with secondary-electron edge brightening."""
    obj = _Objects(shape, rng, r_hi, occupancy)
    a = obj.param(rng, r_lo, r_hi)
    b = a * obj.param(rng, 0.55, 1.0)
    th = obj.param(rng, 0.0, np.pi)
    base, rim, tilt = obj.param(rng, 0.45, 0.8), obj.param(rng, 0.1, 0.25), obj.param(rng, -0.06, 0.06)
    c, s = np.cos(th), np.sin(th)
    xr, yr = (c * obj.dx + s * obj.dy) / a, (c * obj.dy - s * obj.dx) / b
    rho = np.sqrt(xr * xr + yr * yr)
    alpha = np.clip((1.0 - rho) * b + 0.5, 0.0, 1.0)
    value = base + rim * np.minimum(rho, 1.0) ** 4 + tilt * (obj.dy / a)
    return obj.scatter(alpha, value)


def _cells(shape, rng, r_lo, r_hi, occupancy):
    """Coverage, interior value and additive membrane maps of large irregular blobs."""
    membrane_w = max(1.0, 0.12 * r_lo)
    obj = _Objects(shape, rng, 1.25 * r_hi + 3 * membrane_w, occupancy, slack=1.3)
    phi = np.arctan2(obj.dy, obj.dx)
    wobble = sum(obj.param(rng, -0.08, 0.08) * np.cos(k * phi + obj.param(rng, 0, 2 * np.pi)) for k in (2, 3, 4))
    dist = np.sqrt(obj.dy * obj.dy + obj.dx * obj.dx) - obj.param(rng, r_lo, r_hi) * (1.0 + wobble)
    alpha = np.clip(0.5 - dist, 0.0, 1.0)
    membrane = obj.param(rng, 0.25, 0.45) * np.exp(-0.5 * (dist / membrane_w) ** 2)
    return obj.scatter(alpha, obj.param(rng, 0.28, 0.42), membrane)


def _fibres(shape, rng, n_fibres, half_width):
    """Coverage map and edge-brightening term of random smooth curves with a tube profile.

    All centrelines are splatted bilinearly (per-fibre line density ``rho``) and blurred by a Gaussian of
    sigma; near a straight line the blurred density is ``rho exp(-d^2 / 2 sigma^2) / (sqrt(2 pi) sigma)``,
    which is inverted for the distance ``d`` (exact for ``rho = 1``; other densities give thinner or wider
    fibres). Crossing fibres merge smoothly.
    """
    h, w = shape
    step = 0.5
    ys, xs, wts = [], [], []
    for _ in range(n_fibres):
        n = int(rng.uniform(0.6, 1.4) * math.hypot(h, w) / step)
        knots = rng.normal(size=n // 60 + 2) * rng.uniform(0.002, 0.012)  # curvature (rad/step) every 30 px
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(np.interp(np.arange(n) / 60.0, np.arange(knots.size), knots))
        ys.append(rng.uniform(0, h) + np.cumsum(step * np.sin(heading)) - 0.5 * n * step * np.sin(heading[0]))
        xs.append(rng.uniform(0, w) + np.cumsum(step * np.cos(heading)) - 0.5 * n * step * np.cos(heading[0]))
        wts.append(np.full(n, step * rng.uniform(0.45, 1.6)))
    y, x, wt = np.concatenate(ys) - 0.5, np.concatenate(xs) - 0.5, np.concatenate(wts)  # pixel-centre indices
    iy, ix = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - iy, x - ix
    dens = np.zeros(h * w)
    for oy, ox, wy, wx in ((0, 0, 1 - fy, 1 - fx), (0, 1, 1 - fy, fx), (1, 0, fy, 1 - fx), (1, 1, fy, fx)):
        yy, xx = iy + oy, ix + ox
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        dens += np.bincount(yy[ok] * w + xx[ok], weights=(wt * wy * wx)[ok], minlength=h * w)
    sigma = half_width / 1.5
    g = ndimage.gaussian_filter(dens.reshape(h, w).astype(np.float32), sigma, truncate=3.0)
    g = np.maximum(g * np.float32(math.sqrt(2 * math.pi) * sigma), np.float32(1e-30))
    dist = sigma * np.sqrt(np.maximum(-2.0 * np.log(g), 0.0))
    alpha = np.clip(half_width - dist + 0.5, 0.0, 1.0)
    t = np.minimum(dist / half_width, 1.0)
    return alpha, 0.22 * t * t


def render_specimen(shape: tuple[int, int], *, rng: np.random.Generator, kind: str = "mixed",
                    feature_px: float = 8.0) -> np.ndarray:
    """Render a clean SEM-like secondary-electron scene.

    A smoothly varying dark background with fine texture carries, depending on ``kind``:
    ``"particles"`` (ellipses of varied size and brightness with bright rims), ``"fibres"`` (random
    smooth curves of varied width, brighter at their edges), ``"cells"`` (large irregular blobs with
    textured interiors and bright membranes) or ``"mixed"`` (all three, sparser). Objects are placed
    one per occupied tile of randomly offset grids and rendered in batches, so rendering is vectorised
    (a 2048x2048 scene takes well under 2 s).

    Parameters
    ----------
    shape : (int, int)
        Output shape (H, W) in specimen pixels.
    rng : numpy.random.Generator
        Source of all randomness (same seed, same scene).
    kind : str
        One of :data:`KINDS`.
    feature_px : float
        Typical particle radius in specimen pixels; fibre widths and cell sizes scale with it.

    Returns
    -------
    (H, W) float64
        Signal in [0, 1].

    References
    ----------
    .. [1] L. Reimer, *Scanning Electron Microscopy*, 2nd ed., Springer 1998, Ch. 4 (edge effect of the
       secondary-electron signal that brightens particle rims).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    h, w = (int(v) for v in shape)
    if h < 8 or w < 8:
        raise ValueError(f"shape must be at least 8x8, got {shape!r}")
    if not feature_px > 0:
        raise ValueError(f"feature_px must be positive, got {feature_px!r}")
    f = float(feature_px)
    texture = _texture((h, w), rng, sigma=max(0.8, 0.12 * f))
    image = 0.17 + 0.07 * _smooth_field((h, w), rng) + 0.02 * texture
    scale = 0.5 if kind == "mixed" else 1.0
    if kind in ("cells", "mixed"):
        alpha, value, membrane = _cells((h, w), rng, 3.0 * f, 5.0 * f, 0.85 * scale)
        image += alpha * (value + 0.07 * texture - image) + membrane
    if kind in ("fibres", "mixed"):
        n = max(2, int(round(scale * scale * math.sqrt(h * w) / (6.0 * f))))
        alpha, rim = _fibres((h, w), rng, n, 0.7 * f)
        image += alpha * (0.62 + 0.1 * _smooth_field((h, w), rng) + rim - image)
    if kind in ("particles", "mixed"):
        for r_lo, r_hi, occ in ((1.0, 2.0, 0.7), (0.6, 1.2, 0.7), (0.35, 0.7, 0.8)):
            alpha, value = _particles((h, w), rng, r_lo * f, r_hi * f, occ * scale)
            image += alpha * (value - image)
    return np.clip(image, 0.0, 1.0).astype(np.float64)


# ---------------------------------------------------------------------------------------------------- scan
def scan(specimen: np.ndarray, *, field_box: tuple[float, float, int, int], pixel_size: float,
         probe_sigma_px: float, rotation_deg: float = 0.0, dose: float | None, read_noise: float,
         rng: np.random.Generator | None, line_jitter_px: float = 0.0, dtype: str = "float64") -> np.ndarray:
    """Simulate an SEM scan of one field of a specimen.

    Image pixel centre ``u = (i + 0.5, j + 0.5)`` samples the probe-blurred specimen at
    ``s = origin + pixel_size * R(theta)^T u`` (specimen pixel-edge coordinates, bilinear interpolation;
    no pixel integration, so a coarse scan aliases like a real undersampled SEM scan). Then
    ``counts = Poisson(dose * signal) / dose + Normal(0, read_noise)``.

    Parameters
    ----------
    specimen : (Hs, Ws) array_like
        Clean signal, nominally in [0, 1].
    field_box : (y0, x0, rows, cols)
        Top-left corner of the field in specimen pixel-edge coordinates and the output shape.
    pixel_size : float
        Specimen pixels per image pixel (may be non-integer).
    probe_sigma_px : float
        Gaussian probe standard deviation in *image* pixels.
    rotation_deg : float
        Scan rotation theta (see the module docstring for the matrix).
    dose : float or None
        Mean detected electrons per unit signal per pixel; None disables shot noise.
    read_noise : float
        Standard deviation of additive Gaussian noise, in signal units.
    rng : numpy.random.Generator or None
        Needed when any noise or jitter is requested.
    line_jitter_px : float
        Standard deviation of a random shift of each scan line along x, in image pixels.
    dtype : {"float64", "uint16"}
        ``uint16`` maps signal [0, 1] to [0, 65535] with clipping.

    Returns
    -------
    (rows, cols) float64 or uint16
    """
    spec = np.asarray(specimen, dtype=np.float64)
    y0, x0, rows, cols = field_box
    rows, cols = int(rows), int(cols)
    if spec.ndim != 2 or rows < 1 or cols < 1:
        raise ValueError(f"need a 2-D specimen and a positive output shape, got {spec.shape} and {(rows, cols)}")
    if not pixel_size > 0 or probe_sigma_px < 0 or read_noise < 0 or line_jitter_px < 0:
        raise ValueError("pixel_size must be > 0; probe_sigma_px, read_noise and line_jitter_px must be >= 0")
    if dose is not None and not dose > 0:
        raise ValueError(f"dose must be positive or None, got {dose!r}")
    if dtype not in ("float64", "uint16"):
        raise ValueError(f"dtype must be 'float64' or 'uint16', got {dtype!r}")
    noisy = dose is not None or read_noise > 0 or line_jitter_px > 0
    if noisy and rng is None:
        raise ValueError("rng is required when dose, read_noise or line_jitter_px adds randomness")
    rt = rotation_matrix_yx(rotation_deg).T * pixel_size
    uy = (np.arange(rows) + 0.5)[:, None] * np.ones((1, cols))
    ux = (np.arange(cols) + 0.5)[None, :] * np.ones((rows, 1))
    if line_jitter_px > 0:
        ux = ux + rng.normal(0.0, line_jitter_px, (rows, 1))
    sy = y0 + rt[0, 0] * uy + rt[0, 1] * ux
    sx = x0 + rt[1, 0] * uy + rt[1, 1] * ux
    sigma = probe_sigma_px * pixel_size
    pad = int(math.ceil(4 * sigma)) + 2
    ya, yb = max(int(math.floor(sy.min())) - pad, 0), min(int(math.ceil(sy.max())) + pad, spec.shape[0])
    xa, xb = max(int(math.floor(sx.min())) - pad, 0), min(int(math.ceil(sx.max())) + pad, spec.shape[1])
    if ya >= yb or xa >= xb:
        raise ValueError(f"field {field_box} lies outside the specimen of shape {spec.shape}")
    crop = spec[ya:yb, xa:xb]
    if sigma > 0:
        crop = ndimage.gaussian_filter(crop, sigma, mode="nearest")
    signal = ndimage.map_coordinates(crop, [sy - 0.5 - ya, sx - 0.5 - xa], order=1, mode="nearest")
    signal = add_poisson_gaussian(signal, sigma=read_noise, dose=dose, rng=rng)
    if dtype == "uint16":
        return np.rint(np.clip(signal, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return signal


# ---------------------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class ScanNoise:
    """Noise of a synthetic pair: doses (electrons per unit signal per pixel, None = no shot noise),
    additive read noise (signal units) and LR line jitter (LR pixels)."""

    lr_dose: float | None
    hr_dose: float | None
    read_noise: float
    line_jitter_px: float = 0.0


NOISE_PRESETS: dict[str, ScanNoise] = {
    "none": ScanNoise(None, None, 0.0),
    "low": ScanNoise(3000.0, 3000.0, 0.003),
    "moderate": ScanNoise(300.0, 300.0, 0.01, 0.1),
    "high": ScanNoise(60.0, 80.0, 0.02, 0.25),
}


@dataclass(frozen=True)
class SyntheticPair:
    """A synthetic LR frame, an HR reference scan inside it and the truth they were made from.

    Attributes
    ----------
    lr : (H, W) float64
        LR scan of the whole LR field.
    hr : (Hh, Wh) float64
        HR scan; ``Hh = round(factor * sqrt(hr_fraction) * H)`` (likewise W), so the HR field covers about
        ``hr_fraction`` of the LR field. For factor 2 and 25 % the HR has the same shape as the LR.
    hr_clean : (Hh, Wh) float64
        The HR scan without noise.
    specimen : (Hs, Ws) float64
        Clean specimen the scans sampled.
    offset_yx : (float, float)
        LR pixel-edge coordinates of the HR field's top-left corner.
    factor_yx : (float, float)
        HR pixels per LR pixel along y and x.
    rotation_deg : float
        HR scan rotation: ``u_hr = factor * R(theta) (u_lr - offset)``.
    lr_pixel_size_nm, hr_pixel_size_nm, specimen_pixel_size_nm : float
        Physical pixel sizes.
    lr_origin_yx : (float, float)
        Specimen pixel-edge coordinates of the LR field's top-left corner.
    specimen_px_per_lr_px : float
        Sampling of the LR scan in specimen pixels.
    hr_probe_sigma_px : float
        HR probe sigma in HR pixels (used by :meth:`truth_on_lr_grid`).
    """

    lr: np.ndarray
    hr: np.ndarray
    hr_clean: np.ndarray
    specimen: np.ndarray
    offset_yx: tuple[float, float]
    factor_yx: tuple[float, float]
    rotation_deg: float
    lr_pixel_size_nm: float
    hr_pixel_size_nm: float
    specimen_pixel_size_nm: float
    lr_origin_yx: tuple[float, float]
    specimen_px_per_lr_px: float
    hr_probe_sigma_px: float

    def lr_to_hr(self, points_yx: np.ndarray) -> np.ndarray:
        """Map (N, 2) LR pixel-edge coordinates to HR ones: ``factor * R(theta) (u_lr - offset)``."""
        d = np.asarray(points_yx, dtype=np.float64) - np.asarray(self.offset_yx)
        return (d @ rotation_matrix_yx(self.rotation_deg).T) * np.asarray(self.factor_yx)

    def hr_to_lr(self, points_yx: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`lr_to_hr` for (N, 2) HR pixel-edge coordinates."""
        u = np.asarray(points_yx, dtype=np.float64) / np.asarray(self.factor_yx)
        return u @ rotation_matrix_yx(self.rotation_deg) + np.asarray(self.offset_yx)

    def truth_on_lr_grid(self, scale: float) -> np.ndarray:
        """Noise-free scan of the whole LR field, ``scale`` times finer than the LR, with the HR probe.

        Returns ``(round(scale * H), round(scale * W))`` float64: what an ideal HR-quality scan of the
        whole LR field would show, the target for scoring a ``scale``-times super-resolved LR frame.
        """
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        pixel = self.specimen_px_per_lr_px / scale
        probe_spec = self.hr_probe_sigma_px * self.specimen_px_per_lr_px / self.factor_yx[0]
        shape = (int(round(scale * self.lr.shape[0])), int(round(scale * self.lr.shape[1])))
        box = (self.lr_origin_yx[0], self.lr_origin_yx[1], shape[0], shape[1])
        return scan(self.specimen, field_box=box, pixel_size=pixel, probe_sigma_px=probe_spec / pixel,
                    dose=None, read_noise=0.0, rng=None)


def make_pair(*, rng: np.random.Generator, lr_shape: tuple[int, int] = (256, 320), factor: float = 2.0,
              hr_fraction: float = 0.25, rotation_deg: float = 0.0, kind: str = "mixed",
              noise: str | ScanNoise = "moderate", lr_pixel_size_nm: float = 10.0, oversample: float = 2.0,
              lr_probe_sigma_px: float = 0.5, hr_probe_sigma_px: float = 0.6,
              lr_gain_offset: tuple[float, float] = (1.0, 0.0)) -> SyntheticPair:
    """Make an LR frame and an HR reference scan of a random part of it, with the true geometry.

    The specimen is rendered at ``oversample`` specimen pixels per HR pixel (``factor * oversample`` per
    LR pixel) over the LR field plus a 4-LR-pixel margin. The HR field, rotated by ``rotation_deg``,
    is placed uniformly at random so that it lies entirely inside the LR field (1 LR px margin).

    Parameters
    ----------
    rng : numpy.random.Generator
        All randomness (specimen, placement, noise).
    lr_shape : (int, int)
        LR image shape (H, W).
    factor : float
        HR/LR sampling ratio (> 1; may be non-integer).
    hr_fraction : float
        Fraction of the LR field's area covered by the HR field, in (0, 1].
    rotation_deg : float
        HR scan rotation.
    kind : str
        Specimen kind, see :func:`render_specimen`.
    noise : str or ScanNoise
        A key of :data:`NOISE_PRESETS` or explicit noise settings.
    lr_pixel_size_nm : float
        LR pixel size; the HR's is ``lr_pixel_size_nm / factor``.
    oversample : float
        Specimen pixels per HR pixel.
    lr_probe_sigma_px, hr_probe_sigma_px : float
        Probe sigmas in each scan's own pixels.
    lr_gain_offset : (float, float)
        Contrast change applied to the LR signal before noise (real pairs differ in contrast).

    Returns
    -------
    SyntheticPair
    """
    if isinstance(noise, str):
        if noise not in NOISE_PRESETS:
            raise ValueError(f"noise must be one of {tuple(NOISE_PRESETS)} or a ScanNoise, got {noise!r}")
        noise = NOISE_PRESETS[noise]
    if not factor > 1 or not 0 < hr_fraction <= 1 or not oversample > 0 or len(lr_shape) != 2:
        raise ValueError(f"need factor > 1, 0 < hr_fraction <= 1, oversample > 0; got {factor}, {hr_fraction}, "
                         f"{oversample}")
    h, w = (int(v) for v in lr_shape)
    s_lr = factor * oversample
    margin = 4
    spec_shape = (int(math.ceil((h + 2 * margin) * s_lr)), int(math.ceil((w + 2 * margin) * s_lr)))
    specimen = render_specimen(spec_shape, rng=rng, kind=kind, feature_px=3.0 * oversample)
    lr_origin = (margin * s_lr, margin * s_lr)

    side = factor * math.sqrt(hr_fraction)
    hr_shape = (max(8, int(round(side * h))), max(8, int(round(side * w))))
    corners = np.array([[0, 0], [hr_shape[0], 0], [0, hr_shape[1]], [hr_shape[0], hr_shape[1]]], float)
    rel = corners @ rotation_matrix_yx(rotation_deg) / factor  # R^T u_hr / factor, row-vector form
    lo, hi = 1.0 - rel.min(axis=0), np.array([h, w]) - 1.0 - rel.max(axis=0)
    if np.any(hi < lo):
        raise ValueError(f"an HR field of {hr_shape} px at x{factor} rotated {rotation_deg} deg does not fit "
                         f"inside the LR field {lr_shape}; lower hr_fraction")
    offset = lo + rng.random(2) * (hi - lo)
    hr_origin = (lr_origin[0] + s_lr * offset[0], lr_origin[1] + s_lr * offset[1])

    gain, off = lr_gain_offset
    lr_signal = gain * scan(specimen, field_box=(*lr_origin, h, w), pixel_size=s_lr,
                            probe_sigma_px=lr_probe_sigma_px, dose=None, read_noise=0.0, rng=rng,
                            line_jitter_px=noise.line_jitter_px) + off
    lr = add_poisson_gaussian(lr_signal, sigma=noise.read_noise, dose=noise.lr_dose, rng=rng)
    hr_clean = scan(specimen, field_box=(*hr_origin, *hr_shape), pixel_size=oversample,
                    probe_sigma_px=hr_probe_sigma_px, rotation_deg=rotation_deg, dose=None, read_noise=0.0, rng=None)
    hr = add_poisson_gaussian(hr_clean, sigma=noise.read_noise, dose=noise.hr_dose, rng=rng)
    return SyntheticPair(
        lr=lr, hr=hr, hr_clean=hr_clean, specimen=specimen,
        offset_yx=(float(offset[0]), float(offset[1])), factor_yx=(float(factor), float(factor)),
        rotation_deg=float(rotation_deg), lr_pixel_size_nm=float(lr_pixel_size_nm),
        hr_pixel_size_nm=float(lr_pixel_size_nm) / factor, specimen_pixel_size_nm=float(lr_pixel_size_nm) / s_lr,
        lr_origin_yx=(float(lr_origin[0]), float(lr_origin[1])), specimen_px_per_lr_px=float(s_lr),
        hr_probe_sigma_px=float(hr_probe_sigma_px),
    )
