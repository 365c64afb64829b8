"""Synthetic training pairs: resampling kernels, EMSR's synthetic I/II degradations and LR-only multi-scale pairs.

All functions are pure NumPy: (H, W) float arrays in, float64 arrays out, randomness only from the ``rng``
argument. Coordinates are pixel-edge (pixel ``i`` covers ``[i, i + 1)``): resizing (H, W) to (h, w) samples
output pixel ``i`` at input position ``(i + 0.5)·H/h`` (edge coordinates), so both images cover the same field.

:func:`resize` follows Pillow's ``Image.resize`` for the six interpolations of Wagner et al.'s degradation set
(:data:`INTERPOLATIONS`): nearest neighbour takes input pixel ``floor((i + 0.5)·H/h)`` and never filters, so it
keeps the per-pixel noise of a point-scanned image; the filters (box, bilinear, Hamming, Keys bicubic a = -0.5,
Lanczos-3) are stretched by the reduction factor when downscaling (anti-aliasing) and renormalised where their
support leaves the image.

Noise levels of :class:`BlurNoise` are in image units; the presets assume images normalised to about [0, 1]
(the paper's σ ∈ [20, 40] on 0-255 becomes 20/255..40/255).

References
----------
M. Khateri et al., "No-Clean-Reference Image Super-Resolution: Application to Electron Microscopy",
IEEE TCI (2024), Sec. III-B: synthetic (I) = bicubic downsampling; synthetic (II) = Gaussian blur κ ∈ [0, 3],
noise σ ∈ [20, 40], bicubic downsampling, noise σ ∈ [5, 15].
F. Wagner et al., "Multi-scale training for super-resolution of microscope images from low-resolution data only"
(2024), Sec. 3.2, Fig. 2 and Table 1: sub-processes (1)-(4), factors α, β, γ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .image_ops import keys_kernel, upsample_bicubic

__all__ = ["INTERPOLATIONS", "resize", "downscale", "bicubic_downsample", "gaussian_blur", "add_poisson_gaussian",
           "BlurNoise", "SYNTHETIC_I", "SYNTHETIC_II", "synthetic_lr", "MultiScaleConfig", "MULTISCALE_PRESETS",
           "TrainingPair", "multiscale_pair"]

#: Wagner et al.'s degradation set for sub-processes (1)-(3).
INTERPOLATIONS = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")


def _sinc(x: np.ndarray) -> np.ndarray:
    return np.sinc(x)  # sin(pi x) / (pi x)


_FILTERS = {  # name -> (kernel on input-pixel distances, support radius), as Pillow
    "box": (lambda x: ((x >= -0.5) & (x < 0.5)).astype(np.float64), 0.5),
    "bilinear": (lambda x: np.clip(1.0 - np.abs(x), 0.0, None), 1.0),
    "hamming": (lambda x: np.where(np.abs(x) < 1, _sinc(x) * (0.54 + 0.46 * np.cos(np.pi * x)), 0.0), 1.0),
    "bicubic": (lambda x: keys_kernel(x, -0.5), 2.0),
    "lanczos": (lambda x: np.where(np.abs(x) < 3, _sinc(x) * _sinc(x / 3.0), 0.0), 3.0),
}


def _axis_weights(n_in: int, n_out: int, method: str, start: int, count: int) -> tuple[np.ndarray, int]:
    """Weights (count, span) of output pixels ``start .. start+count-1`` over input pixels ``first .. first+span-1``."""
    ratio = n_in / n_out
    centres = (np.arange(start, start + count) + 0.5) * ratio          # edge coordinates in the input
    if method == "nearest":
        idx = np.minimum(np.floor(centres).astype(np.int64), n_in - 1)
        first = int(idx.min())
        weights = np.zeros((count, int(idx.max()) - first + 1))
        weights[np.arange(count), idx - first] = 1.0
        return weights, first
    kernel, support = _FILTERS[method]
    stretch = max(ratio, 1.0)
    radius = support * stretch
    lo = max(int(math.floor(centres.min() - radius)), 0)
    hi = min(int(math.ceil(centres.max() + radius)), n_in)
    taps = np.arange(lo, hi)
    weights = kernel((taps[None, :] + 0.5 - centres[:, None]) / stretch)
    total = weights.sum(axis=1, keepdims=True)
    if np.any(total == 0):  # cannot happen for sane sizes; guard against a division by zero
        raise ValueError(f"{method} resize from {n_in} to {n_out} px leaves an output pixel without input")
    return weights / total, lo


def resize(image: np.ndarray, shape: tuple[int, int], method: str = "bicubic", *,
           window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Resample (H, W) onto ``shape`` covering the same field, Pillow-style (see the module docstring).

    Parameters
    ----------
    image : (H, W) array
    shape : (int, int)
        Output (h, w) of the whole resized image, >= 1 each.
    method : str
        One of :data:`INTERPOLATIONS`.
    window : (y0, x0, hh, ww), optional
        Compute only this crop of the resized image (rows y0..y0+hh-1, columns x0..x0+ww-1); touches only the
        input pixels it needs, so cropping a patch out of a large rescaled frame is cheap.

    Returns
    -------
    (h, w) or (hh, ww) float64 array
    """
    if method not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {method!r}; choose one of {', '.join(INTERPOLATIONS)}")
    img = np.asarray(image, dtype=np.float64)
    out_h, out_w = int(shape[0]), int(shape[1])
    if img.ndim != 2 or out_h < 1 or out_w < 1:
        raise ValueError(f"need a 2-D image and a positive output shape, got {img.shape} -> {shape}")
    y0, x0, hh, ww = (0, 0, out_h, out_w) if window is None else (int(v) for v in window)
    if y0 < 0 or x0 < 0 or hh < 1 or ww < 1 or y0 + hh > out_h or x0 + ww > out_w:
        raise ValueError(f"window {window} lies outside the resized image of shape {(out_h, out_w)}")
    wy, fy = _axis_weights(img.shape[0], out_h, method, y0, hh)
    wx, fx = _axis_weights(img.shape[1], out_w, method, x0, ww)
    return wy @ img[fy:fy + wy.shape[1], fx:fx + wx.shape[1]] @ wx.T


def downscale(image: np.ndarray, factor: int, method: str = "bicubic") -> np.ndarray:
    """Reduce (H, W) by an integer ``factor`` to (H // factor, W // factor) (the bottom/right remainder is dropped).

    ``"nearest"`` keeps pixel ``factor·i + factor // 2``; ``"box"`` is the mean of each factor x factor block.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape[0] // factor, img.shape[1] // factor
    if h < 1 or w < 1:
        raise ValueError(f"image {img.shape} is smaller than the factor {factor}")
    return resize(img[: h * factor, : w * factor], (h, w), method)


def bicubic_downsample(hr: np.ndarray, scale: int) -> np.ndarray:
    """Synthetic (I): anti-aliased Keys bicubic downsampling by ``scale`` (MATLAB ``imresize``-like)."""
    return downscale(hr, scale, "bicubic")


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur of standard deviation ``sigma`` px (mirror borders); ``sigma = 0`` copies."""
    img = np.asarray(image, dtype=np.float64)
    return ndimage.gaussian_filter(img, float(sigma), mode="mirror") if sigma > 0 else img.copy()


def add_poisson_gaussian(image: np.ndarray, *, sigma: float, dose: float | None, rng: np.random.Generator
                         ) -> np.ndarray:
    """Poisson-Gaussian noise: ``Poisson(dose · max(x, 0)) / dose + N(0, sigma²)`` (no Poisson part if dose is None).

    ``dose`` is counts per unit of signal (higher = less shot noise); ``sigma`` is in image units.
    """
    out = np.asarray(image, dtype=np.float64)
    if dose is not None:
        if not dose > 0:
            raise ValueError(f"dose must be > 0 or None, got {dose!r}")
        out = rng.poisson(dose * np.clip(out, 0.0, None)) / dose
    if sigma > 0:
        out = out + rng.normal(0.0, sigma, out.shape)
    return out


@dataclass(frozen=True)
class BlurNoise:
    """Random degradation of an HR image to LR (EMSR synthetic II; ranges are (low, high), drawn uniformly).

    blur_sigma: Gaussian blur σ range, HR px (paper κ ∈ [0, 3]). pre_noise: Gaussian noise σ added to the HR
    before downsampling, image units. post_noise: Gaussian noise σ added after downsampling. dose: optional
    (low, high) range of Poisson doses for shot noise after downsampling, counts per unit signal (None = none).
    """

    blur_sigma: tuple[float, float] = (0.0, 3.0)
    pre_noise: tuple[float, float] = (20.0 / 255.0, 40.0 / 255.0)
    post_noise: tuple[float, float] = (5.0 / 255.0, 15.0 / 255.0)
    dose: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("blur_sigma", "pre_noise", "post_noise", "dose"):
            value = getattr(self, name)
            if value is None:
                continue
            low, high = value
            if not 0 <= low <= high:
                raise ValueError(f"BlurNoise.{name} must be a (low, high) range with 0 <= low <= high, got {value}")


#: Synthetic (I): bicubic downsampling only (``synthetic_lr(..., degradation=SYNTHETIC_I)``).
SYNTHETIC_I: BlurNoise | None = None
#: Synthetic (II): the paper's blur + noise ranges, for images normalised to [0, 1].
SYNTHETIC_II = BlurNoise()


def synthetic_lr(hr: np.ndarray, scale: int, *, rng: np.random.Generator,
                 degradation: BlurNoise | None = SYNTHETIC_II) -> np.ndarray:
    """Degrade an HR image (S·h, S·w) to a synthetic LR image (h, w).

    ``degradation=None`` is synthetic (I), bicubic downsampling only. Otherwise (synthetic II) the HR is
    blurred with σ_b ~ U(blur_sigma), gets N(0, σ_1²) noise with σ_1 ~ U(pre_noise), is bicubically
    downsampled by ``scale`` and gets Poisson (dose ~ U(dose), if set) and N(0, σ_2²) noise, σ_2 ~ U(post_noise).
    """
    if degradation is None:
        return bicubic_downsample(hr, scale)
    d = degradation
    image = gaussian_blur(hr, rng.uniform(*d.blur_sigma))
    image = add_poisson_gaussian(image, sigma=rng.uniform(*d.pre_noise), dose=None, rng=rng)
    image = bicubic_downsample(image, scale)
    dose = None if d.dose is None else rng.uniform(*d.dose)
    return add_poisson_gaussian(image, sigma=rng.uniform(*d.post_noise), dose=dose, rng=rng)


# ---------------------------------------------------------------------------------------- LR-only multi-scale
@dataclass(frozen=True)
class MultiScaleConfig:
    """Wagner et al.'s multi-scale training from LR frames only (Sec. 3.2, Table 1).

    Each pair comes from one sub-process, drawn with probability proportional to ``weights``:

    (1) crop an S·p target from the raw LR frame; degrade it by S with a method from ``methods``;
    (2) nearest-neighbour downscale the frame by α ∈ ``alpha``, crop, degrade as (1);
    (3) bicubic upscale the frame by β ∈ ``beta``, crop, degrade as (1);
    (4) nearest-neighbour downscale the frame by γ ∈ ``gamma``, crop a p x p *input* and use its Keys bicubic
        upsampling by S as the target (teaches the network to fall back to bicubic at high zoom).

    Factors are drawn uniformly from ``np.arange(low, high + step/2, step)`` (the paper's step 0.05); a range
    of None disables its sub-process. ``alpha`` ⊂ (0, 1), ``beta`` ⊂ (1, ∞), ``gamma`` ⊂ (0, 1].
    """

    alpha: tuple[float, float] | None = (0.25, 0.95)
    beta: tuple[float, float] | None = (1.1, 2.0)
    gamma: tuple[float, float] | None = None
    step: float = 0.05
    methods: tuple[str, ...] = INTERPOLATIONS
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        bounds = {"alpha": (0.0, 1.0, False), "beta": (1.0, math.inf, False), "gamma": (0.0, 1.0, True)}
        for name, (low, high, closed) in bounds.items():
            value = getattr(self, name)
            if value is None:
                continue
            a, b = value
            ok_high = b <= high if closed else b < high
            if not (low < a <= b and ok_high):
                raise ValueError(f"MultiScaleConfig.{name} = {value} must satisfy {low} < low <= high "
                                 f"{'<=' if closed else '<'} {high}")
        if not self.step > 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        unknown = [m for m in self.methods if m not in INTERPOLATIONS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {INTERPOLATIONS}, got {self.methods}")
        if len(self.weights) != 4 or min(self.weights) < 0:
            raise ValueError(f"weights must be 4 non-negative numbers (sub-processes 1-4), got {self.weights}")

    def factors(self, name: str) -> np.ndarray:
        """The discrete factor set of ``"alpha"``, ``"beta"`` or ``"gamma"`` (empty when disabled)."""
        value = getattr(self, name)
        if value is None:
            return np.zeros(0)
        return np.round(np.arange(value[0], value[1] + self.step / 2, self.step), 6)

    def active(self) -> tuple[int, ...]:
        """Enabled sub-processes (1-4) with a positive weight."""
        ranges = (True, self.alpha is not None, self.beta is not None, self.gamma is not None)
        return tuple(k + 1 for k in range(4) if ranges[k] and self.weights[k] > 0)


#: Table 1 configurations: the 4x STEM main one (★), its variant with sub-process (4), the 2x STM main one (★;
#: the paper steps through integer nm zoom levels, approximated here by a uniform 0.02 grid) and the
#: single-scale baseline (sub-process (1) only).
MULTISCALE_PRESETS: dict[str, MultiScaleConfig] = {
    "4x-main": MultiScaleConfig(alpha=(0.25, 0.95), beta=(1.1, 2.0), gamma=None),
    "4x-with-4": MultiScaleConfig(alpha=(0.25, 0.95), beta=(1.1, 2.0), gamma=(0.55, 0.75)),
    "2x-main": MultiScaleConfig(alpha=(0.5, 0.96), beta=(1.04, 1.71), gamma=None, step=0.02),
    "single-scale": MultiScaleConfig(alpha=None, beta=None, gamma=None),
}


@dataclass(frozen=True)
class TrainingPair:
    """One generated pair: ``input`` (p, p), ``target`` (S·p, S·p), the sub-process (1-4), its factor
    (α, β, γ; 1.0 for sub-process 1) and the degradation method (``"keys-upsample"`` for sub-process 4)."""

    input: np.ndarray
    target: np.ndarray
    subprocess: int
    factor: float
    method: str


def _random_crop_of_resized(frame: np.ndarray, factor: float, method: str, side: int,
                            rng: np.random.Generator) -> np.ndarray | None:
    """A random side x side crop of ``frame`` resized by ``factor`` (None when the resized frame is too small)."""
    shape = (int(round(frame.shape[0] * factor)), int(round(frame.shape[1] * factor)))
    if min(shape) < side:
        return None
    y0 = int(rng.integers(0, shape[0] - side + 1))
    x0 = int(rng.integers(0, shape[1] - side + 1))
    if factor == 1.0:
        return np.asarray(frame[y0:y0 + side, x0:x0 + side], dtype=np.float64)
    return resize(frame, shape, method, window=(y0, x0, side, side))


def multiscale_pair(frame: np.ndarray, scale: int, patch: int, *, rng: np.random.Generator,
                    config: MultiScaleConfig = MultiScaleConfig()) -> TrainingPair:
    """Draw one (input p x p, target S·p x S·p) pair from a raw LR frame (H, W) with the multi-scale method.

    A sub-process whose crop does not fit the (rescaled) frame is replaced by sub-process (1); the frame must
    hold at least one S·p x S·p crop. See :class:`MultiScaleConfig` for the sub-processes.
    """
    scale, patch = int(scale), int(patch)
    frame = np.asarray(frame, dtype=np.float64)
    target_side = scale * patch
    if frame.ndim != 2 or min(frame.shape) < target_side:
        raise ValueError(f"LR frame {frame.shape} is smaller than one {target_side} px target crop "
                         f"(scale {scale} x patch {patch}); use a smaller patch")
    active = config.active()
    weights = np.array([config.weights[k - 1] for k in active], dtype=np.float64)
    sub = int(active[rng.choice(len(active), p=weights / weights.sum())])
    if sub == 4:
        gamma = float(rng.choice(config.factors("gamma")))
        crop = _random_crop_of_resized(frame, gamma, "nearest", patch, rng)
        if crop is not None:
            return TrainingPair(crop, upsample_bicubic(crop, scale), 4, gamma, "keys-upsample")
        sub = 1
    factor, target = 1.0, None
    if sub in (2, 3):
        factor = float(rng.choice(config.factors("alpha" if sub == 2 else "beta")))
        target = _random_crop_of_resized(frame, factor, "nearest" if sub == 2 else "bicubic", target_side, rng)
    if target is None:
        sub, factor = 1, 1.0
        target = _random_crop_of_resized(frame, 1.0, "nearest", target_side, rng)
    method = str(config.methods[int(rng.integers(len(config.methods)))])
    return TrainingPair(resize(target, (patch, patch), method), target, sub, factor, method)
