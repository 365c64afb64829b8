"""Settings of the multi-frame fusion (:mod:`.fusion`) and of the frame registration it uses (:mod:`.frame_motion`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FusionConfig", "MERGES"]

#: The merges of :func:`.fusion.fuse_frames` (``FusionConfig.merge``).
MERGES: tuple[str, ...] = ("tiles", "spectral")


@dataclass(frozen=True)
class FusionConfig:
    """How frames are registered, tested and fused.

    Attributes:
        max_shift_px: largest drift between the reference and any frame of the window, LR px (> 0). The
            registration uses the older frame's centre inset by this much, so larger drifts are not found.
        max_rotation_deg: rotations in ``[-max, +max]`` degrees are searched (0 to 5).
        register_px: the older frame's central part used for registration is at most this many px per side
            (>= 32): registration time does not grow with the frame, and a rigid motion is found as well.
        min_score: least registration NCC (0 to 1); a frame that matches worse is not fused (scene change).
        tile: side of the residual-test tiles, LR px (>= 4).
        residual_ratio: a tile is kept when its mean squared difference to the reference is at most this
            multiple of the pure-noise expectation ``2σ²`` (> 1).
        pixel_k: single pixels differing by more than ``pixel_k · √2 σ`` are dropped (> 0).
        order: spline order of the warp, 1 (bilinear, fast) or 3 (cubic, sharper).
        shift_only_px: a rigid motion whose rotation moves no pixel of the frame by more than this (LR px) is
            warped as the pure shift of the frame's centre (>= 0). The rotation estimated between frames of a
            translating specimen scatters by about ±0.02°, up to 0.14 px at the corners of a 640 x 472 frame
            (simulated drift): below that it is registration noise, and the separable shift costs a third of a
            general warp (the live window's latency).
        match_intensity: before the test, subtract from each warped older frame the slowly varying part of its
            difference to the reference (per-tile medians, 5 x 5-tile median filtered, bilinear between tile
            centres): the brightness and contrast drift of scans minutes apart (charging, contamination) is then
            not taken for changed content, and the fused frame keeps the reference's brightness while its detail
            is averaged (:func:`~.fusion.fuse_frames` only). Off by default: frames a second apart do not need it.
        merge: how :func:`~.fusion.fuse_frames` merges the warped frames: ``"tiles"`` (the tile and pixel residual test,
            module docstring step 3, and the mean of what passes) or ``"spectral"`` (the pairwise Wiener merge
            per spatial frequency of Hasinoff et al. 2016, :func:`~.fusion.fuse_frames`; ``tile`` must then be even).
            :func:`~.fusion.fuse_fine` always uses the tile test.
        spectral_c: the spectral merge's tuning constant ``c`` (> 0): a frequency bin of an older frame is
            weighted down by ``A = |D|² / (|D|² + c σ²_bin)``; larger ``c`` fuses more (less noise, more of a
            changed region let through; the pixel test holds back what is far above noise). The spectral defaults
            (c = 64, k = 3.5, dilation 1 px, no blur) were chosen on simulated series with known truth
            (``benchmarks/bench_fusion.py --choose``), not on real data.
        spectral_k: the spectral merge's pixel test (> 0): before the merge, older-frame pixels whose difference
            to the reference, its slowly varying part taken off, exceeds ``spectral_k · √2 σ`` (σ of the
            difference low-passed by ``spectral_blur_px``) are replaced by the reference's, with their
            neighbours within ``spectral_dilate_px``.
        spectral_dilate_px: neighbours of a failing pixel replaced too, px (within this many px along both axes:
            a square of ``2r + 1``; >= 0).
        spectral_blur_px: Gaussian σ (px, >= 0; 0: none) that low-passes the difference before the pixel test,
            whose threshold then scales with the filtered noise: noise is white, a changed object (larger than the
            probe) puts its difference at low and mid frequencies, while high-frequency differences are left to
            the per-bin weights. Costs ~3 ms per older frame of 640 x 472 px.
    """

    max_shift_px: float = 24.0
    max_rotation_deg: float = 1.0
    register_px: int = 128
    min_score: float = 0.5
    tile: int = 16
    residual_ratio: float = 2.0
    pixel_k: float = 4.0
    order: int = 3
    shift_only_px: float = 0.25
    match_intensity: bool = False
    merge: str = "tiles"
    spectral_c: float = 64.0
    spectral_k: float = 3.5
    spectral_dilate_px: int = 1
    spectral_blur_px: float = 0.0

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise ValueError(f"FusionConfig.merge must be one of {', '.join(map(repr, MERGES))}, got {self.merge!r}")
        checks = [("max_shift_px", self.max_shift_px > 0, "> 0"),
                  ("max_rotation_deg", 0 <= self.max_rotation_deg <= 5, "in [0, 5] degrees"),
                  ("register_px", self.register_px >= 32, "an integer >= 32"),
                  ("min_score", 0 <= self.min_score <= 1, "in [0, 1]"),
                  ("tile", self.tile >= 4, "an integer >= 4"),
                  ("residual_ratio", self.residual_ratio > 1, "> 1"),
                  ("pixel_k", self.pixel_k > 0, "> 0"),
                  ("order", self.order in (1, 3), "1 or 3"),
                  ("shift_only_px", self.shift_only_px >= 0, ">= 0"),
                  ("spectral_c", 0 < self.spectral_c < math.inf, "a finite number > 0"),
                  ("spectral_k", self.spectral_k > 0, "> 0"),
                  ("spectral_dilate_px", int(self.spectral_dilate_px) == self.spectral_dilate_px
                   and self.spectral_dilate_px >= 0, "an integer >= 0"),
                  ("spectral_blur_px", 0 <= self.spectral_blur_px < math.inf, "a finite number >= 0"),
                  ("tile", self.merge != "spectral" or self.tile % 2 == 0,
                   "even for merge='spectral' (its analysis windows overlap by half a tile)")]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"FusionConfig.{name} must be {want}, got {getattr(self, name)!r}")
