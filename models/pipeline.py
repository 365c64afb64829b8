"""Fit a paired library from LR/HR reference pairs and enhance LR frames with it (arrays in, arrays out).

This is the one implementation used by ``refscope fit/enhance/evaluate``, the daemon and the benchmarks:

1. :func:`register_reference` places an HR reference in the LR frame (global registration, known factor);
2. :func:`training_grids` cuts the overlap, resamples the HR onto the S-times LR grid and calibrates its
   intensity into LR units;
3. :func:`fit_library` matches patches locally (eq. 1) and builds or extends the paired library (Algorithm 1);
4. :func:`enhance` reconstructs a frame with one of the :data:`METHODS`.

Intensities: every model works in *library units*, the LR frame's robust range (0.5-99.5 percentiles of the
first training frame) mapped linearly onto 0-255, so σ_n = 1 means 1/255 of that range whatever the bit depth
(for a 16-bit frame spanning the full range, σ_n = 1 ≈ 257 counts). Outputs are returned in LR units.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .baseline import SafeBaseline
from .consistency import ForwardModel, fit_forward_model, merge_forward_models
from .errors import ImageError, RegistrationError
from .image_ops import as_gray_float, upsample_bicubic
from .library import LibraryConfig, PairedLibrary
from .local_registration import matched_patches, register_local
from .metrics import fit_intensity_coefficients
from .nlm import (PairedConfig, check_sigma_n, PairedRegressors, fit_paired_regressors, reconstruct_original, reconstruct_paired,
                  reconstruct_paired_faithful, query_alignment, receptive_radius)
from .noise import correlation_ceiling, estimate_noise_sigma
from .registration import PairGeometry, overlap_box, register_global, resample_hr_to_lr_grid

__all__ = ["METHODS", "IntensityScale", "FitConfig", "FittedModel", "default_patch_size", "register_reference",
           "training_grids", "fit_library", "fit", "enhance"]

METHODS = ("paired", "paired-faithful", "original", "bicubic")
"""Reconstruction methods: refscope's default, Algorithm 2 as published, Sreehari's LB-NLM, the baseline."""


def default_patch_size(scale: int) -> int:
    """Patch side on the output grid: the paper's n = 9 at every scale.

    A patch covering a fixed ~4 LR px (4·S + 1: 17 at S=4) was measured worse out-of-sample on the real x4.17
    pairs (benchmarks/RESULTS.md, ablation) and costs 3.6x more per query.
    """
    del scale
    return 9


@dataclass(frozen=True)
class IntensityScale:
    """Linear map from LR units to library units: ``(x - low) * 255 / (high - low)``."""

    low: float
    high: float

    @classmethod
    def from_image(cls, image: np.ndarray) -> "IntensityScale":
        low, high = np.percentile(image, [0.5, 99.5])
        if not high > low:
            low, high = float(np.min(image)), float(np.max(image))
        return cls(float(low), float(high))

    def to_units(self, image: np.ndarray) -> np.ndarray:
        return (np.asarray(image, dtype=np.float64) - self.low) * (255.0 / (self.high - self.low))

    def from_units(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(image, dtype=np.float64) * ((self.high - self.low) / 255.0) + self.low


@dataclass(frozen=True)
class FitConfig:
    """How references are turned into a library.

    scale: integer output scale S. library: Algorithm 1 options (patch size: :func:`default_patch_size` when None).
    paired: options of the default reconstruction. search_radius: local-registration search (grid px).
    candidate_stride: spacing of candidate patches on the grid (px). max_rotation_deg: global search range.
    min_relative_ncc: a reference is accepted only if its registration NCC reaches this fraction of the NCC a true
    match can reach against the LR frame's noise (:func:`~refscope.models.noise.correlation_ceiling`); calibrated
    on the real FEI frames of ``sem_pairs``: the 9 true pairs reach 0.955-0.993 of it, the 38 wrong-area
    combinations (other places of the specimen, other specimens) 0.22-0.62. 0 accepts any match the registration
    finds (``fit --force``).
    """

    scale: int = 2
    library: LibraryConfig | None = None
    paired: PairedConfig = field(default_factory=PairedConfig)
    search_radius: int = 2
    candidate_stride: int = 2
    max_rotation_deg: float = 3.0
    min_relative_ncc: float = 0.8

    def __post_init__(self) -> None:
        if int(self.scale) != self.scale or not 2 <= self.scale <= 8:
            raise ValueError(f"scale must be an integer from 2 to 8, got {self.scale!r}")
        if not 0.0 <= self.min_relative_ncc < 1.0:
            raise ValueError(f"min_relative_ncc must lie in [0, 1), got {self.min_relative_ncc!r}")

    @property
    def library_config(self) -> LibraryConfig:
        return self.library if self.library is not None else LibraryConfig(patch_size=default_patch_size(self.scale))


@dataclass
class FittedModel:
    """A fitted paired model: library, intensity map, scale, measured LR noise (library units), geometries, and
    the forward model (HR -> LR in LR units) learned from the same pairs (:mod:`.consistency`; None when the
    pairs were too small to fit it, or for a model saved before it existed), and the safe baseline chosen on the
    held-out area of its newest reference (:mod:`.baseline`; None when none was chosen: served outputs are then
    not blended toward it, :mod:`.safe_blend`)."""

    library: PairedLibrary
    intensity: IntensityScale
    scale: int
    noise_sigma: float
    paired: PairedConfig = field(default_factory=PairedConfig)
    geometries: list[PairGeometry] = field(default_factory=list)
    forward: ForwardModel | None = None
    safe: SafeBaseline | None = None
    _regressors: PairedRegressors | None = field(default=None, repr=False)

    @property
    def lr_noise_sigma(self) -> float:
        """The measured LR noise of the frames the model learned from, in LR intensity units."""
        return float(self.noise_sigma) * (self.intensity.high - self.intensity.low) / 255.0

    @property
    def regressors(self) -> PairedRegressors:
        """Per-category regressors of the default method, fitted once per library."""
        if self._regressors is None:
            self._regressors = fit_paired_regressors(self.library, self.paired)
        return self._regressors

    def tiling(self, method: str = "paired") -> tuple[int, int]:
        """(halo, align) in LR px that tile ``method``'s reconstruction (``paired``, ``paired-faithful`` or
        ``original``) exactly: the receptive radius (:func:`~refscope.models.nlm.receptive_radius`) and the
        query lattice's alignment (:func:`~refscope.models.nlm.query_alignment`; the NLM methods query every
        output px)."""
        stride = self.paired.query_stride(self.scale) if method == "paired" else 1
        return (receptive_radius(self.scale, self.library.patch_size, stride),
                query_alignment(self.scale, stride))


def register_reference(lr: np.ndarray, hr: np.ndarray, *, factor: float, config: FitConfig = FitConfig()) -> PairGeometry:
    """Global registration of an HR reference in an LR frame; ``factor`` = LR pixel size / HR pixel size."""
    if factor < config.scale * 0.999:
        raise ImageError(f"mismatched scale: the HR reference is only {factor:.3g}x finer than the LR frame, "
                         f"less than the requested output scale {config.scale}")
    geometry = register_global(lr, hr, factor=factor, max_rotation_deg=config.max_rotation_deg)
    if config.min_relative_ncc > 0:
        ceiling = correlation_ceiling(as_gray_float(lr, name="LR frame"))
        if geometry.score < config.min_relative_ncc * ceiling:
            raise RegistrationError(
                f"the HR reference matches the LR frame only at NCC {geometry.score:.2f}, less than "
                f"{config.min_relative_ncc:g} x the {ceiling:.2f} a true match reaches at this frame's noise (best NCC "
                f"{geometry.score:.2f}); is it of the same area and specimen? (true pairs reach 0.95 of it)")
    return geometry


def training_grids(lr: np.ndarray, hr: np.ndarray, geometry: PairGeometry, *, scale: int
                   ) -> tuple[tuple[tuple[int, int], tuple[int, int]], np.ndarray]:
    """The LR overlap box ((y0, y1), (x0, x1)) and the HR resampled onto it S times finer (LR-grid aligned)."""
    box = overlap_box(geometry, lr.shape, hr.shape)
    (y0, y1), (x0, x1) = box
    if y1 - y0 < 8 or x1 - x0 < 8:
        raise ImageError(f"the HR reference overlaps only {y1 - y0}x{x1 - x0} LR px of the frame; need at least 8x8")
    return box, resample_hr_to_lr_grid(hr, geometry, box, scale)


def _candidates(lr_region_units: np.ndarray, hr_grid: np.ndarray, config: FitConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """Matched (HR, upsampled-LR) candidate patches of one training region, HR calibrated into LR units."""
    lib = config.library_config
    lr_up = upsample_bicubic(lr_region_units, config.scale)
    if lr_up.shape != hr_grid.shape:
        raise ImageError(f"HR grid {hr_grid.shape} does not match the {config.scale}x upsampled LR {lr_up.shape}")
    a, b = fit_intensity_coefficients(hr_grid, lr_up)
    hr_grid = a * hr_grid + b
    matches = register_local(hr_grid, lr_up, patch_size=lib.patch_size, search_radius=config.search_radius,
                             stride=config.candidate_stride)
    cap = lib.oversample * lib.size  # Algorithm 1 samples at most K·L candidates: extract no more than that
    if len(matches.centres) > cap:
        keep = np.sort(np.random.default_rng(lib.seed).choice(len(matches.centres), size=cap, replace=False))
        matches = replace(matches, centres=matches.centres[keep],
                                      displacements=matches.displacements[keep], scores=matches.scores[keep],
                                      textured=matches.textured[keep])
    return matched_patches(hr_grid, lr_up, matches, lib.patch_size, dtype=np.float32)  # the library's dtype


def fit_library(regions: list[tuple[np.ndarray, np.ndarray]], *, config: FitConfig = FitConfig(),
                model: FittedModel | None = None, geometries: list[PairGeometry] | None = None) -> FittedModel:
    """Build (or, given ``model``, incrementally extend) a paired library from training regions.

    regions: list of (LR region (h, w) in LR units, HR grid (S·h, S·w) on that region's S-times grid).
    """
    if not regions:
        raise ImageError("no training pair given")
    if model is None:
        intensity = IntensityScale.from_image(regions[0][0])
        noise = estimate_noise_sigma(intensity.to_units(regions[0][0]))
    else:
        intensity, noise = model.intensity, model.noise_sigma
    hr_all, lr_all = [], []
    for lr_region, hr_grid in regions:
        hr_p, lr_p = _candidates(intensity.to_units(lr_region), hr_grid, config)
        hr_all.append(hr_p)
        lr_all.append(lr_p)
    # one region: no concatenated copy (the candidates are the learner's largest arrays)
    hr_patches, lr_patches = (hr_all[0], lr_all[0]) if len(hr_all) == 1 else (np.concatenate(hr_all), np.concatenate(lr_all))
    scale = config.scale if model is None else model.scale
    forward = merge_forward_models(model.forward if model is not None else None, _forward_model(regions, scale))
    if model is None:
        library = PairedLibrary.build(hr_patches, lr_patches, config.library_config)
        return FittedModel(library, intensity, scale, noise, config.paired, list(geometries or []), forward)
    library = model.library.add(hr_patches, lr_patches)
    return FittedModel(library, intensity, scale, noise, model.paired, model.geometries + list(geometries or []),
                       forward)


def _forward_model(regions: list[tuple[np.ndarray, np.ndarray]], scale: int) -> ForwardModel | None:
    """The forward model of ``regions`` (:func:`~refscope.models.consistency.fit_forward_model`), or None when
    they are too small for it (a library can still be fitted from them)."""
    try:
        return fit_forward_model(regions, scale=scale)
    except ValueError:
        return None


def fit(lr: np.ndarray, references: list[tuple[np.ndarray, float]], *, config: FitConfig = FitConfig(),
        model: FittedModel | None = None) -> FittedModel:
    """Register each (HR, factor) reference in ``lr`` and fit a library on the overlaps."""
    lr = as_gray_float(lr, name="LR frame")
    regions, geometries = [], []
    for index, (hr, factor) in enumerate(references):
        hr = as_gray_float(hr, name=f"HR reference {index + 1}")
        geometry = register_reference(lr, hr, factor=factor, config=config)
        box, hr_grid = training_grids(lr, hr, geometry, scale=config.scale)
        (y0, y1), (x0, x1) = box
        regions.append((lr[y0:y1, x0:x1], hr_grid))
        geometries.append(geometry)
    return fit_library(regions, config=config, model=model, geometries=geometries)


def enhance(lr: np.ndarray, model: FittedModel | None, *, method: str = "paired", scale: int | None = None,
            sigma_n: float | None = None) -> np.ndarray:
    """Super-resolve an (H, W) LR frame; returns (S·H, S·W) float64 in LR units.

    ``bicubic`` needs no model (give ``scale``). ``sigma_n`` overrides the method's filtering strength
    (library units for the NLM methods; relative to the noise for ``paired``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    lr = as_gray_float(lr, name="LR frame")
    if method == "bicubic":
        factor = scale if scale is not None else (model.scale if model is not None else None)
        if factor is None:
            raise ValueError("bicubic needs a scale when no model is given")
        return upsample_bicubic(lr, factor)
    if model is None:
        raise ValueError(f"method {method!r} needs a fitted model")
    if sigma_n is not None:
        sigma_n = check_sigma_n(sigma_n)
    units = model.intensity.to_units(lr)
    if method == "paired-faithful":
        out = reconstruct_paired_faithful(units, model.library, scale=model.scale, sigma_n=1.0 if sigma_n is None else sigma_n)
    elif method == "original":
        out = reconstruct_original(units, model.library, scale=model.scale, sigma_n=1.0 if sigma_n is None else sigma_n)
    else:
        cfg = model.paired if sigma_n is None else replace(model.paired, sigma_n=sigma_n)
        out = reconstruct_paired(units, model.library, scale=model.scale, config=cfg,
                                 noise_sigma=model.noise_sigma, regressors=model.regressors)
    return model.intensity.from_units(out)
